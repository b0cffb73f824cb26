"""Clean a text dataset through the embeddings of your own encoder, at tabular cost.

FastIF takes influence over the top layers of a network only; when those layers are a linear
or small MLP head over a fixed encoder's outputs, the encoder can be anything: here the
bundled all-MiniLM-L6-v2 (a sentence encoder), run once over every text. The vectors become
one column and ``tabular-logreg`` (or ``tabular-mlp``) is the head fastif trains, explains
and retrains.

    python examples/embeddings.py                  # the demo's data: 2,000 Rotten Tomatoes snippets
    python examples/embeddings.py --max-train 300 --model tabular-mlp
"""
from __future__ import annotations

import argparse
import tempfile
from pathlib import Path

import numpy as np
import pandas as pd
import torch

import fastif_engine
from fastif_engine.data.datasets import export


def sentence_embeddings(texts: list[str], batch_size: int = 64) -> np.ndarray:
    """Mean-pooled, unit-length MiniLM sentence vectors ``[n, 384]`` (the encoder's local files; no download)."""
    from transformers import AutoModel, AutoTokenizer

    from fastif_engine.models import encoder_path

    tokenizer = AutoTokenizer.from_pretrained(encoder_path())
    encoder = AutoModel.from_pretrained(encoder_path()).eval()
    out = []
    with torch.no_grad():
        for start in range(0, len(texts), batch_size):
            batch = tokenizer(texts[start:start + batch_size], padding=True, truncation=True, max_length=64,
                              return_tensors="pt")
            hidden = encoder(**batch).last_hidden_state
            mask = batch["attention_mask"].unsqueeze(-1).to(hidden.dtype)
            pooled = (hidden * mask).sum(1) / mask.sum(1)
            out.append(torch.nn.functional.normalize(pooled, dim=1).numpy())
    return np.concatenate(out)


def main(max_train: int = 2000, model: str = "tabular-logreg", out: str | None = None, **settings) -> dict:
    """Export the demo's data (30% of one class's snippets mislabelled), embed it, clean it."""
    with tempfile.TemporaryDirectory() as tmp:
        paths = export("rotten-tomatoes", Path(tmp), noise=0.3, noise_mode="class-conditional", seed=0,
                       max_train=max_train)
        frames = {split: pd.read_parquet(path) for split, path in paths.items()}
    for frame in frames.values():
        frame["embedding"] = list(sentence_embeddings(frame["text"].tolist()))
    result = fastif_engine.clean(frames["train"], frames["valid"], frames["test"], model=model,
                                 embedding_column="embedding", out=out, **{"k": 200, **settings})
    flipped = frames["train"]["noisy"].to_numpy()
    flags = result.flags  # one row per training row, in the training table's order
    top = np.argsort(flags["rank"].to_numpy())[: len(flags) // 10]
    flagged = flags["flagged"].to_numpy()
    summary = {"model": model, "train_rows": len(flags), "flipped": int(flipped.sum()),
               "flagged": int(flagged.sum()), "flipped_in_flags": int(flipped[flagged].sum()),
               "recall@10%": float(flipped[top].sum() / flipped.sum()), "verdict": result.verdict}
    print(f"{summary['flagged']} rows flagged, {summary['flipped_in_flags']} of them mislabelled; the top 10% by "
          f"{result.metrics['flag_by']} hold {summary['recall@10%']:.0%} of the {summary['flipped']} mislabelled rows")
    return summary


if __name__ == "__main__":
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--max-train", type=int, default=2000)
    parser.add_argument("--model", default="tabular-logreg", choices=["tabular-logreg", "tabular-mlp"])
    parser.add_argument("--out", default=None, help="where the run's files go (default: a temporary folder)")
    parser.add_argument("--retrain", action="store_true")
    args = parser.parse_args()
    main(args.max_train, args.model, args.out, retrain=args.retrain)
