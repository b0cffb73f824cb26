"""How much image-cnn's test accuracy moves from one fit to the next: constant vs falling learning rate.

    python benchmarks/studies/fit_spread.py [--noise-modes class-conditional uniform] [--noise-seed 0] [--fits 5]

Fashion-MNIST, a seeded 10,000-image training subset (as ``cleaning.py`` uses), with 30%
class-conditional or 10% uniform label noise. For each learning-rate schedule (Adam, 8 epochs,
lr 2e-3, batch 128; ``constant`` or ``linear`` down to 0), the model is fitted ``--fits`` times
(seeds 0, 1, …) on the noisy labels and on the true labels, and evaluated on the test split.
The spread over seeds is what a retrain comparison (cleaned vs original) has to see through.
"""
from __future__ import annotations

import argparse
import dataclasses
import statistics
import tempfile
from pathlib import Path

import numpy as np
import torch

from fastif_engine.data.datasets import export
from fastif_engine.data.tables import load_dataset
from fastif_engine.models.training import evaluate

import _path  # noqa: F401  (benchmarks/ on the path)
from _shared import model_for

RATES = {"class-conditional": 0.3, "uniform": 0.1}


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--noise-modes", nargs="+", default=list(RATES), choices=list(RATES))
    ap.add_argument("--noise-seed", type=int, default=0)
    ap.add_argument("--fits", type=int, default=5)
    args = ap.parse_args()
    print("| noise | schedule | labels | test accuracy, mean | sd over fits | min | max |")
    print("|---|---|---|---|---|---|---|")
    for mode in args.noise_modes:
        with tempfile.TemporaryDirectory() as tmp:
            paths = export("fashion-mnist", Path(tmp), noise=RATES[mode], noise_mode=mode, seed=args.noise_seed,
                           max_train=10_000)
            ds = load_dataset({s: str(p) for s, p in paths.items()})
        model, inputs = model_for("image-cnn", ds)
        x, xt = inputs("train"), inputs("test")
        yt = torch.as_tensor(ds.splits["test"].labels)
        train = ds.splits["train"]
        labels = {"noisy": torch.as_tensor(train.labels),
                  "true": torch.as_tensor(np.searchsorted(np.array(ds.classes), train.extra["true_label"].to_numpy()))}
        recipe = model.settings
        for schedule in ("constant", "linear"):
            model.settings = dataclasses.replace(recipe, schedule=schedule)
            for name, y in labels.items():
                accs = [evaluate(model.fit(x, y, seed=s), xt, yt).accuracy for s in range(args.fits)]
                print(f"| {mode} | {schedule} | {name} | {statistics.mean(accs):.4f} | {statistics.stdev(accs):.4f} | "
                      f"{min(accs):.4f} | {max(accs):.4f} |", flush=True)


if __name__ == "__main__":
    main()
