"""Finding flipped labels: fastif's scores side by side with cleanlab, then remove-and-retrain.

    python benchmarks/cleaning.py --datasets digits fashion-mnist rotten-tomatoes --seeds 0 1 2
    python benchmarks/cleaning.py --summary          # markdown tables from the saved results

Per dataset and seed: export with 10% of training labels flipped (uniform, that seed), train
the built-in model on the noisy labels, then score every training row by

* ``harm``      fastif's flag score: influence summed over the misclassified validation rows
                whose k nearest neighbours include the row (positive = harmful)
* ``helpful``   the same sum with the sign turned (rows that most *lower* the errors' losses)
* ``self-influence``  ∇L(z)ᵀ(H + λI)⁻¹∇L(z), same ridge λ (exact inverse for small models,
                rank-32 Lanczos above 10k parameters)
* ``loss``      the row's own training loss under the fitted model (a one-line baseline)
* ``cleanlab``  confident learning: 1 − self-confidence of out-of-sample probabilities from
                3-fold cross-validation with the same model and recipe

and report recall of the flipped rows in each score's top 5/10/20% and the AUROC. Then retrain
with the same recipe on: the true labels, the noisy labels, and the noisy labels minus the top
10% of each score or minus 10% random rows; test accuracy on the (clean) test split. One JSON
per (dataset, seed) under ``--results``; the pipeline stages are the engine calls the flow makes.
"""
from __future__ import annotations

import argparse
import json
import platform
import statistics
import tempfile
import time
from pathlib import Path

import numpy as np
import torch
from sklearn.metrics import roc_auc_score

from fastif_engine.api import FastIF
from fastif_engine.batching import take
from fastif_engine.data import load_dataset
from fastif_engine.datasets import export
from fastif_engine.influence import self_influence
from fastif_engine.ranking import harm_scores
from fastif_engine.solvers import EXACT_MAX_PARAMS, ExactSolver, LissaSettings, LowRankSolver
from fastif_engine.training import evaluate

from _shared import model_for

# dataset → (model, training rows kept, k, solver, LiSSA settings)
SETUPS = {
    "digits": ("tabular-logreg", None, 200, "exact", LissaSettings(depth=1, damping=0.01)),
    "fashion-mnist": ("image-cnn", 10_000, 1000, "lissa", LissaSettings(depth=300, damping=0.01)),
    "rotten-tomatoes": ("text-minilm", 2_000, 200, "lissa", LissaSettings(depth=100, damping=0.05)),
}
SCORES = ("harm", "helpful", "self-influence", "loss", "cleanlab")
BUDGETS = (0.05, 0.10, 0.20)
REMOVAL = 0.10  # share of training rows removed before retraining (= the share flipped)


def build(model_name: str, ds):
    model, inputs = model_for(model_name, ds)
    return model, {s: inputs(s) for s in ds.splits}


def cross_val_probs(model, x, y, n_classes: int, seed: int, folds: int = 3) -> np.ndarray:
    """Out-of-sample class probabilities for every training row (cleanlab's input)."""
    order = np.random.default_rng(seed).permutation(len(y))
    probs = np.zeros((len(y), n_classes))
    for f in range(folds):
        held = np.sort(order[f::folds])
        fit_rows = torch.as_tensor(np.setdiff1d(np.arange(len(y)), held))
        model.fit(take(x, fit_rows), y[fit_rows], seed=seed * 100 + f)
        with torch.no_grad():
            probs[held] = torch.softmax(model.logits(take(x, torch.as_tensor(held))).double(), -1).cpu().numpy()
    return probs


def row_losses(model, x, y, chunk: int = 512) -> np.ndarray:
    out = []
    with torch.no_grad():
        for lo in range(0, len(y), chunk):
            rows = torch.arange(lo, min(lo + chunk, len(y)))
            out.append(model.loss(model.logits(take(x, rows)), y[rows]).double().cpu().numpy())
    return np.concatenate(out)


