"""Each built-in model trained on its real dataset with its default recipe: test accuracy.

    python benchmarks/model_accuracy.py [--seeds 0 1 2] [--only text-minilm ...]

Exports the datasets (no label noise) to a temporary folder, trains with the default recipe
(the one `fastif clean` uses), and prints a markdown table for docs/BENCHMARKS.md.
"""
from __future__ import annotations

import argparse
import platform
import statistics
import tempfile
import time

import torch

from fastif_engine.data.datasets import export
from fastif_engine.data.tables import load_dataset
from fastif_engine.models.training import evaluate

from _shared import model_for

RUNS = [("text-minilm", "rotten-tomatoes"), ("image-cnn", "fashion-mnist"), ("image-cnn", "digits"),
        ("tabular-mlp", "digits"), ("tabular-logreg", "digits")]


def run(model_name: str, dataset: str, seed: int, workdir: str) -> tuple[float, float, int]:
    paths = export(dataset, f"{workdir}/{dataset}", seed=0)
    ds = load_dataset({k: str(v) for k, v in paths.items()})
    model, inputs = model_for(model_name, ds)

    t0 = time.perf_counter()
    x = inputs("train")
    model.fit(x, torch.as_tensor(ds.splits["train"].labels), seed=seed)
    seconds = time.perf_counter() - t0
    acc = evaluate(model, inputs("test"), torch.as_tensor(ds.splits["test"].labels)).accuracy
    return acc, seconds, len(ds.splits["train"])


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--seeds", type=int, nargs="+", default=[0, 1, 2])
    ap.add_argument("--only", nargs="*", default=None)
    args = ap.parse_args()
    print(f"machine: {platform.machine()}, {torch.get_num_threads()} torch threads, torch {torch.__version__}")
    print("| model | dataset | train rows | test accuracy (mean ± std over seeds) | seeds | train time (median s) |")
    print("|---|---|---|---|---|---|")
    with tempfile.TemporaryDirectory() as tmp:
        for model_name, dataset in RUNS:
            if args.only and model_name not in args.only and dataset not in args.only:
                continue
            results = [run(model_name, dataset, s, tmp) for s in args.seeds]
            accs = [r[0] for r in results]
            std = statistics.stdev(accs) if len(accs) > 1 else 0.0
            print(f"| {model_name} | {dataset} | {results[0][2]} | {statistics.mean(accs):.4f} ± {std:.4f} | "
                  f"{len(accs)} | {statistics.median(r[1] for r in results):.0f} |", flush=True)


if __name__ == "__main__":
    main()
