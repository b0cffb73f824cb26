"""``fastif clean --model hf:DIR --no-retrain`` per checkpoint family: wall time and peak memory.

    python benchmarks/hf_families.py [--rows 2000] [--families bert,roberta,...] [--layers 0,1]
    python benchmarks/hf_families.py --minilm-only      # the bundled MiniLM as hf:DIR vs text-minilm

The demo's data (Rotten Tomatoes, one class 30% under-reported, seed 0; images: digits with 20% of
the labels flipped). Each family is a 6-layer random-initialised model of MiniLM's width (384, 12
heads, feed-forward 1,536) written with ``save_pretrained`` (:mod:`fastif_engine.models.tiny`);
ResNet and ConvNeXt get four stages. Every run is a fresh process under ``/usr/bin/time -v`` on the
default settings but ``--no-retrain`` and k = 200 (the demo's); runs alternate, ``--repeats`` each,
and the table gives medians. Writes ``benchmarks/results/hf_families.json``.

``--minilm-only``: the bundled all-MiniLM-L6-v2 saved as a sequence classifier and given as
``hf:DIR --model-option layers=1``, beside ``text-minilm``: the same encoder, one layer and a head
differentiated, the same work.
"""
from __future__ import annotations

import argparse
import json
import re
import statistics
import subprocess
import tempfile
import time
from pathlib import Path

from fastif_engine.data.datasets import export
from fastif_engine.models.tiny import IMAGE_FAMILIES, write_checkpoint

RESULTS = Path(__file__).parent / "results" / "hf_families.json"
FAMILIES = ("bert", "roberta", "distilbert", "electra", "deberta-v2", "modernbert", "gpt2", "llama", "vit",
            "resnet", "convnext")


def run(paths: dict, out: Path, model: str, *extra: str) -> dict:
    cmd = ["/usr/bin/time", "-v", "fastif", "clean", "--train", str(paths["train"]), "--valid", str(paths["valid"]),
           "--test", str(paths["test"]), "--out", str(out), "--model", model, "--k", "200", "--no-retrain", *extra]
    t = time.perf_counter()
    done = subprocess.run(cmd, capture_output=True, text=True)
    wall = time.perf_counter() - t
    if done.returncode:
        return {"failed": done.stderr.strip().splitlines()[-1][:300]}
    peak_kb = int(re.search(r"Maximum resident set size \(kbytes\): (\d+)", done.stderr).group(1))
    metrics = json.loads((out / "metrics.json").read_text())
    return {"wall_s": round(wall, 1), "peak_gb": round(peak_kb / 1024 ** 2, 2),
            "parameters": metrics["solver"]["parameters"], "solver": metrics["solver"]["name"],
            "fit_ratio": round(metrics["model_fit"]["ratio"], 3), "timings": metrics["timings"]}


def medians(runs: list[dict]) -> dict:
    ok = [r for r in runs if "failed" not in r]
    if not ok:
        return runs[0]
    return {**ok[0], "wall_s": statistics.median(r["wall_s"] for r in ok),
            "peak_gb": statistics.median(r["peak_gb"] for r in ok), "runs": len(ok)}


def minilm_checkpoint(folder: Path) -> Path:
    from transformers import AutoModelForSequenceClassification, AutoTokenizer

    from fastif_engine.models import encoder_path

    AutoModelForSequenceClassification.from_pretrained(encoder_path(), num_labels=2).save_pretrained(folder)
    AutoTokenizer.from_pretrained(encoder_path()).save_pretrained(folder)
    return folder


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--rows", type=int, default=2000)
    ap.add_argument("--families", default=",".join(FAMILIES))
    ap.add_argument("--layers", default="0,1")
    ap.add_argument("--repeats", type=int, default=1)
    ap.add_argument("--minilm-only", action="store_true")
    args = ap.parse_args()
    results = json.loads(RESULTS.read_text()) if RESULTS.exists() else {}
    with tempfile.TemporaryDirectory() as tmp:
        tmp = Path(tmp)
        text = export("rotten-tomatoes", tmp / "rt", noise=0.3, noise_mode="class-conditional", seed=0,
                      max_train=args.rows)
        if args.minilm_only:
            folder = minilm_checkpoint(tmp / "minilm")
            cases = {"text-minilm": ("text-minilm", ()),
                     "minilm as hf:DIR, layers=1": (f"hf:{folder}", ("--model-option", "layers=1"))}
            runs = {name: [] for name in cases}
            for r in range(args.repeats):
                for name, (model, extra) in cases.items():
                    runs[name].append(run(text, tmp / f"out-{len(runs[name])}-{name[:4]}", model, *extra))
                    print(name, runs[name][-1], flush=True)
            results["minilm"] = {"rows": args.rows, **{k: medians(v) for k, v in runs.items()},
                                 "command": f"python benchmarks/hf_families.py --minilm-only --repeats {args.repeats}"}
        else:
            images = export("digits", tmp / "digits", noise=0.2, seed=0)
            table = results.setdefault("families", {})
            for family in args.families.split(","):
                image = family in IMAGE_FAMILIES
                folder = write_checkpoint(family, tmp / family, n_classes=10 if image else 2,
                                          layers=4 if family in ("resnet", "convnext") else 6, width=384,
                                          image_size=32)
                for layers in args.layers.split(","):
                    runs = [run(images if image else text, tmp / f"out-{family}-{layers}-{r}", f"hf:{folder}",
                                "--model-option", f"layers={layers}") for r in range(args.repeats)]
                    table[f"{family}/layers={layers}"] = medians(runs)
                    print(family, layers, table[f"{family}/layers={layers}"], flush=True)
                    RESULTS.write_text(json.dumps(results, indent=1))
            results["families_command"] = f"python benchmarks/hf_families.py --rows {args.rows}"
    RESULTS.write_text(json.dumps(results, indent=1))


if __name__ == "__main__":
    main()
