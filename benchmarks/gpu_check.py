"""GPU paths against CPU results, and their timings, in one short run (for a machine with a GPU).

    python benchmarks/gpu_check.py [--rows 4096]

Checks, each on the same trained weights on both devices:
  * per-sample gradients (image-cnn top layers, and text-minilm's top layer when its encoder
    package is installed): max relative difference, CPU and GPU seconds;
  * a block of Hessian-vector products and a LiSSA s_test (same seed, same minibatches);
  * influence over candidates;
  * the faiss index: flat on GPU vs CPU (identical neighbours expected up to ties), IVF recall.
Exits 0 with a message when no GPU is visible, so it is safe to run anywhere.
"""
from __future__ import annotations

import argparse
import copy
import platform
import statistics
import time

import numpy as np
import torch


def timed(fn, repeats: int = 3):
    out, times = None, []
    for _ in range(repeats):
        if torch.cuda.is_available():
            torch.cuda.synchronize()
        t0 = time.perf_counter()
        out = fn()
        if torch.cuda.is_available():
            torch.cuda.synchronize()
        times.append(time.perf_counter() - t0)
    return out, statistics.median(times)


def rel(a: torch.Tensor, b: torch.Tensor) -> float:
    return float((a.double().cpu() - b.double().cpu()).norm() / b.double().cpu().norm().clamp_min(1e-30))


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--rows", type=int, default=4096)
    args = ap.parse_args()
    if not torch.cuda.is_available():
        print("no GPU visible to torch: nothing to check")
        return
    from fastif_engine.influence.gradients import FlatParams, gradient_matrix
    from fastif_engine.influence.hessian import hvp_on_batch
    from fastif_engine.influence.knn import FaissIndex, gpu_count, recall_at_k
    from fastif_engine.influence.scores import influence_on_candidates
    from fastif_engine.influence.solvers import LissaSettings, LissaSolver
    from fastif_engine.models import CNNAdapter

    print(f"machine: {platform.machine()}, {torch.cuda.get_device_name(0)}, torch {torch.__version__}, "
          f"faiss GPUs: {gpu_count()}")
    gen = torch.Generator().manual_seed(0)
    x = torch.rand(args.rows, 1, 28, 28, generator=gen)
    y = torch.randint(0, 10, (args.rows,), generator=gen)
    cpu = CNNAdapter(28, 10).fit(x[:1024], y[:1024], seed=0)
    gpu = copy.deepcopy(cpu).to("cuda")
    print("| check | CPU (s) | GPU (s) | speed-up | max relative difference |\n|---|---|---|---|---|")

    def row(name, f_cpu, f_gpu):
        a, tc = timed(f_cpu)
        b, tg = timed(f_gpu)
        print(f"| {name} | {tc:.3f} | {tg:.3f} | {tc / tg:.1f}× | {rel(b, a):.2e} |", flush=True)
        return a, b

    g_cpu, _ = row(f"per-sample gradients, image-cnn top, {args.rows} rows",
                   lambda: gradient_matrix(cpu, x, y, chunk_size=512), lambda: gradient_matrix(gpu, x, y, chunk_size=512))
    v = g_cpu[:16]
    flat_c, flat_g = FlatParams.of(cpu), FlatParams.of(gpu)
    row("HVPs, 16 vectors, batch 128", lambda: hvp_on_batch(cpu, flat_c, x[:128], y[:128], v),
        lambda: hvp_on_batch(gpu, flat_g, x[:128], y[:128], v.cuda()))
    st = LissaSettings(depth=200, batch_size=8, damping=0.01, scale=50.0, seed=1)
    s_c, s_g = row("LiSSA s_test, 16 vectors, J=200, B=8", lambda: LissaSolver(cpu, x, y, st).solve(v),
                   lambda: LissaSolver(gpu, x, y, st).solve(v.cuda()))
    cand = np.random.default_rng(0).choice(args.rows, (16, 512))
    row("influence, 16 tests × 512 candidates",
        lambda: torch.as_tensor(influence_on_candidates(cpu, x, y, s_c, cand).influence),
        lambda: torch.as_tensor(influence_on_candidates(gpu, x, y, s_g, cand).influence))
    try:
        from fastif_engine.models.text import MiniLMAdapter

        texts = [f"a {'very ' * (i % 7)}good film number {i}" for i in range(256)]
        text = MiniLMAdapter(2)
        xt, yt = text.prepare(texts), torch.tensor([i % 2 for i in range(256)])
        text.fit(xt, yt, seed=0)
        text_g = copy.deepcopy(text).to("cuda")
        row("per-sample gradients, text-minilm top layer, 256 rows",
            lambda: gradient_matrix(text, xt, yt, chunk_size=16), lambda: gradient_matrix(text_g, xt, yt, chunk_size=32))
    except ImportError as exc:
        print(f"(text-minilm skipped: {exc})")

    feats = np.random.default_rng(0).normal(size=(200_000, 64)).astype(np.float32)
    q = feats[:1000] + 0.01
    for kind in ("flat", "ivf"):
        (dc, ic), tc = timed(lambda: FaissIndex(kind, use_gpu=False).build(feats).search(q, 100), 1)
        (dg, ig), tg = timed(lambda: FaissIndex(kind, use_gpu=True).build(feats).search(q, 100), 1)
        print(f"| faiss {kind}: build + 1,000 queries × k=100 | {tc:.2f} | {tg:.2f} | {tc / tg:.1f}× | "
              f"recall of GPU vs CPU neighbours {recall_at_k(ig, ic):.4f} |", flush=True)


if __name__ == "__main__":
    main()
