"""Does a larger flag budget pay where more rows are flipped than the budget holds?

    python benchmarks/studies/flag_budget.py [--dataset fashion-mnist] [--noise-mode class-conditional] \
        [--seeds 0 1 2 3 4 5] [--budgets 0.1 0.15 0.2] [--results DIR]
    python benchmarks/studies/flag_budget.py --summary DIR     # the tables of every JSON in DIR

The same setting as ``cleaning.py`` (its noise kinds and rates, model, k, solver and seed per
noise seed). The default flags (``combined`` with net harm's prior chosen as the product does,
net-harm t ≥ 2) are taken at each budget (the top share of rows, a ceiling), removed, and the
model refitted (seed = noise seed); a random removal of as many rows is the control. Printed:
per budget, flags (flipped among them) and the paired 95% CIs over seeds of the accuracy
change against the noisy data and against the random removal. A fit is made once per set of
rows removed: where the evidence floor, not the budget, decides the flags, two budgets share their
refits. ``--results`` keeps one JSON per seed.
"""
from __future__ import annotations

import argparse
import json
import tempfile
from pathlib import Path

import numpy as np
import torch

import _path  # noqa: F401  (benchmarks/ on the path)
from cleaning import MIN_EVIDENCE, NOISE, SETUPS, floored_flags, noisy_setup
from fastif_engine.cleaning.flagging import rank_fusion
from fastif_engine.cleaning.verdict import paired_ci
from fastif_engine.data.batching import take
from fastif_engine.influence.api import FastIF
from fastif_engine.influence.net_harm import net_harm
from fastif_engine.models.training import evaluate


def run(dataset: str, mode: str, seed: int, budgets: list[float], workdir: Path) -> dict:
    setup = noisy_setup(dataset, mode, seed, workdir)
    flipped, model, x, y = setup.flipped, setup.model, setup.x, setup.y
    n = len(y["train"])
    fits: dict[frozenset, float] = {}

    def accuracy(drop: np.ndarray | None = None) -> float:
        key = frozenset(() if drop is None else drop.tolist())
        if key not in fits:
            keep = torch.as_tensor(np.setdiff1d(np.arange(n), drop) if drop is not None else np.arange(n))
            model.fit(take(x["train"], keep), y["train"][keep], seed=seed)
            fits[key] = evaluate(model, x["test"], y["test"]).accuracy
        return fits[key]

    noisy = accuracy()  # also the model the scores are taken on
    fi = FastIF(model, x["train"], y["train"], solver=setup.solver_name, lissa=setup.lissa, k=min(setup.k, n))
    net = net_harm(model, x["train"], y["train"], x["valid"], y["valid"], fi.solver, seed=seed, chunk_size=64,
                   flat=fi.flat, prior="auto", evidence=MIN_EVIDENCE)
    losses = evaluate(model, x["train"], y["train"]).losses
    score = rank_fusion(net.score, losses)
    order = np.lexsort((np.arange(n), -score))
    evident = (net.t >= MIN_EVIDENCE) & (score > 0)
    out = {"dataset": dataset, "noise": mode, "seed": seed, "train_rows": n, "flipped": int(flipped.sum()),
           "evident": int(evident.sum()), "flipped_evident": int(flipped[evident].sum()),
           "prior_refitted": bool(net.refitted), "noisy": noisy, "budgets": {}}
    for b in budgets:
        flags = floored_flags(order, round(b * n), score, net.t >= MIN_EVIDENCE)
        random_rows = np.random.default_rng(10_000 + seed).choice(n, len(flags), replace=False)
        out["budgets"][b] = {"flags": len(flags), "flipped_in_flags": int(flipped[flags].sum()),
                             "minus flags": accuracy(flags), "minus random": accuracy(random_rows)}
    return out


