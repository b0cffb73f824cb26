"""Finding flipped labels and fixing them: fastif's scores side by side with cleanlab.

    python benchmarks/cleaning.py --datasets digits fashion-mnist --noise-modes uniform class-conditional \
        --seeds 0 1 2
    python benchmarks/cleaning.py --summary          # markdown tables from the saved results

Per dataset, noise kind and seed: export with noisy training labels (``uniform``: 10% of rows to
a random other class; ``class-conditional``: 30% of half the classes' rows, of one class when
there are two, labelled as one other class each), train the built-in model on them, then score
every training row by

* ``harm``       influence summed over the misclassified validation rows whose k nearest
                 neighbours include the row (FastIF's per-error scores; positive = harmful)
* ``harm-norm``  the same with each error's scores divided by its largest |score| (each
                 error counts once)
* ``net-harm``   influence on the whole validation loss (errors and correct rows), from 10
                 fold s_tests (fastif_engine.influence.net_harm), the class prior as the product's default
                 ``auto`` takes it: refitted to validation unless validation's class mix differs
                 from the model's predictions with z ≥ 2; ``net-t`` its fold t-statistic;
                 ``net-harm-refit`` always refitted; ``net-harm-model``, ``net-t-model`` never
                 (0.2.1's net harm)
* ``self-influence``  ∇L(z)ᵀ(H + λI)⁻¹∇L(z), same ridge λ (exact inverse for small models,
                 rank-32 Lanczos above 10k parameters)
* ``loss``       the row's own training loss under the fitted model
* ``combined``   mean percentile rank of net-harm and loss (fastif's default flag score);
                 ``combined-refit``, ``combined-model`` the same with those net harms
* ``cleanlab``   confident learning: 1 − self-confidence of out-of-sample probabilities from
                 3-fold cross-validation with the same model and recipe

and report recall of the flipped rows in each score's top 5/10/20% and the AUROC. Then retrain
with the same recipe (seed = noise seed, so every variant of a seed is paired) on: the true
labels; the noisy labels; the noisy labels with a score's flags (top 10%, and only rows whose
net-harm t ≥ 2, as the product flags) removed, or relabelled to what a model trained without
them predicts for them; without
as many random rows; without cleanlab's or the own loss's top 10%. Test accuracy on the clean
test split. One JSON per (dataset, noise, seed) under ``--results``; the stages are the engine
calls the flow makes.
"""
from __future__ import annotations

import argparse
import json
import platform
import statistics
import tempfile
import time
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch
from sklearn.metrics import roc_auc_score

from fastif_engine import __version__
from fastif_engine.cleaning.flagging import harm_scores, rank_fusion
from fastif_engine.cleaning.verdict import paired_ci
from fastif_engine.data.batching import take
from fastif_engine.data.datasets import export
from fastif_engine.data.tables import load_dataset
from fastif_engine.influence.api import FastIF
from fastif_engine.influence.krylov import LowRankSolver
from fastif_engine.influence.net_harm import net_harm, refits_prior
from fastif_engine.influence.scores import self_influence
from fastif_engine.influence.solvers import EXACT_MAX_PARAMS, ExactSolver, LissaSettings
from fastif_engine.models.training import evaluate

from _shared import model_for

# dataset → (model, training rows kept, k, solver, LiSSA settings)
SETUPS = {
    "digits": ("tabular-logreg", None, 200, "exact", LissaSettings(depth=1, damping=0.01)),
    "breast-cancer": ("tabular-mlp", None, 200, "exact", LissaSettings(depth=1, damping=0.1)),
    "fashion-mnist": ("image-cnn", 10_000, 1000, "lissa", LissaSettings(depth=300, batch_size=16, damping=0.01)),
    "rotten-tomatoes": ("text-minilm", 2_000, 200, "lissa", LissaSettings(depth=100, batch_size=4, damping=0.05)),
}
NOISE = {"uniform": 0.1, "class-conditional": 0.3}  # noise kind → rate
SCORES = ("harm", "harm-norm", "net-harm-model", "net-t-model", "net-harm-refit", "net-harm", "net-t",
          "self-influence", "loss", "combined-model", "combined-refit", "combined", "cleanlab")
