"""Batched per-sample gradients (torch.func vmap over grad) vs a per-example autograd loop.

Same model, same rows, both timed in one run, alternating, median of repeats; prints a
markdown table for docs/BENCHMARKS.md.

    python benchmarks/per_sample_gradients.py [--rows 1024] [--repeats 5]
"""
from __future__ import annotations

import argparse
import platform
import statistics
import time

import torch
from sklearn.datasets import load_digits

from fastif_engine.gradients import gradient_matrix
from fastif_engine.models import LogisticRegressionAdapter, MLPAdapter


def loop_gradients(adapter, x, y):
    params = [p for p in adapter.model.parameters() if p.requires_grad]
    out = []
    for i in range(len(y)):
        loss = adapter.loss(adapter.model(x[i:i + 1]), y[i:i + 1]).sum()
        out.append(torch.cat([g.reshape(-1) for g in torch.autograd.grad(loss, params)]))
    return torch.stack(out)


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--rows", type=int, default=1024)
    ap.add_argument("--repeats", type=int, default=5)
    args = ap.parse_args()
    x, y = load_digits(return_X_y=True)
    x = torch.tensor(x[: args.rows], dtype=torch.float32)
    y = torch.tensor(y[: args.rows])
    models = {
        "tabular-logreg (650 params)": LogisticRegressionAdapter(64, 10),
        "tabular-mlp, 1×256 (19.2k params)": MLPAdapter(64, 10, hidden=256),
    }
    print(f"machine: {platform.machine()}, {torch.get_num_threads()} torch threads, torch {torch.__version__}")
    print(f"rows: {len(y)}, repeats: {args.repeats} (median)\n")
    print("| model | per-example loop (s) | batched vmap (s) | speed-up |")
    print("|---|---|---|---|")
    for name, adapter in models.items():
        adapter.fit(x, y)
        torch.testing.assert_close(gradient_matrix(adapter, x[:64], y[:64]), loop_gradients(adapter, x[:64], y[:64]))
        loop_t, vmap_t = [], []
        for _ in range(args.repeats):
            t0 = time.perf_counter(); loop_gradients(adapter, x, y); loop_t.append(time.perf_counter() - t0)
            t0 = time.perf_counter(); gradient_matrix(adapter, x, y, chunk_size=256); vmap_t.append(time.perf_counter() - t0)
        lm, vm = statistics.median(loop_t), statistics.median(vmap_t)
        print(f"| {name} | {lm:.3f} | {vm:.4f} | {lm / vm:.1f}× |")


if __name__ == "__main__":
    main()
