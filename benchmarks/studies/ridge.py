"""Which ridge λ cleans best? Today's λ = 0.01 × scale against ridges set from the Hessian's spectrum.

    python benchmarks/studies/ridge.py --datasets digits breast-cancer rotten-tomatoes --seeds 0 1
    python benchmarks/studies/ridge.py --summary            # markdown table from the saved results
    python benchmarks/studies/ridge.py --datasets rotten-tomatoes --rules d=0.05 \
        --results benchmarks/studies/results/ridge-0.3.2    # today's default only, results kept apart
    python benchmarks/studies/ridge.py --datasets fashion-mnist --rules d=0.01 d=0.05 --solver lissa \
        --no-retrain --results benchmarks/studies/results/ridge-0.3.2-fashion/lissa   # another solver, no retrain

Per dataset, noise kind (the cleaning study's: ``benchmarks/cleaning.py``) and seed: train the
built-in model on the noisy labels, estimate where each ridge sits in the Hessian's spectrum
(``fastif_engine.influence.hessian.spectrum``: top eigenvalue, mean eigenvalue = trace / P), and for each
ridge rule build the product's default solver (``auto``) at that λ, compute net harm (class prior
``auto``) and the default flag score ``combined`` (net harm's and the training loss's mean
percentile rank), and flag as the product does (top 15%, score > 0, net-harm t ≥ 2). Reported
per rule: recall of the flipped rows in combined's top 10%, the flags' count and flipped share,
and test accuracy after retraining without the flags and without as many random rows (the
same seed throughout, so every rule of a seed is paired).

Rules: ``d=0.01`` (λ = 0.01 × scale, the default up to 0.2.8; scale = 2 × the largest sampled
single-row curvature), ``d=0.05`` (the demo's setting up to 0.2.7), ``0.1·max`` (a tenth of the
top eigenvalue), ``0.1·mean`` (a tenth of the mean eigenvalue, Kronfluence's heuristic).
"""
from __future__ import annotations

import argparse
import json
import statistics
import tempfile
import time
from pathlib import Path

import numpy as np
import pandas as pd
import torch
from sklearn.metrics import roc_auc_score

from fastif_engine import __version__
from fastif_engine.cleaning.flagging import FlagRule, rank_and_flag, rank_fusion
from fastif_engine.data.batching import take
from fastif_engine.errors import SolverSetupError
from fastif_engine.influence.gradients import FlatParams
from fastif_engine.influence.hessian import spectrum
from fastif_engine.influence.net_harm import DEFAULT_FOLDS, net_harm
from fastif_engine.influence.planning import SOLVERS, make_solver
from fastif_engine.influence.solvers import LissaSettings, auto_scale
from fastif_engine.models.training import evaluate

import _path  # noqa: F401  (benchmarks/ on the path)
from cleaning import NOISE, noisy_setup, row_losses

RULES = ("d=0.01", "d=0.05", "0.1·max", "0.1·mean")
RESULTS = Path(__file__).parent / "results" / "ridge"


def rule_name(rule: str) -> str:
    """``--rules`` values: ``d=<damping>`` (λ = damping × scale) or ``<factor>·max`` / ``<factor>·mean``
    (λ = factor × the top / mean eigenvalue; ``*`` for ``·`` too)."""
    rule = rule.replace("*", "·")
    factor, _, base = rule.partition("·")
    try:
        if (rule.startswith("d=") and float(rule[2:]) > 0) or (base in ("max", "mean") and float(factor) > 0):
            return rule
    except ValueError:
        pass
    raise argparse.ArgumentTypeError(f"{rule!r}: choose d=<damping>, <factor>·max or <factor>·mean "
                                     f"(named: {', '.join(RULES)})")


def ridge_of(rule: str, scale: float, largest: float, mean: float) -> float:
    factor, _, base = rule.partition("·")
    if rule.startswith("d="):
        return float(rule[2:]) * scale
    return float(factor) * {"max": largest, "mean": mean}[base]