# scores whose evidence-floored flags are removed / relabelled
FLAGGED = ("net-harm", "combined-model", "combined-refit", "combined")
MIN_EVIDENCE = 2.0  # net-harm t a flag needs (the product's default flag_evidence)
BUDGETS = (0.05, 0.10, 0.20)
# share of training rows the flags may take before retraining: the budget of the committed results
# (the product's default until 0.2.4); flag_budget.py measures others, 0.2.5's default 15% among them
REMOVAL = 0.10


def build(model_name: str, ds):
    model, inputs = model_for(model_name, ds)
    return model, {s: inputs(s) for s in ds.splits}


@dataclass
class Setup:
    """One (dataset, noise kind, seed) of the study, exported and ready to fit (nothing fitted yet)."""

    model_name: str
    k: int
    solver_name: str
    lissa: LissaSettings  # the dataset's settings, seeded with the noise seed
    ds: object  # the loaded dataset
    flipped: np.ndarray  # [n] bool: the training row's label was flipped
    model: object
    x: dict  # split → model inputs
    y: dict  # split → label tensor


def noisy_setup(dataset: str, mode: str, seed: int, workdir: Path) -> Setup:
    """Export ``dataset`` with ``mode`` noise at its study rate and seed, load it, build its model."""
    model_name, max_train, k, solver_name, lissa = SETUPS[dataset]
    paths = export(dataset, workdir / f"{dataset}-{mode}-{seed}", noise=NOISE[mode], noise_mode=mode, seed=seed,
                   max_train=max_train)
    ds = load_dataset({s: str(p) for s, p in paths.items()})
    model, x = build(model_name, ds)
    return Setup(model_name, k, solver_name, LissaSettings(**{**lissa.__dict__, "seed": seed}), ds,
                 ds.splits["train"].extra["noisy"].to_numpy().astype(bool), model, x,
                 {s: torch.as_tensor(ds.splits[s].labels) for s in ds.splits})


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


def floored_flags(order: np.ndarray, budget: int, score: np.ndarray, evident: np.ndarray) -> np.ndarray:
    """What the product flags: rows among the first ``budget`` of ``order`` with a positive score
    and net-harm evidence (``evident``: t ≥ MIN_EVIDENCE)."""
    top = order[:budget]
    return top[evident[top] & (score[top] > 0)].astype(np.int64)


def row_losses(model, x, y, chunk: int = 512) -> np.ndarray:
    out = []
    with torch.no_grad():
        for lo in range(0, len(y), chunk):
            rows = torch.arange(lo, min(lo + chunk, len(y)))
            out.append(model.loss(model.logits(take(x, rows)), y[rows]).double().cpu().numpy())
    return np.concatenate(out)


