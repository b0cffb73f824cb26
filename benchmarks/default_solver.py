"""Default settings through the CLI: what ``--solver auto`` picks, and how close LiSSA at its defaults is.

    python benchmarks/default_solver.py [--out benchmarks/.cache/default-solver]

For each built-in model on digits (10% uniform flips; the tabular models see the 64 pixels as
columns): ``fastif clean`` with only the data and ``--model`` (solver auto), then the same with
``--solver lissa`` (depth, batch and repeats at their defaults), in one output folder so the
model is trained once. Influence Pearson over every (error, candidate) pair, and each run's time.
"""
from __future__ import annotations

import argparse
import json
import time
from pathlib import Path

import numpy as np
import pandas as pd

from fastif_engine.data.datasets import export, pixels_as_columns
from flows.cli import main as fastif


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--out", type=Path, default=Path("benchmarks/.cache/default-solver"))
    args = ap.parse_args()
    images = export("digits", args.out / "data", noise=0.1, seed=0)
    data = {"image": images, "tabular": pixels_as_columns(images)}
    print("| model | parameters | auto picks | errors × candidates | influence Pearson, LiSSA defaults vs auto | "
          "auto run (s) | LiSSA run (s) |")
    print("|---|---|---|---|---|---|---|")
    for model in ("tabular-logreg", "tabular-mlp", "image-cnn"):
        paths = data["image" if model == "image-cnn" else "tabular"]
        out = args.out / model
        base = ["clean", "--train", str(paths["train"]), "--valid", str(paths["valid"]), "--out", str(out),
                "--model", model]
        runs = {}
        for name, extra in (("auto", []), ("lissa", ["--solver", "lissa"])):
            t0 = time.perf_counter()
            assert fastif(base + extra) == 0
            runs[name] = (pd.read_parquet(out / "influence.parquet"), json.loads((out / "metrics.json").read_text()),
                          time.perf_counter() - t0)
        merged = runs["auto"][0].merge(runs["lissa"][0], on=["test_id", "train_id"])
        solver = runs["auto"][1]["solver"]
        r = np.corrcoef(merged["influence_x"], merged["influence_y"])[0, 1]
        print(f"| {model} | {solver['parameters']:,} | {solver['name']} | {len(merged):,} | {r:.4f} | "
              f"{runs['auto'][2]:.0f} | {runs['lissa'][2]:.0f} |", flush=True)


if __name__ == "__main__":
    main()