def run(dataset: str, mode: str, seed: int, workdir: Path, rules_to_run: tuple[str, ...] = RULES,
        solver_name: str = "auto", retrain: bool = True) -> dict:
    s = noisy_setup(dataset, mode, seed, workdir)
    model, x, y, flipped = s.model, s.x, s.y, s.flipped
    n = len(y["train"])
    true_codes = np.searchsorted(np.array(s.ds.classes), s.ds.splits["train"].extra["true_label"].to_numpy())
    seconds = {}
    t = time.perf_counter()
    model.fit(x["train"], y["train"], seed=seed)
    seconds["train"] = time.perf_counter() - t
    flat = FlatParams.of(model)
    t = time.perf_counter()
    scale = auto_scale(model, flat, x["train"], y["train"], seed)
    spec = spectrum(model, flat, x["train"], y["train"], seed=seed)
    seconds["spectrum"] = time.perf_counter() - t
    losses = row_losses(model, x["train"], y["train"])
    state = {k: v.detach().clone() for k, v in model.model.state_dict().items()}

    rules = {}
    for rule in rules_to_run:
        ridge = ridge_of(rule, scale, spec.largest, spec.mean)
        entry = {"ridge": ridge, **{k: v for k, v in spec.relative(ridge).items() if k.startswith("ridge_over")}}
        rules[rule] = entry
        model.model.load_state_dict(state)
        t = time.perf_counter()
        try:
            settings = LissaSettings(damping=ridge / scale, scale=scale, seed=seed)
            solver = make_solver(solver_name, model, x["train"], y["train"], settings, flat=flat,
                                 n_vectors=DEFAULT_FOLDS)
            net = net_harm(model, x["train"], y["train"], x["valid"], y["valid"], solver, seed=seed, flat=flat,
                           chunk_size=64)
        except (SolverSetupError, ValueError) as exc:  # a ridge below the most negative curvature
            entry["error"] = str(exc).splitlines()[0]
            continue
        entry["solver"] = type(solver).__name__
        combined = rank_fusion(net.score, losses)
        scores = pd.DataFrame({"combined_score": combined, "net_harm_t": net.t})
        flags = rank_and_flag(scores, FlagRule(), by="combined_score", evidence="net_harm_t", min_evidence=2.0)
        rows = np.flatnonzero(flags["flagged"].to_numpy())
        top10 = np.lexsort((np.arange(n), -combined))[:round(0.1 * n)]
        entry.update({"recall@10%": float(flipped[top10].sum() / flipped.sum()),
                      "auroc": float(roc_auc_score(flipped, combined)),
                      "net_harm_recall@10%": float(flipped[np.lexsort((np.arange(n), -net.score))[:round(0.1 * n)]]
                                                   .sum() / flipped.sum()),
                      "flagged": int(len(rows)), "flipped_in_flagged": int(flipped[rows].sum()),
                      "_rows": rows, "seconds": time.perf_counter() - t})

    accuracy_of = {}

    def accuracy(labels: torch.Tensor, drop: np.ndarray) -> float:
        key = (labels is y["train"], tuple(drop.tolist()))
        if key not in accuracy_of:
            keep = torch.as_tensor(np.setdiff1d(np.arange(n), drop))
            model.fit(take(x["train"], keep), labels[keep], seed=seed)
            accuracy_of[key] = evaluate(model, x["test"], y["test"]).accuracy
        return accuracy_of[key]

    result = {"version": __version__, "dataset": dataset, "noise": mode, "seed": seed, "model": s.model_name,
              "solver": solver_name, "train_rows": n, "flipped": int(flipped.sum()), "parameters": flat.size,
              "scale": scale, "spectrum": {"largest": spec.largest, "mean": spec.mean, "rows": spec.rows},
              "rules": rules, "seconds": seconds}
    flagged = {rule: entry.pop("_rows") for rule, entry in rules.items() if "_rows" in entry}
    if not retrain:
        return result
    t = time.perf_counter()
    none = np.zeros(0, dtype=np.int64)
    result["accuracy"] = {"true labels": accuracy(torch.as_tensor(true_codes), none),
                          "noisy": accuracy(y["train"], none)}
    for rule, rows in flagged.items():
        random_rows = np.sort(np.random.default_rng(10_000 + seed).choice(n, len(rows), replace=False))
        rules[rule]["accuracy"] = {"minus flags": accuracy(y["train"], rows),
                                   "minus random": accuracy(y["train"], random_rows)}
    seconds["retrain"] = time.perf_counter() - t
    return result