def run(dataset: str, mode: str, seed: int, workdir: Path, dump: Path | None = None) -> dict:
    from cleanlab.rank import get_label_quality_scores

    setup = noisy_setup(dataset, mode, seed, workdir)
    model_name, k, solver_name, lissa = setup.model_name, setup.k, setup.solver_name, setup.lissa
    ds, flipped, model, x, y = setup.ds, setup.flipped, setup.model, setup.x, setup.y
    train = ds.splits["train"]
    true_codes = np.searchsorted(np.array(ds.classes), train.extra["true_label"].to_numpy())
    timings = {}

    t = time.perf_counter()
    model.fit(x["train"], y["train"], seed=seed)
    timings["train"] = time.perf_counter() - t
    wrong = (model.predict(x["valid"]) != y["valid"]).nonzero().ravel()
    with torch.no_grad():
        valid_prob = torch.softmax(model.logits(x["valid"]).double(), -1).cpu().numpy()

    t = time.perf_counter()
    fi = FastIF(model, x["train"], y["train"], solver=solver_name, lissa=lissa, k=min(k, len(train)))
    table = fi.influence(take(x["valid"], wrong), y["valid"][wrong])
    harm = harm_scores(table, len(train))["harm_score"].to_numpy()
    peak = table.groupby("test_pos")["influence"].transform(lambda v: v.abs().max()).to_numpy()
    harm_norm = harm_scores(table.assign(influence=table["influence"] / np.where(peak > 0, peak, 1.0)),
                            len(train))["harm_score"].to_numpy()
    timings["influence"] = time.perf_counter() - t

    t = time.perf_counter()
    net_refit = net_harm(model, x["train"], y["train"], x["valid"], y["valid"], fi.solver, seed=seed, chunk_size=64,
                         flat=fi.flat, prior="refit")
    timings["net-harm"] = time.perf_counter() - t
    net_model = net_harm(model, x["train"], y["train"], x["valid"], y["valid"], fi.solver, seed=seed, chunk_size=64,
                         flat=fi.flat, prior="model")
    net = net_refit if refits_prior("auto", net_refit.prior.z, MIN_EVIDENCE) else net_model  # prior="auto"

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

    scores = {"harm": harm, "harm-norm": harm_norm, "net-harm-model": net_model.score, "net-t-model": net_model.t,
              "net-harm-refit": net_refit.score, "net-harm": net.score,
              "net-t": net.t, "self-influence": selfinf, "loss": losses,
              "combined-model": rank_fusion(net_model.score, losses),
              "combined-refit": rank_fusion(net_refit.score, losses), "combined": rank_fusion(net.score, losses),
              "cleanlab": cl}
    n = len(train)
    top = {name: np.lexsort((np.arange(n), -s)) for name, s in scores.items()}
    detection = {}
    for name, s in scores.items():
        finite = np.where(np.isfinite(s), s, np.sign(s) * 1e300)
        detection[name] = {"auroc": float(roc_auc_score(flipped, finite)),
                           **{f"recall@{int(b * 100)}%": float(flipped[top[name][:round(b * n)]].sum() / flipped.sum())
                              for b in BUDGETS}}

    if dump is not None:  # every row's scores, for studies of flag rules that need no retraining
        dump.mkdir(parents=True, exist_ok=True)
        np.savez_compressed(dump / f"cleaning-{dataset}-{mode}-{seed}.npz", label=train.labels, flipped=flipped,
                            per_fold_refit=net_refit.per_fold, per_fold_model=net_model.per_fold,
                            class_offset=net_refit.prior.offset, prior_z=net_refit.prior.z,
                            valid_label=ds.splits["valid"].labels, test_label=ds.splits["test"].labels,
                            valid_prob=valid_prob,
                            **{name.replace("-", "_"): s for name, s in scores.items()})
    budget = round(REMOVAL * n)
    nets = {"model": net_model, "refit": net_refit}
    evident = {name: nets.get(name.rpartition("-")[2], net).t >= MIN_EVIDENCE for name in FLAGGED}
    flags = {name: floored_flags(top[name], budget, scores[name], evident[name]) for name in FLAGGED}
    random_rows = np.random.default_rng(10_000 + seed).choice(n, len(flags["combined"]), replace=False)
    accuracy = {}

    def fit_and_test(variant: str, labels: torch.Tensor, drop: np.ndarray | None = None) -> None:
        keep = torch.as_tensor(np.setdiff1d(np.arange(n), drop) if drop is not None else np.arange(n))
        model.fit(take(x["train"], keep), labels[keep], seed=seed)
        accuracy[variant] = evaluate(model, x["test"], y["test"]).accuracy

    t = time.perf_counter()
    fit_and_test("true labels", torch.as_tensor(true_codes))
    fit_and_test("noisy", y["train"])
    for name, rows in flags.items():
        fit_and_test(f"minus {name}", y["train"], rows)
        relabelled = y["train"].clone()  # to the class a model trained without the flags predicts for them
        relabelled[rows] = model.predict(take(x["train"], torch.as_tensor(rows))).cpu() if len(rows) else relabelled[rows]
        fit_and_test(f"relabel {name}", relabelled)
    fit_and_test("minus random", y["train"], random_rows)
    fit_and_test("minus cleanlab", y["train"], top["cleanlab"][:budget])
    fit_and_test("minus loss", y["train"], top["loss"][:budget])
    timings["retrain"] = time.perf_counter() - t
    flagged_sets = {**flags, "random": random_rows, "cleanlab": top["cleanlab"][:budget], "loss": top["loss"][:budget]}
    return {"version": __version__, "dataset": dataset, "noise": mode, "rate": NOISE[mode], "seed": seed, "model": model_name,
            "train_rows": n, "flipped": int(flipped.sum()), "valid_errors": int(len(wrong)),
            "test_rows": int(len(y["test"])), "k": k, "solver": solver_name, "ridge": fi.solver.ridge,
            "lissa": {"depth": lissa.depth, "batch_size": lissa.batch_size} if solver_name == "lissa" else None,
            "parameters": fi.flat.size, "detection": detection, "accuracy": accuracy,
            "flagged": {name: int(len(rows)) for name, rows in flagged_sets.items()},
            "flipped_in_flagged": {name: int(flipped[rows].sum()) for name, rows in flagged_sets.items()},
            "flagged_class_mix": {name: np.bincount(train.labels[rows], minlength=ds.n_classes).tolist()
                                  for name, rows in flagged_sets.items()},
            "train_class_mix": np.bincount(train.labels, minlength=ds.n_classes).tolist(),
            "class_prior": {**net_refit.prior.as_dict(), "refitted": net is net_refit}, "seconds": timings}


