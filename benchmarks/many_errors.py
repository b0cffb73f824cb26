"""All misclassified validation examples at once vs one at a time, as errors and k grow.

    python benchmarks/many_errors.py [--max-train 20000] [--repeats 3] [--plot docs/img/many_errors.png]

image-cnn on Fashion-MNIST (a seeded subset of the training images), LiSSA J = 100, B = 1,
T = 1, fixed scale. *Together*: one LiSSA run for the block of m test gradients (vmapped
HVPs), then ``influence_on_candidates`` for all m (every distinct candidate's gradient once,
dotted with all m s_test vectors; forward mode where candidates are hardly shared): what
``fastif clean`` does. *One at a time*: the same two steps per error. Both give the
same scores (checked); reported: median seconds over the repeats, distinct candidates,
candidate pairs.
"""
from __future__ import annotations

import argparse
import platform
import statistics
import tempfile
import time
from pathlib import Path

import numpy as np
import torch

from fastif_engine.data.batching import take
from fastif_engine.data.datasets import export
from fastif_engine.data.tables import load_dataset
from fastif_engine.influence.api import extract_features
from fastif_engine.influence.gradients import FlatParams, gradient_matrix
from fastif_engine.influence.knn import FaissIndex
from fastif_engine.influence.scores import influence_on_candidates
from fastif_engine.influence.solvers import LissaSettings, LissaSolver, auto_scale
from fastif_engine.models import DataInfo, create_model

from _shared import log_log_axes, save_figure


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--max-train", type=int, default=20_000)
    ap.add_argument("--errors", type=int, nargs="+", default=[1, 4, 16, 64, 256])
    ap.add_argument("--k", type=int, nargs="+", default=[100, 1000])
    ap.add_argument("--repeats", type=int, default=3, help="timed repeats per row; medians are reported")
    ap.add_argument("--plot", type=Path, default=Path("docs/img/many_errors.png"))
    args = ap.parse_args()
    print(f"machine: {platform.machine()}, {torch.get_num_threads()} torch threads, torch {torch.__version__}")
    with tempfile.TemporaryDirectory() as tmp:
        ds = load_dataset({k: str(v) for k, v in export("fashion-mnist", tmp, max_train=args.max_train).items()})
    model = create_model("image-cnn", DataInfo("image", ds.n_classes, ds.input_shape))
    x, y = model.prepare(ds.splits["train"].values), torch.as_tensor(ds.splits["train"].labels)
    xv, yv = model.prepare(ds.splits["valid"].values), torch.as_tensor(ds.splits["valid"].labels)
    model.fit(x, y, seed=0)
    wrong = (model.predict(xv) != yv).nonzero().ravel()
    flat = FlatParams.of(model)
    settings = LissaSettings(depth=100, batch_size=1, damping=0.01,
                             scale=auto_scale(model, flat, x, y, batch_size=1))
    index = FaissIndex("flat")
    index.build(extract_features(model, x))
    print(f"{len(y):,} training rows, {len(wrong)} validation errors, {flat.size:,} parameters\n")
    print("| errors m | k | error × neighbour pairs | distinct candidates | together (s) | one at a time (s) | ratio |")
    print("|---|---|---|---|---|---|---|")
    curves = {}
    for k in args.k:
        for m in [e for e in args.errors if e <= len(wrong)]:
            rows = wrong[:m]
            xt, yt = take(xv, rows), yv[rows]
            _, cand = index.search(extract_features(model, xt), k)
            t_together, t_single = [], []
            for _ in range(args.repeats):  # the two methods alternate, so load changes hit both
                t0 = time.perf_counter()
                s = LissaSolver(model, x, y, settings).solve(gradient_matrix(model, xt, yt, flat=flat))
                together = influence_on_candidates(model, x, y, s, cand, chunk_size=256, flat=flat)
                t_together.append(time.perf_counter() - t0)
                t0 = time.perf_counter()
                single = []
                for i in range(m):
                    si = LissaSolver(model, x, y, settings).solve(
                        gradient_matrix(model, take(xt, slice(i, i + 1)), yt[i:i + 1], flat=flat))
                    single.append(influence_on_candidates(model, x, y, si, cand[i:i + 1], chunk_size=256,
                                                          flat=flat).influence)
                t_single.append(time.perf_counter() - t0)
            t_together, t_single = statistics.median(t_together), statistics.median(t_single)
            single = np.concatenate(single)  # float32 sums in another order: tolerance relative to the scale
            np.testing.assert_allclose(together.influence, single, rtol=1e-3, atol=1e-4 * np.abs(single).max())
            curves.setdefault(k, []).append((m, t_together, t_single))
            print(f"| {m} | {k:,} | {m * k:,} | {together.n_distinct_candidates:,} | {t_together:.2f} | "
                  f"{t_single:.2f} | {t_single / t_together:.1f}× |", flush=True)
    plot(curves, args.plot)


def plot(curves: dict, path: Path) -> None:
    fig, ax = log_log_axes((5.5, 3.5))
    for k, pts in curves.items():
        m, together, single = zip(*pts)
        ax.plot(m, together, "o-", label=f"together, k={k:,}")
        ax.plot(m, single, "s--", label=f"one at a time, k={k:,}")
    ax.set_xlabel("misclassified examples explained")
    ax.set_ylabel("seconds")
    ax.legend(fontsize=8)
    save_figure(fig, path)


if __name__ == "__main__":
    main()
