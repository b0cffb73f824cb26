"""Text through a fixed encoder's embeddings vs the fine-tuned text model, on the demo's data.

    python benchmarks/embeddings.py                 # 2,000 Rotten Tomatoes rows, 30% of one class mislabelled

The demo's export (``fastif demo``'s data) cleaned three ways with fastif's defaults (k = 200,
no retraining): ``text-minilm`` (the top MiniLM layer + head fine-tuned, influence over both),
and ``tabular-logreg`` / ``tabular-mlp`` over the bundled MiniLM's sentence embeddings as one
vector column (``--embedding-column``; ``examples/embeddings.py``). Reported: the flags, the
mislabelled rows among them, recall of the mislabelled rows in the top 10% / 15% by the flag
score, validation accuracy, parameters, and the clean's wall time (the embeddings' own time
apart).
"""
from __future__ import annotations

import argparse
import json
import runpy
import tempfile
import time
from pathlib import Path

import numpy as np
import pandas as pd

import fastif_engine
from fastif_engine.data.datasets import export
from _shared import results_dir

ROOT = Path(__file__).resolve().parent.parent
RESULTS = results_dir() / "embeddings.json"


def summarise(name: str, result, flipped: np.ndarray, seconds: float) -> dict:
    flags = result.flags
    order = np.argsort(flags["rank"].to_numpy())
    flagged = flags["flagged"].to_numpy()
    return {"model": name, "flagged": int(flagged.sum()), "flipped_in_flags": int(flipped[flagged].sum()),
            **{f"recall@{int(b * 100)}%": float(flipped[order[:round(b * len(flags))]].sum() / flipped.sum())
               for b in (0.10, 0.15)},
            "valid_accuracy": result.metrics["accuracy"]["before"]["valid"],
            "parameters": result.metrics["solver"]["parameters"], "solver": result.metrics["solver"]["name"],
            "seconds": round(seconds, 1)}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--max-train", type=int, default=2000)
    args = parser.parse_args()
    embed = runpy.run_path(str(ROOT / "examples" / "embeddings.py"))["sentence_embeddings"]
    rows = []
    with tempfile.TemporaryDirectory() as tmp:
        paths = export("rotten-tomatoes", Path(tmp) / "data", noise=0.3, noise_mode="class-conditional", seed=0,
                       max_train=args.max_train)
        frames = {split: pd.read_parquet(path) for split, path in paths.items()}
        flipped = frames["train"]["noisy"].to_numpy()
        t = time.perf_counter()
        splits = (frames["train"], frames["valid"], frames["test"])
        result = fastif_engine.clean(*splits, model="text-minilm", k=200, out=Path(tmp) / "text")
        rows.append(summarise("text-minilm", result, flipped, time.perf_counter() - t))
        t = time.perf_counter()
        for frame in frames.values():
            frame["embedding"] = list(embed(frame["text"].tolist()))
        embedding_seconds = time.perf_counter() - t
        for model in ("tabular-logreg", "tabular-mlp"):
            t = time.perf_counter()
            result = fastif_engine.clean(*splits, model=model, embedding_column="embedding", k=200, out=Path(tmp) / model)
            rows.append(summarise(f"{model} on embeddings", result, flipped, time.perf_counter() - t))
    out = {"version": fastif_engine.__version__, "train_rows": int(len(flipped)), "flipped": int(flipped.sum()),
           "embedding_seconds": round(embedding_seconds, 1), "runs": rows}
    RESULTS.parent.mkdir(parents=True, exist_ok=True)
    RESULTS.write_text(json.dumps(out, indent=1))
    print(f"{len(flipped)} training rows, {int(flipped.sum())} mislabelled; embeddings {embedding_seconds:.0f} s")
    print("| model | flags (mislabelled) | recall@10% | recall@15% | valid acc | parameters | solver | clean s |")
    print("|---|---|---|---|---|---|---|---|")
    for r in rows:
        print(f"| {r['model']} | {r['flagged']} ({r['flipped_in_flags']}) | {r['recall@10%']:.3f} | "
              f"{r['recall@15%']:.3f} | {r['valid_accuracy']:.4f} | {r['parameters']:,} | {r['solver']} | "
              f"{r['seconds']:.0f} |")


if __name__ == "__main__":
    main()