def summary(results_dir: Path) -> None:
    results = [json.loads(p.read_text()) for p in sorted(results_dir.glob("cleaning-*.json"))]
    results = sorted((_renamed(r) for r in results if "noise" in r), key=lambda r: r["seed"])
    for dataset in SETUPS:
        for mode in NOISE:
            runs = [r for r in results if r["dataset"] == dataset and r["noise"] == mode]
            if runs:
                _summary_tables(runs)


def _renamed(result: dict) -> dict:
    """Results written before the class prior was refitted (no "net-harm-model" score) measured net
    harm at the model's prior: file their net-harm and combined scores and flags under the -model names."""
    if "net-harm-model" in result["detection"]:
        return result
    old = {"net-harm": "net-harm-model", "net-t": "net-t-model", "combined": "combined-model"}

    def rename(key: str) -> str:
        verb, _, name = key.rpartition(" ")  # "minus combined" → ("minus", "combined")
        return f"{verb} {old[name]}" if verb and name in old else old.get(key, key)

    return {**result, **{part: {rename(k): v for k, v in result[part].items()}
                         for part in ("detection", "accuracy", "flagged", "flipped_in_flagged")}}


def _summary_tables(runs: list[dict]) -> None:
    """Mean ± sd over seeds; a score or variant measured on only some seeds (results written before
    it existed) says on how many, and one measured on none is left out."""
    r0 = runs[0]
    solver = r0["solver"] + (f" J {r0['lissa']['depth']} B {r0['lissa']['batch_size']}" if r0.get("lissa") else "")
    print(f"\n#### {r0['dataset']}, {r0['noise']} noise {r0['rate']:.0%}: {r0['model']}, {r0['train_rows']} training "
          f"rows, {ms([r['flipped'] for r in runs], 0)} flipped, {ms([r['valid_errors'] for r in runs], 0)} "
          f"validation errors, k = {r0['k']}, {solver} (λ = {r0['ridge']:.3g}), {r0['test_rows']} test rows, "
          f"{len(runs)} seeds ({', '.join(str(r['seed']) for r in runs)})\n")

    def some(key: str, name: str) -> tuple[list[dict], str]:
        have = [r for r in runs if name in r[key]]
        return have, ("" if len(have) == len(runs) else f" ({len(have)} of {len(runs)} seeds)")

    print("| score | recall top 5% | top 10% | top 20% | AUROC |\n|---|---|---|---|---|")
    for name in SCORES:
        have, note = some("detection", name)
        if have:
            cells = [ms([r["detection"][name][f"recall@{int(b * 100)}%"] for r in have]) for b in BUDGETS]
            print(f"| {name}{note} | " + " | ".join(cells) + f" | {ms([r['detection'][name]['auroc'] for r in have])} |")
    print("\n| training set | test accuracy | − noisy: mean [95% CI] | − random: mean [95% CI] "
          "| rows removed or relabelled (flipped among them) |\n|---|---|---|---|---|")
    variants = dict.fromkeys(v for r in runs for v in r["accuracy"])
    for variant in variants:
        have, note = some("accuracy", variant)
        rows = variant.split(" ", 1)[-1]
        acc = [r["accuracy"][variant] for r in have]
        vs = {base: paired_ci(acc, [r["accuracy"][base] for r in have]) for base in ("noisy", "minus random")}
        cells = [f"{c.mean:+.3f} [{c.low:+.3f}, {c.high:+.3f}]" if c.low == c.low else f"{c.mean:+.3f}"
                 for c in vs.values()]
        touched = (f"{ms([r['flagged'][rows] for r in have], 0)} ({ms([r['flipped_in_flagged'][rows] for r in have], 0)})"
                   if rows in have[0]["flagged"] and variant not in ("true labels", "noisy") else "")
        print(f"| {variant}{note} | {ms(acc)} | {cells[0]} | {cells[1]} | {touched} |")


