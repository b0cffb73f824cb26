"""Batched per-sample gradients (torch.func vmap over grad) vs a per-example autograd loop.

Same model, same rows, both timed in one run, alternating, median of repeats; prints a
markdown table for docs/BENCHMARKS.md.

    python benchmarks/per_sample_gradients.py [--rows 1024] [--text-rows 128] [--repeats 5]
"""
from __future__ import annotations

import argparse
import platform
import statistics
import time

import torch
from sklearn.datasets import load_digits

from fastif_engine.data.batching import take
from fastif_engine.data.datasets import export
from fastif_engine.data.tables import load_dataset
from fastif_engine.influence.gradients import gradient_matrix
from fastif_engine.models import CNNAdapter, LogisticRegressionAdapter, MLPAdapter
from fastif_engine.models.training import TrainSettings


def loop_gradients(adapter, x, y):
    named = dict(adapter.model.named_parameters())
    params = [named[n] for n in adapter.parameter_names()]
    out = []
    for i in range(len(y)):
        loss = adapter.loss(adapter.model(adapter.trim_batch(take(x, slice(i, i + 1)))), y[i:i + 1]).sum()
        out.append(torch.cat([g.reshape(-1) for g in torch.autograd.grad(loss, params)]))
    return torch.stack(out)


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--rows", type=int, default=1024)
    ap.add_argument("--text-rows", type=int, default=128)
    ap.add_argument("--repeats", type=int, default=5)
    args = ap.parse_args()
    xd, yd = load_digits(return_X_y=True)
    x = torch.tensor(xd[: args.rows], dtype=torch.float32)
    y = torch.tensor(yd[: args.rows])
    images = x.reshape(-1, 1, 8, 8) / 16.0
    one_epoch = TrainSettings(epochs=1)
    cases = [
        ("tabular-logreg", LogisticRegressionAdapter(64, 10), x, y, 256),
        ("tabular-mlp, 1×256", MLPAdapter(64, 10, hidden=256), x, y, 256),
        ("image-cnn (top: fc + head)", CNNAdapter(8, 10, settings=one_epoch), images, y, 256),
    ]
    try:
        import tempfile

        from fastif_engine.models.text import MiniLMAdapter

        with tempfile.TemporaryDirectory() as tmp:
            ds = load_dataset({k: str(v) for k, v in export("rotten-tomatoes", tmp, max_train=args.text_rows).items()
                               if k != "test"})
        text = MiniLMAdapter(2, settings=TrainSettings(epochs=1, batch_size=32))
        cases.append(("text-minilm (top layer + head)", text, text.prepare(ds.splits["train"].values),
                      torch.as_tensor(ds.splits["train"].labels), 16))
    except Exception as exc:  # the text model needs its package; the rest still runs
        print(f"(text-minilm skipped: {exc})")
    print(f"machine: {platform.machine()}, {torch.get_num_threads()} torch threads, torch {torch.__version__}")
    print(f"repeats: {args.repeats}, alternating, median\n")
    print("| model | differentiated params | rows | per-example loop (s) | batched vmap (s) | speed-up |")
    print("|---|---|---|---|---|---|")
    for name, adapter, inputs, labels, chunk in cases:
        adapter.fit(inputs, labels)
        few = take(inputs, slice(0, 8))
        torch.testing.assert_close(gradient_matrix(adapter, few, labels[:8]), loop_gradients(adapter, few, labels[:8]),
                                   rtol=1e-3, atol=1e-5)
        loop_t, vmap_t = [], []
        for _ in range(args.repeats):
            t0 = time.perf_counter(); loop_gradients(adapter, inputs, labels); loop_t.append(time.perf_counter() - t0)
            t0 = time.perf_counter(); gradient_matrix(adapter, inputs, labels, chunk_size=chunk)
            vmap_t.append(time.perf_counter() - t0)
        lm, vm = statistics.median(loop_t), statistics.median(vmap_t)
        n_params = sum(dict(adapter.model.named_parameters())[n].numel() for n in adapter.parameter_names())
        print(f"| {name} | {n_params:,} | {len(labels)} | {lm:.3f} | {vm:.4f} | {lm / vm:.1f}× |", flush=True)


if __name__ == "__main__":
    main()
