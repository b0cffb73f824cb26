"""Do a run's flags hold up under a high-accuracy solve? Re-flag a finished run with long LiSSA, or CG.

    python benchmarks/studies/reference_flags.py --run runs/demo [--depth 1000] [--batch-size 16] [--repeats 2]
    python benchmarks/studies/reference_flags.py --run runs/demo --solver cg [--tolerance 1e-4]

Loads the run's trained model and inputs from its stage cache, recomputes net harm (one s_test per
validation fold) with the given LiSSA settings, or with conjugate gradient on the full-data damped
Hessian to a relative residual of ``--tolerance`` (preconditioned by its top eigenpairs), at the
run's own ridge, re-ranks by the run's flag
score with the run's budget and evidence floor, and compares the two flag sets. The run's own-loss
column is reused (it does not depend on the solver).
"""
from __future__ import annotations

import argparse
import json
import time
from pathlib import Path

import numpy as np
import pandas as pd
import torch

from fastif_engine.cleaning.flagging import FLAG_SCORES, rank_and_flag, rank_fusion
from fastif_engine.cleaning.stages import load_adapter
from fastif_engine.cleaning.worker_state import _split_tensors
from fastif_engine.config import CleanConfig
from fastif_engine.influence.gradients import FlatParams
from fastif_engine.influence.net_harm import net_harm
from fastif_engine.influence.solvers import LissaSettings, LissaSolver

import _path  # noqa: F401  (benchmarks/ on the path)
from _shared import reference_cg


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--run", type=Path, required=True)
    ap.add_argument("--depth", type=int, default=1000)
    ap.add_argument("--batch-size", type=int, default=16)
    ap.add_argument("--repeats", type=int, default=2)
    ap.add_argument("--solver", choices=("lissa", "cg"), default="lissa")
    ap.add_argument("--tolerance", type=float, default=1e-4, help="CG's relative residual")
    args = ap.parse_args()
    metrics = json.loads((args.run / "metrics.json").read_text())
    cfg = CleanConfig(**metrics["config"])
    if cfg.flag_by not in ("combined", "net-harm"):
        raise SystemExit(f"the run flags by {cfg.flag_by}, which does not depend on net harm")
    cache = args.run / ".fastif-cache"
    newest = lambda pattern: str(max(cache.glob(pattern), key=lambda p: p.stat().st_mtime))  # noqa: E731
    dataset, inputs, model = newest("dataset-*.npz"), newest("inputs-*.safetensors"), newest("model-*.pt")
    adapter = load_adapter(cfg, dataset, model)
    (x, y), (xv, yv) = _split_tensors(inputs, "train"), _split_tensors(inputs, "valid")
    flat = FlatParams.of(adapter)
    solver = metrics["solver"]
    settings = LissaSettings(depth=args.depth, batch_size=args.batch_size, repeats=args.repeats,
                             damping=solver["damping"], scale=solver["scale"], seed=cfg.seed + 1)
    t0 = time.perf_counter()
    if args.solver == "cg":
        reference = reference_cg(adapter, x, y, ridge=settings.ridge, flat=flat, tolerance=args.tolerance,
                                 max_iterations=200)
        described = f"CG to a relative residual of {args.tolerance:g}"
    else:
        reference = LissaSolver(adapter, x, y, settings, flat=flat)
        described = f"LiSSA depth {args.depth}, batch {args.batch_size}, repeats {args.repeats}"
    net = net_harm(adapter, x, y, xv, yv, reference, seed=cfg.seed, flat=flat)
    seconds = time.perf_counter() - t0
    if args.solver == "cg":
        described += f" ({max(reference.iterations_used)} iterations, reached {float(reference.residuals.max()):.1e})"
    flags = pd.read_parquet(args.run / "flags.parquet")
    scores = pd.DataFrame({"net_harm": net.score, "net_harm_t": net.t, "train_loss": flags["train_loss"].to_numpy()})
    scores["combined_score"] = rank_fusion(net.score, scores["train_loss"].to_numpy())
    ref = rank_and_flag(scores, cfg.flag_rule(), by=FLAG_SCORES[cfg.flag_by],
                        evidence="net_harm_t" if cfg.flag_evidence > 0 else None, min_evidence=cfg.flag_evidence)
    run_flags, ref_flags = set(np.flatnonzero(flags["flagged"])), set(np.flatnonzero(ref["flagged"]))
    both = len(run_flags & ref_flags)
    print(f"run {args.run}: solver {solver['name']} (depth {solver.get('depth')}, batch {solver.get('batch_size')}, "
          f"repeats {solver.get('repeats')}), ridge {solver['ridge']:.4g}")
    print(f"reference: {described} (net harm in {seconds:.0f} s)")
    print(f"net harm Pearson, run vs reference: {np.corrcoef(flags['net_harm'], net.score)[0, 1]:.4f}")
    print(f"flags: run {len(run_flags)}, reference {len(ref_flags)}, both {both}; "
          f"share of the reference's flags the run has: {both / max(len(ref_flags), 1):.3f}; "
          f"Jaccard {both / max(len(run_flags | ref_flags), 1):.3f}")
    if "noisy" in flags:
        noisy = flags["noisy"].to_numpy()
        print(f"flipped among flags: run {noisy[list(run_flags)].sum()}, reference {noisy[list(ref_flags)].sum()}")


if __name__ == "__main__":
    torch.manual_seed(0)
    main()