def ms(values: list[float], digits: int = 3) -> str:
    std = statistics.stdev(values) if len(values) > 1 else 0.0
    return f"{statistics.mean(values):.{digits}f} ± {std:.{digits}f}"


def study_arguments() -> argparse.ArgumentParser:
    """The options every study over SETUPS × NOISE × seeds takes (this script, class_prior.py)."""
    ap = argparse.ArgumentParser()
    ap.add_argument("--datasets", nargs="+", default=list(SETUPS), choices=list(SETUPS))
    ap.add_argument("--noise-modes", nargs="+", default=list(NOISE), choices=list(NOISE))
    ap.add_argument("--seeds", type=int, nargs="+", default=[0, 1, 2])
    ap.add_argument("--results", type=Path, default=Path("benchmarks/results"))
    ap.add_argument("--summary", action="store_true", help="only print the tables from saved results")
    return ap


def main() -> None:
    ap = study_arguments()
    ap.add_argument("--dump", type=Path, help="also save every row's scores here (one .npz per run)")
    args = ap.parse_args()
    if not args.summary:
        args.results.mkdir(parents=True, exist_ok=True)
        print(f"machine: {platform.machine()}, {torch.get_num_threads()} torch threads, torch {torch.__version__}")
        with tempfile.TemporaryDirectory() as tmp:
            for dataset in args.datasets:
                for mode in args.noise_modes:
                    for seed in args.seeds:
                        t = time.perf_counter()
                        result = run(dataset, mode, seed, Path(tmp), args.dump)
                        name = f"cleaning-{dataset}-{mode}-{seed}.json"
                        (args.results / name).write_text(json.dumps(result, indent=1))
                        print(f"{dataset} {mode} seed {seed}: {time.perf_counter() - t:.0f} s "
                              + json.dumps({k: round(v["auroc"], 3) for k, v in result["detection"].items()})
                              + " " + json.dumps({k: round(v, 3) for k, v in result["accuracy"].items()}), flush=True)
    summary(args.results)


if __name__ == "__main__":
    main()
