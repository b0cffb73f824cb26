"""Does a larger flag budget pay where more rows are flipped than the budget holds?

    python benchmarks/flag_budget.py [--dataset fashion-mnist] [--seeds 0 1 2 3 4 5] [--budgets 0.1 0.15 0.2]

The same setting as ``cleaning.py`` (30% class-conditional noise, its model, k, solver and seed
per noise seed). The default flags (``combined`` with net harm's prior chosen as the product does,
net-harm t ≥ 2) are taken at each budget (the top share of rows, a ceiling), removed, and the
model refitted (seed = noise seed); a random removal of as many rows is the control. Printed:
per budget, flags (flipped among them) and the paired 95% CIs over seeds of the accuracy
change against the noisy data and against the random removal.
"""
from __future__ import annotations

import argparse
import tempfile
from pathlib import Path

import numpy as np
import torch

from cleaning import MIN_EVIDENCE, NOISE, SETUPS, build, floored_flags
from fastif_engine.api import FastIF
from fastif_engine.batching import take
from fastif_engine.data import load_dataset
from fastif_engine.datasets import export
from fastif_engine.net_harm import net_harm
from fastif_engine.ranking import rank_fusion
from fastif_engine.solvers import LissaSettings
from fastif_engine.training import evaluate
from fastif_engine.verdict import paired_ci


def run(dataset: str, seed: int, budgets: list[float], workdir: Path) -> dict:
    mode = "class-conditional"
    model_name, max_train, k, solver_name, lissa = SETUPS[dataset]
    lissa = LissaSettings(**{**lissa.__dict__, "seed": seed})
    paths = export(dataset, workdir / f"{dataset}-{seed}", noise=NOISE[mode], noise_mode=mode, seed=seed,
                   max_train=max_train)
    ds = load_dataset({s: str(p) for s, p in paths.items()})
    flipped = ds.splits["train"].extra["noisy"].to_numpy().astype(bool)
    model, x = build(model_name, ds)
    y = {s: torch.as_tensor(ds.splits[s].labels) for s in ds.splits}
    n = len(y["train"])

    def accuracy(drop: np.ndarray | None = None) -> float:
        keep = torch.as_tensor(np.setdiff1d(np.arange(n), drop) if drop is not None else np.arange(n))
        model.fit(take(x["train"], keep), y["train"][keep], seed=seed)
        return evaluate(model, x["test"], y["test"]).accuracy

    noisy = accuracy()  # also the model the scores are taken on
    fi = FastIF(model, x["train"], y["train"], solver=solver_name, lissa=lissa, k=min(k, n))
    net = net_harm(model, x["train"], y["train"], x["valid"], y["valid"], fi.solver, seed=seed, chunk_size=64,
                   flat=fi.flat, prior="auto", evidence=MIN_EVIDENCE)
    losses = evaluate(model, x["train"], y["train"]).losses
    score = rank_fusion(net.score, losses)
    order = np.lexsort((np.arange(n), -score))
    out = {"seed": seed, "flipped": int(flipped.sum()), "noisy": noisy, "budgets": {}}
    for b in budgets:
        flags = floored_flags(order, round(b * n), score, net.t >= MIN_EVIDENCE)
        random_rows = np.random.default_rng(10_000 + seed).choice(n, len(flags), replace=False)
        out["budgets"][b] = {"flags": len(flags), "flipped_in_flags": int(flipped[flags].sum()),
                             "minus flags": accuracy(flags), "minus random": accuracy(random_rows)}
    return out


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--dataset", default="fashion-mnist", choices=list(SETUPS))
    ap.add_argument("--seeds", type=int, nargs="+", default=[0, 1, 2, 3, 4, 5])
    ap.add_argument("--budgets", type=float, nargs="+", default=[0.1, 0.15, 0.2])
    args = ap.parse_args()
    runs = []
    with tempfile.TemporaryDirectory() as tmp:
        for seed in args.seeds:
            runs.append(run(args.dataset, seed, args.budgets, Path(tmp)))
            r = runs[-1]
            print(f"seed {seed}: {r['flipped']} flipped, noisy {r['noisy']:.4f}, " + "; ".join(
                f"{b}: {v['flags']} flags ({v['flipped_in_flags']} flipped) {v['minus flags']:.4f} "
                f"random {v['minus random']:.4f}" for b, v in r["budgets"].items()), flush=True)
    print(f"\n{args.dataset}, class-conditional noise {NOISE['class-conditional']:.0%}, {len(runs)} seeds "
          f"({', '.join(str(r['seed']) for r in runs)}), {np.mean([r['flipped'] for r in runs]):.0f} flipped rows\n")
    print("| budget | flags (flipped) | − noisy: mean [95% CI] | − random: mean [95% CI] |\n|---|---|---|---|")
    for b in args.budgets:
        fixed = [r["budgets"][b]["minus flags"] for r in runs]
        a = paired_ci(fixed, [r["noisy"] for r in runs])
        c = paired_ci(fixed, [r["budgets"][b]["minus random"] for r in runs])
        flags = np.mean([r["budgets"][b]["flags"] for r in runs])
        hit = np.mean([r["budgets"][b]["flipped_in_flags"] for r in runs])
        print(f"| {b:.0%} | {flags:.0f} ({hit:.0f}) | {a.mean:+.4f} [{a.low:+.4f}, {a.high:+.4f}] | "
              f"{c.mean:+.4f} [{c.low:+.4f}, {c.high:+.4f}] |")


if __name__ == "__main__":
    main()