def budget_rows(runs: list[dict]) -> list[str]:
    """Markdown rows, one per budget the runs share: flags (flipped) and the paired 95% CIs."""
    lines = []
    for b in sorted(set.intersection(*(set(r["budgets"]) for r in runs))):
        fixed = [r["budgets"][b]["minus flags"] for r in runs]
        a = paired_ci(fixed, [r["noisy"] for r in runs])
        c = paired_ci(fixed, [r["budgets"][b]["minus random"] for r in runs])
        flags = np.mean([r["budgets"][b]["flags"] for r in runs])
        hit = np.mean([r["budgets"][b]["flipped_in_flags"] for r in runs])
        lines.append(f"| {b:.0%} | {flags:.0f} ({hit:.0f}) | {a.mean:+.4f} [{a.low:+.4f}, {a.high:+.4f}] | "
                     f"{c.mean:+.4f} [{c.low:+.4f}, {c.high:+.4f}] |")
    return lines


def summary(results: Path) -> None:
    """One table per (dataset, noise) from the JSONs ``--results`` wrote."""
    groups: dict[tuple[str, str], list[dict]] = {}
    for path in sorted(results.glob("flag_budget-*.json")):
        r = json.loads(path.read_text())
        r["budgets"] = {float(b): v for b, v in r["budgets"].items()}
        groups.setdefault((r["dataset"], r["noise"]), []).append(r)
    for (dataset, mode), runs in sorted(groups.items()):
        runs.sort(key=lambda r: r["seed"])
        n = runs[0]["train_rows"]
        print(f"\n{dataset}, {mode} noise {NOISE[mode]:.0%}, {len(runs)} seeds "
              f"({', '.join(str(r['seed']) for r in runs)}): {np.mean([r['flipped'] for r in runs]) / n:.1%} of "
              f"{n} rows flipped, {np.mean([r['evident'] for r in runs]) / n:.1%} clear t >= {MIN_EVIDENCE:g}\n")
        print("| budget | flags (flipped) | − noisy: mean [95% CI] | − random: mean [95% CI] |\n|---|---|---|---|")
        print("\n".join(budget_rows(runs)))


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--dataset", default="fashion-mnist", choices=list(SETUPS))
    ap.add_argument("--noise-mode", default="class-conditional", choices=list(NOISE))
    ap.add_argument("--results", type=Path, help="write one JSON per seed here")
    ap.add_argument("--summary", type=Path, help="print the tables of the JSONs in this folder and stop")
    ap.add_argument("--seeds", type=int, nargs="+", default=[0, 1, 2, 3, 4, 5])
    ap.add_argument("--budgets", type=float, nargs="+", default=[0.1, 0.15, 0.2])
    args = ap.parse_args()
    if args.summary is not None:
        summary(args.summary)
        return
    runs = []
    with tempfile.TemporaryDirectory() as tmp:
        for seed in args.seeds:
            runs.append(run(args.dataset, args.noise_mode, seed, args.budgets, Path(tmp)))
            r = runs[-1]
            if args.results is not None:
                args.results.mkdir(parents=True, exist_ok=True)
                name = f"flag_budget-{args.dataset}-{args.noise_mode}-{seed}.json"
                (args.results / name).write_text(json.dumps(r, indent=1))
            print(f"seed {seed}: {r['flipped']} flipped, {r['evident']} rows clear t >= {MIN_EVIDENCE:g} "
                  f"({r['flipped_evident']} flipped), noisy {r['noisy']:.4f}, " + "; ".join(
                f"{b}: {v['flags']} flags ({v['flipped_in_flags']} flipped) {v['minus flags']:.4f} "
                f"random {v['minus random']:.4f}" for b, v in r["budgets"].items()), flush=True)
    print(f"\n{args.dataset}, {args.noise_mode} noise {NOISE[args.noise_mode]:.0%}, {len(runs)} seeds "
          f"({', '.join(str(r['seed']) for r in runs)}), {np.mean([r['flipped'] for r in runs]):.0f} flipped rows\n")
    print("| budget | flags (flipped) | − noisy: mean [95% CI] | − random: mean [95% CI] |\n|---|---|---|---|")
    print("\n".join(budget_rows(runs)))


if __name__ == "__main__":
    main()