def summary(results_dir: Path) -> None:
    results = [json.loads(p.read_text()) for p in sorted(results_dir.glob("ridge-*.json"))]
    print("| dataset | noise | seeds | rule | λ / λ_max | λ / mean | recall@10% | flags (flipped %) "
          "| Δacc vs noisy | Δacc vs random |")
    print("|---|---|---|---|---|---|---|---|---|---|")
    for (dataset, mode), group in pd.DataFrame(results).groupby(["dataset", "noise"], sort=False):
        runs = group.to_dict("records")
        rules = sorted({r for run in runs for r in run["rules"]}, key=lambda r: (r not in RULES, r))
        for rule in [r for r in rules if all(r in run["rules"] for run in runs)]:
            cells = [r["rules"][rule] for r in runs]
            ok = [(c, r) for c, r in zip(cells, runs) if "error" not in c]
            ratio = lambda key: statistics.median(c[key] for c in cells)  # noqa: E731
            if not ok:
                print(f"| {dataset} | {mode} | {len(runs)} | {rule} | {ratio('ridge_over_largest'):.3g} | "
                      f"{ratio('ridge_over_mean'):.3g} | not positive definite | | | |")
                continue
            mean = lambda f: statistics.mean(f(c, r) for c, r in ok)  # noqa: E731
            flags = mean(lambda c, r: c["flagged"])
            share = sum(c["flipped_in_flagged"] for c, _ in ok) / max(1, sum(c["flagged"] for c, _ in ok))
            gains = " | "
            if all("accuracy" in c for c, _ in ok):
                gains = (f"{mean(lambda c, r: c['accuracy']['minus flags'] - r['accuracy']['noisy']):+.4f} | "
                         f"{mean(lambda c, r: c['accuracy']['minus flags'] - c['accuracy']['minus random']):+.4f}")
            print(f"| {dataset} | {mode} | {len(ok)}/{len(runs)} | {rule} | {ratio('ridge_over_largest'):.3g} | "
                  f"{ratio('ridge_over_mean'):.3g} | {mean(lambda c, r: c['recall@10%']):.3f} | "
                  f"{flags:.0f} ({100 * share:.0f}%) | {gains} |")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--datasets", nargs="+", default=["digits", "breast-cancer", "rotten-tomatoes"])
    parser.add_argument("--noise-modes", nargs="+", default=list(NOISE), choices=list(NOISE))
    parser.add_argument("--seeds", nargs="+", type=int, default=[0, 1])
    parser.add_argument("--rules", nargs="+", default=list(RULES), type=rule_name,
                        help=f"ridge rules to run (default: {' '.join(RULES)}; any d=<damping>, <f>·max, <f>·mean); "
                             "d=0.05 alone is the product's default")
    parser.add_argument("--solver", default="auto", choices=SOLVERS,
                        help="the solver behind every rule (default: the product's, auto)")
    parser.add_argument("--no-retrain", action="store_true",
                        help="scores and flags only: no retraining, no accuracy columns")
    parser.add_argument("--results", type=Path, default=RESULTS)
    parser.add_argument("--summary", action="store_true", help="print the table of the saved results and stop")
    args = parser.parse_args()
    if args.summary:
        summary(args.results)
        return
    args.results.mkdir(parents=True, exist_ok=True)
    for dataset in args.datasets:
        for mode in args.noise_modes:
            for seed in args.seeds:
                t = time.perf_counter()
                with tempfile.TemporaryDirectory() as tmp:
                    result = run(dataset, mode, seed, Path(tmp), tuple(args.rules), args.solver,
                                 retrain=not args.no_retrain)
                (args.results / f"ridge-{dataset}-{mode}-{seed}.json").write_text(json.dumps(result, indent=1))
                cells = {rule: (c.get("recall@10%"), c.get("accuracy", {}).get("minus flags"), c.get("error"))
                         for rule, c in result["rules"].items()}
                noisy = result.get("accuracy", {}).get("noisy", float("nan"))
                print(f"{dataset} {mode} seed {seed}: {time.perf_counter() - t:.0f} s noisy {noisy:.4f} {cells}",
                      flush=True)


if __name__ == "__main__":
    main()
