"""The seed's Table 1 where the kNN restriction can pay: N/k ≥ 100 (Fashion-MNIST, image-cnn).

    python benchmarks/table1_fashion.py [--k 500] [--depth 100] [--errors 3] [--repeats 3] [--damping d]

image-cnn (influence over fc + head: 101,066 parameters) trained once on all 55,000 Fashion-MNIST
training images (cached under ``--cache``). For each of ``--errors`` misclassified validation images,
side by side in one run, with the same LiSSA depth J, damping and scale (estimated once on single
rows, so stable for B = 128 too; λ = 0.3 × the Hessian's sampled top eigenvalue, the product's
default ridge, unless ``--damping``):

  original   LiSSA B = 128, T = 1, then one autograd call per training row over all N rows
  fast       LiSSA B = 1, T = 1, then the FAISS search and the product's scoring of the k nearest
             rows only (for one error: a forward-mode jvp along s_test, no per-row gradients)
  default    the same with fastif's default solver (``auto``) in place of LiSSA, built once for
             every error (its build time is printed apart), and its agreement with the fast row

The original row is timed once per error (minutes); the fast row ``--repeats`` times (median).
The speed-up is original / fast per error; the table gives each error and the median.
"""
from __future__ import annotations

import argparse
import platform
import statistics
from pathlib import Path

import numpy as np
import torch

from _shared import add_ridge_options, ridge_damping, loop_influence, timed
from fastif_engine.data.batching import take
from fastif_engine.data.datasets import export
from fastif_engine.data.tables import load_dataset
from fastif_engine.influence.api import extract_features
from fastif_engine.influence.gradients import FlatParams, gradient_matrix
from fastif_engine.influence.knn import FaissIndex
from fastif_engine.influence.scores import influence_on_candidates
from fastif_engine.influence.planning import make_solver
from fastif_engine.influence.solvers import LissaSettings, LissaSolver, auto_scale
from fastif_engine.models import DataInfo, create_model

ORIGINAL_B = 128


def setup(cache: Path):
    cache.mkdir(parents=True, exist_ok=True)
    paths = export("fashion-mnist", cache / "fashion-mnist", seed=0)
    ds = load_dataset({k: str(v) for k, v in paths.items()})
    model = create_model("image-cnn", DataInfo("image", ds.n_classes, ds.input_shape))
    x, y = model.prepare(ds.splits["train"].values), torch.as_tensor(ds.splits["train"].labels)
    xv, yv = model.prepare(ds.splits["valid"].values), torch.as_tensor(ds.splits["valid"].labels)
    state = cache / "fashion-cnn.pt"
    if state.exists():
        model.model.load_state_dict(torch.load(state, weights_only=True))
        model.model.eval()
    else:
        model.fit(x, y, seed=0)
        torch.save(model.model.state_dict(), state)
    return model, (x, y), (xv, yv)


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--k", type=int, default=500)
    ap.add_argument("--depth", type=int, default=100)
    ap.add_argument("--errors", type=int, default=3)
    ap.add_argument("--repeats", type=int, default=3)
    ap.add_argument("--cache", type=Path, default=Path("benchmarks/.cache"))
    add_ridge_options(ap)
    args = ap.parse_args()
    print(f"machine: {platform.machine()}, {torch.get_num_threads()} torch threads, torch {torch.__version__}")
    model, (x, y), (xv, yv) = setup(args.cache)
    n, flat = len(y), FlatParams.of(model)
    wrong = (model.predict(xv) != yv).nonzero().ravel()[:args.errors]
    scale = auto_scale(model, flat, x, y)
    damping = ridge_damping(model, flat, x, y, scale, args.damping)
    original = LissaSettings(depth=args.depth, batch_size=ORIGINAL_B, repeats=1, damping=damping, scale=scale)
    fast = LissaSettings(depth=args.depth, batch_size=1, repeats=1, damping=damping, scale=scale)
    print(f"N = {n:,} training rows, k = {args.k} (N/k = {n / args.k:.0f}), {flat.size:,} parameters, "
          f"J = {args.depth}, damping {damping:.4g}, scale {scale:.4g}\n")
    index = FaissIndex("flat").build(extract_features(model, x))
    default, t_build = timed(lambda: make_solver("auto", model, x, y, LissaSettings(damping=damping, scale=scale),
                                                 flat=flat, n_vectors=1))
    print(f"fastif's default solver (auto, same damping and scale): {type(default).__name__}, built once in "
          f"{t_build:.1f} s\n")

    print("| error | original: s_test B=128 (s) | original: loop over N (s) | original total (s) | "
          "fast: s_test B=1 (s) | fast: kNN + k scores (s) | fast total (s, median) | speed-up | "
          "default: s_test (s) | default total (s, median) | speed-up | default vs fast: Pearson |")
    print("|---|---|---|---|---|---|---|---|---|---|---|---|")
    ratios, default_ratios = [], []
    for e in wrong.tolist():
        test = take(xv, torch.tensor([e]))
        v = gradient_matrix(model, test, yv[e:e + 1], flat=flat)
        s_orig, t_s = timed(lambda: LissaSolver(model, x, y, original, flat=flat).solve(v)[0])
        _, t_g = timed(lambda: loop_influence(model, x, y, s_orig, np.arange(n)))
        fast_runs, default_runs = [], []
        for _ in range(args.repeats):
            (_, cand), t_knn = timed(lambda: index.search(extract_features(model, test), args.k))
            s_fast, t_fs = timed(lambda: LissaSolver(model, x, y, fast, flat=flat).solve(v))
            fast_scores, t_fg = timed(lambda: influence_on_candidates(model, x, y, s_fast, [cand[0]], flat=flat))
            fast_runs.append((t_fs, t_knn + t_fg))
            s_default, t_ds = timed(lambda: default.solve(v))
            default_scores, t_dg = timed(lambda: influence_on_candidates(model, x, y, s_default, [cand[0]], flat=flat))
            default_runs.append((t_ds, t_knn + t_dg))
        fs = statistics.median(r[0] for r in fast_runs)
        fg = statistics.median(r[1] for r in fast_runs)
        total = statistics.median(sum(r) for r in fast_runs)
        ratios.append((t_s + t_g) / total)
        d_total = statistics.median(sum(r) for r in default_runs)
        default_ratios.append((t_s + t_g) / d_total)
        agree = float(np.corrcoef(fast_scores.influence, default_scores.influence)[0, 1])
        print(f"| {e} | {t_s:.2f} | {t_g:.2f} | {t_s + t_g:.2f} | {fs:.3f} | {fg:.3f} | {total:.3f} | "
              f"{ratios[-1]:.0f}× | {statistics.median(r[0] for r in default_runs):.3f} | {d_total:.3f} | "
              f"{default_ratios[-1]:.0f}× | {agree:.4f} |", flush=True)
    print(f"\nmedian speed-up over {len(ratios)} errors: fast {statistics.median(ratios):.0f}×, default solver "
          f"{statistics.median(default_ratios):.0f}× (its one-off build of {t_build:.1f} s not counted)")


if __name__ == "__main__":
    main()
