"""LiSSA against the exact damped inverse: error and time as depth J, batch B and repeats T vary.

    python benchmarks/studies/lissa_study.py [--plot docs/img/lissa.png]

image-cnn on digits (influence over fc + head: small enough for the explicit Hessian), 8
misclassified test examples, one ridge λ = damping × scale for every solver (scale estimated
once for B = 1). Reported per setting: median relative error ‖s − s*‖/‖s*‖ and cosine over the
8 examples, Pearson of influence over all training rows, and the solve time.
"""
from __future__ import annotations

import argparse
import platform
import time
from pathlib import Path

import numpy as np
import torch
from sklearn.datasets import load_digits

from fastif_engine.data.batching import take
from fastif_engine.influence.gradients import FlatParams, gradient_matrix
from fastif_engine.influence.scores import influence_on_candidates
from fastif_engine.influence.solvers import ExactSolver, LissaSettings, LissaSolver, auto_scale
from fastif_engine.models import CNNAdapter

DAMPING = 0.01
GRID = ([("J", j, dict(depth=j)) for j in (10, 30, 100, 300, 1000)]
        + [("B", b, dict(depth=300, batch_size=b)) for b in (4, 16, 64)]
        + [("T", t, dict(depth=300, repeats=t)) for t in (2, 4, 8)])


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--plot", type=Path, default=Path("docs/img/lissa.png"))
    args = ap.parse_args()
    print(f"machine: {platform.machine()}, {torch.get_num_threads()} torch threads, torch {torch.__version__}")
    xd, yd = load_digits(return_X_y=True)
    x = torch.tensor(xd, dtype=torch.float32).reshape(-1, 1, 8, 8) / 16.0
    y = torch.tensor(yd)
    xtr, ytr, xte, yte = x[:1200], y[:1200], x[1200:], y[1200:]
    model = CNNAdapter(8, 10).fit(xtr, ytr, seed=0)
    wrong = (model.predict(xte) != yte).nonzero().ravel()[:8]
    flat = FlatParams.of(model)
    v = gradient_matrix(model, take(xte, wrong), yte[wrong])
    scale = auto_scale(model, flat, xtr, ytr, batch_size=1)
    ridge = DAMPING * scale
    t0 = time.perf_counter()
    exact = ExactSolver(model, xtr, ytr, ridge=ridge)
    s_star = exact.solve(v)
    t_exact = time.perf_counter() - t0
    inf_star = influence_on_candidates(model, xtr, ytr, s_star).as_matrix(len(wrong), len(ytr))
    print(f"{flat.size:,} parameters, {len(ytr)} training rows, {len(wrong)} test errors; scale {scale:.4g}, "
          f"λ = {ridge:.4g}; exact solve (Hessian + Cholesky) {t_exact:.1f} s\n")
    print("| varied | J | B | T | rel. error (median) | cosine (min) | influence Pearson (min) | time (s) |")
    print("|---|---|---|---|---|---|---|---|")
    results = []
    for knob, value, change in GRID:
        st = LissaSettings(**{"damping": DAMPING, "scale": scale, **change})
        t0 = time.perf_counter()
        s = LissaSolver(model, xtr, ytr, st).solve(v)
        seconds = time.perf_counter() - t0
        rel = ((s - s_star).norm(dim=1) / s_star.norm(dim=1)).numpy()
        cos = torch.nn.functional.cosine_similarity(s, s_star).numpy()
        inf = influence_on_candidates(model, xtr, ytr, s).as_matrix(len(wrong), len(ytr))
        pear = [np.corrcoef(a, b)[0, 1] for a, b in zip(inf, inf_star)]
        results.append((knob, value, float(np.median(rel)), seconds))
        print(f"| {knob} | {st.depth} | {st.batch_size} | {st.repeats} | {np.median(rel):.3f} | {cos.min():.4f} | "
              f"{min(pear):.4f} | {seconds:.2f} |", flush=True)
    plot(results, args.plot)


def plot(results, path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, axes = plt.subplots(1, 3, figsize=(11, 3.2))
    titles = {"J": "depth J (B=1, T=1)", "B": "batch B (J=300, T=1)", "T": "repeats T (J=300, B=1)"}
    for ax, (knob, title) in zip(axes, titles.items()):
        pts = [(val, err, sec) for k, val, err, sec in results if k == knob]
        if knob != "J":  # the J=300, B=1, T=1 run is the first point of the B and T curves
            ref = [(1, err, sec) for k, val, err, sec in results if k == "J" and val == 300]
            pts = ref + pts
        vals, errs, secs = zip(*pts)
        ax.plot(vals, errs, "o-")
        ax.set_xscale("log")
        ax.set_yscale("log")
        ax.set_title(title, fontsize=9)
        ax.set_ylabel("relative error vs exact")
        for val, err, sec in pts:
            ax.annotate(f"{sec:.1f}s", (val, err), fontsize=7, textcoords="offset points", xytext=(3, 3))
    fig.tight_layout()
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path, dpi=110)


if __name__ == "__main__":
    main()