def run(dataset: str, seed: int, workdir: Path) -> dict:
    from cleanlab.rank import get_label_quality_scores

    model_name, max_train, k, solver_name, lissa = SETUPS[dataset]
    lissa = LissaSettings(**{**lissa.__dict__, "seed": seed})
    paths = export(dataset, workdir / f"{dataset}-{seed}", noise=0.1, seed=seed, max_train=max_train)
    ds = load_dataset({s: str(p) for s, p in paths.items()})
    train = ds.splits["train"]
    flipped = train.extra["noisy"].to_numpy().astype(bool)
    true_codes = np.searchsorted(np.array(ds.classes), train.extra["true_label"].to_numpy())
    model, x = build(model_name, ds)
    y = {s: torch.as_tensor(ds.splits[s].labels) for s in ds.splits}
    timings = {}

    t = time.perf_counter()
    model.fit(x["train"], y["train"], seed=seed)
    timings["train"] = time.perf_counter() - t
    wrong = (model.predict(x["valid"]) != y["valid"]).nonzero().ravel()

    t = time.perf_counter()
    fi = FastIF(model, x["train"], y["train"], solver=solver_name, lissa=lissa, k=min(k, len(train)))
    table = fi.influence(take(x["valid"], wrong), y["valid"][wrong])
    harm = harm_scores(table, len(train))["harm_score"].to_numpy()
    timings["influence"] = time.perf_counter() - t

    t = time.perf_counter()
    if fi.flat.size <= EXACT_MAX_PARAMS:
        inverse = ExactSolver(model, x["train"], y["train"], ridge=fi.solver.ridge, flat=fi.flat)
    else:
        rows = 256 if model_name == "text-minilm" else 1024  # Hessian sample: text HVPs are costly
        inverse = LowRankSolver(model, x["train"], y["train"], ridge=fi.solver.ridge, rank=32, rows=rows, seed=seed,
                                flat=fi.flat)
    selfinf = self_influence(model, x["train"], y["train"], inverse, chunk_size=64, flat=fi.flat)
    timings["self-influence"] = time.perf_counter() - t
    losses = row_losses(model, x["train"], y["train"])

    t = time.perf_counter()
    probs = cross_val_probs(model, x["train"], y["train"], ds.n_classes, seed)
    cl = 1.0 - get_label_quality_scores(train.labels, probs, method="self_confidence")
    timings["cleanlab"] = time.perf_counter() - t

    scores = {"harm": harm, "helpful": -harm, "self-influence": selfinf, "loss": losses, "cleanlab": cl}
    n = len(train)
    detection = {}
    for name, s in scores.items():
        order = np.lexsort((np.arange(n), -s))
        detection[name] = {"auroc": float(roc_auc_score(flipped, s)),
                           **{f"recall@{int(b * 100)}%": float(flipped[order[:round(b * n)]].sum() / flipped.sum())
                              for b in BUDGETS}}

    budget = round(REMOVAL * n)
    removals = {name: np.lexsort((np.arange(n), -scores[name]))[:budget] for name in ("harm", "self-influence", "cleanlab")}
    removals["random"] = np.random.default_rng(10_000 + seed).choice(n, budget, replace=False)
    accuracy = {}
    t = time.perf_counter()
    for variant, labels, drop in ([("true labels", torch.as_tensor(true_codes), None), ("noisy", y["train"], None)]
                                  + [(f"minus {name}", y["train"], rows) for name, rows in removals.items()]):
        keep = torch.as_tensor(np.setdiff1d(np.arange(n), drop) if drop is not None else np.arange(n))
        model.fit(take(x["train"], keep), labels[keep], seed=seed)
        accuracy[variant] = evaluate(model, x["test"], y["test"]).accuracy
    timings["retrain"] = time.perf_counter() - t
    return {"dataset": dataset, "seed": seed, "model": model_name, "train_rows": n, "flipped": int(flipped.sum()),
            "valid_errors": int(len(wrong)), "k": k, "solver": solver_name, "ridge": fi.solver.ridge,
            "parameters": fi.flat.size, "detection": detection, "accuracy": accuracy,
            "flipped_in_removed": {name: int(flipped[rows].sum()) for name, rows in removals.items()},
            "seconds": timings}


def summary(results_dir: Path) -> None:
    results = [json.loads(p.read_text()) for p in sorted(results_dir.glob("cleaning-*.json"))]
    for dataset in SETUPS:
        runs = [r for r in results if r["dataset"] == dataset]
        if not runs:
            continue
        r0 = runs[0]
        print(f"\n#### {dataset}: {r0['model']}, {r0['train_rows']} training rows, {r0['flipped']} flipped, "
              f"k = {r0['k']}, {r0['solver']} (λ = {r0['ridge']:.3g}), {len(runs)} seeds "
              f"({', '.join(str(r['seed']) for r in runs)})\n")
        print("| score | recall top 5% | top 10% | top 20% | AUROC |\n|---|---|---|---|---|")
        for name in SCORES:
            cells = [ms([r["detection"][name][f"recall@{int(b * 100)}%"] for r in runs]) for b in BUDGETS]
            print(f"| {name} | " + " | ".join(cells) + f" | {ms([r['detection'][name]['auroc'] for r in runs])} |")
        print("\n| training set | test accuracy (mean ± std) | flipped rows removed |\n|---|---|---|")
        for variant in r0["accuracy"]:
            removed = variant.removeprefix("minus ")
            flips = (ms([r["flipped_in_removed"][removed] for r in runs], 1) + f" of {round(REMOVAL * r0['train_rows'])}"
                     if removed in r0["flipped_in_removed"] else "")
            print(f"| {variant} | {ms([r['accuracy'][variant] for r in runs])} | {flips} |")


def ms(values: list[float], digits: int = 3) -> str:
    std = statistics.stdev(values) if len(values) > 1 else 0.0
    return f"{statistics.mean(values):.{digits}f} ± {std:.{digits}f}"


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--datasets", nargs="+", default=list(SETUPS), choices=list(SETUPS))
    ap.add_argument("--seeds", type=int, nargs="+", default=[0, 1, 2])
    ap.add_argument("--results", type=Path, default=Path("benchmarks/results"))
    ap.add_argument("--summary", action="store_true", help="only print tables from saved results")
    args = ap.parse_args()
    if not args.summary:
        args.results.mkdir(parents=True, exist_ok=True)
        print(f"machine: {platform.machine()}, {torch.get_num_threads()} torch threads, torch {torch.__version__}")
        with tempfile.TemporaryDirectory() as tmp:
            for dataset in args.datasets:
                for seed in args.seeds:
                    t = time.perf_counter()
                    result = run(dataset, seed, Path(tmp))
                    (args.results / f"cleaning-{dataset}-{seed}.json").write_text(json.dumps(result, indent=1))
                    print(f"{dataset} seed {seed}: {time.perf_counter() - t:.0f} s "
                          + json.dumps({k: round(v["auroc"], 3) for k, v in result["detection"].items()}), flush=True)
    summary(args.results)


if __name__ == "__main__":
    main()
