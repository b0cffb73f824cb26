"""`fastif clean --flag-by combined | net-harm | harm | self-influence | loss`, through the command line.

    python benchmarks/studies/flag_by.py --dataset digits --noise-mode class-conditional --seeds 0 1 2
    python benchmarks/studies/flag_by.py --dataset fashion-mnist --max-train 10000 --seeds 0 1 2 --retrain-seeds 2
    python benchmarks/studies/flag_by.py --summary

Per noise seed: ``fastif datasets export NAME --noise RATE --noise-mode MODE --seed S`` (the rates
of cleaning.py: 10% uniform, 30% class-conditional), then one ``fastif clean
--retrain --seeds R`` per flag score into the same ``--out`` folder, so the cached stages
(training, solver, s_test, influence) are shared and only ranking and retraining differ.
Reported from each run's own outputs: how many of the flagged rows are flipped (flags.parquet
keeps the export's ``noisy`` column), and the retrained test accuracy without the flags vs
with all rows vs without as many random rows (metrics.json, mean over the R retrain seeds), and
the run's verdict. Every run uses the product's evidence floor (``--flag-evidence 2``).
This is the product path; ``cleaning.py`` scores the same rows with engine calls and adds
cleanlab.
"""
from __future__ import annotations

import argparse
import json
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import pandas as pd

import _path  # noqa: F401  (benchmarks/ on the path)
from cleaning import NOISE, SETUPS
from fastif_engine.data.datasets import pixels_as_columns

SCORES = ("combined", "net-harm", "harm", "self-influence", "loss")


def clean_settings(dataset: str) -> list[str]:
    """The ``fastif clean`` options for the model, k and solver that cleaning.py uses on ``dataset``."""
    model, _, k, solver, lissa = SETUPS[dataset]
    return ["--model", model, "--solver", solver, "--k", str(k), "--depth", str(lissa.depth),
            "--batch-size", str(lissa.batch_size), "--damping", str(lissa.damping)]


def fastif(*args: str) -> None:
    cmd = [sys.executable, "-m", "flows.cli", *args]
    done = subprocess.run(cmd, capture_output=True, text=True)
    if done.returncode != 0:
        raise SystemExit(f"{' '.join(cmd)} exited {done.returncode}:\n{done.stderr[-2000:]}")


def one_seed(dataset: str, mode: str, seed: int, max_train: int | None, retrain_seeds: int,
             work: Path, scores: list[str]) -> list[dict]:
    data = work / f"data-{seed}"
    export = ["datasets", "export", dataset, "--out", str(data), "--noise", str(NOISE[mode]), "--noise-mode", mode,
              "--seed", str(seed)]
    fastif(*export, *(["--max-train", str(max_train)] if max_train else []))
    if SETUPS[dataset][0].startswith("tabular"):  # the pixels as feature columns, what a tabular user has
        pixels_as_columns({split: data / f"{split}.parquet" for split in ("train", "valid", "test")}, suffix="")
    rows = []
    for score in scores:
        out = work / f"run-{seed}"
        t0 = time.perf_counter()
        fastif("clean", "--train", str(data / "train.parquet"), "--valid", str(data / "valid.parquet"),
               "--test", str(data / "test.parquet"), "--out", str(out), *clean_settings(dataset), "--flag-by", score,
               "--self-influence", "on", "--retrain", "--seeds", str(retrain_seeds), "--seed", str(seed))
        seconds = time.perf_counter() - t0
        flags = pd.read_parquet(out / "flags.parquet")
        retrain = json.loads((out / "metrics.json").read_text())["accuracy"]["retrain"]
        acc = retrain["summary"]
        flagged = flags["flagged"].to_numpy()
        rows.append({"dataset": dataset, "noise": mode, "seed": seed, "flag_by": score, "retrain_seeds": retrain_seeds,
                     "train_rows": len(flags),
                     "flipped": int(flags["noisy"].sum()), "flagged": int(flagged.sum()),
                     "flipped_in_flags": int(flags.loc[flagged, "noisy"].sum()),
                     "accuracy": {k: acc[k]["mean"] for k in ("original", "cleaned", "random")},
                     "verdict": retrain["verdict"],
                     "seconds": round(seconds, 1)})
        print(json.dumps(rows[-1]), flush=True)
    return rows


def summary(results: Path) -> None:
    for path in sorted(results.glob("flag_by-*.json")):
        rows = json.loads(path.read_text())
        r0 = rows[0]
        seeds = sorted({r["seed"] for r in rows})
        print(f"\n#### {r0['dataset']}, {r0.get('noise', 'uniform')} noise: {r0['train_rows']} training rows, "
              f"{r0['flipped']} flipped, {len(seeds)} noise seeds × {r0.get('retrain_seeds', 3)} retrain seeds\n")
        print("| --flag-by | rows flagged | flipped share of the flags | test accuracy without the flags | all rows | "
              "without as many random rows | verdicts |\n|---|---|---|---|---|---|---|")
        for score in SCORES:
            mine = [r for r in rows if r["flag_by"] == score]
            if not mine:
                continue
            cells = [[r["flagged"] for r in mine], [r["flipped_in_flags"] / max(r["flagged"], 1) for r in mine]]
            cells += [[r["accuracy"][k] for r in mine] for k in ("cleaned", "original", "random")]
            verdicts = "; ".join(r.get("verdict", "—") for r in mine)
            print(f"| {score} | " + " | ".join(_ms(c, 0 if i == 0 else 3) for i, c in enumerate(cells))
                  + f" | {verdicts} |")


def _ms(values: list[float], digits: int = 3) -> str:
    sd = statistics.stdev(values) if len(values) > 1 else 0.0
    return f"{statistics.mean(values):.{digits}f} ± {sd:.{digits}f}"


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--dataset", choices=list(SETUPS), default="digits")
    ap.add_argument("--noise-mode", choices=list(NOISE), default="uniform")
    ap.add_argument("--seeds", type=int, nargs="+", default=[0, 1, 2])
    ap.add_argument("--max-train", type=int, default=None)
    ap.add_argument("--retrain-seeds", type=int, default=3)
    ap.add_argument("--scores", nargs="+", choices=SCORES, default=list(SCORES))
    ap.add_argument("--results", type=Path, default=Path("benchmarks/studies/results"))
    ap.add_argument("--summary", action="store_true", help="only print tables from saved results")
    args = ap.parse_args()
    if not args.summary:
        rows = []
        with tempfile.TemporaryDirectory() as tmp:
            for seed in args.seeds:
                rows += one_seed(args.dataset, args.noise_mode, seed, args.max_train, args.retrain_seeds, Path(tmp),
                                 args.scores)
        args.results.mkdir(parents=True, exist_ok=True)
        (args.results / f"flag_by-{args.dataset}-{args.noise_mode}.json").write_text(json.dumps(rows, indent=1))
    summary(args.results)


if __name__ == "__main__":
    main()
