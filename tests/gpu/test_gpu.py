"""The GPU paths give the CPU's answers (skipped where torch sees no CUDA device).

Each check runs the same trained weights on both devices: per-sample gradients, a block of
Hessian-vector products, a LiSSA s_test with the same seed and minibatches, influence over
candidates, the EK-FAC solver, and the faiss flat index (GPU vs CPU neighbours). Timings live in
``benchmarks/gpu_check.py``; this tier only checks agreement.
"""
import copy

import numpy as np
import pytest
import torch

pytestmark = pytest.mark.skipif(not torch.cuda.is_available(), reason="no CUDA device visible to torch")

ROWS = 1024


def relative(a: torch.Tensor, b: torch.Tensor) -> float:
    a, b = torch.as_tensor(a).double().cpu(), torch.as_tensor(b).double().cpu()
    return float((a - b).norm() / b.norm().clamp_min(1e-30))


@pytest.fixture(scope="module")
def models():
    from fastif_engine.models import CNNAdapter

    gen = torch.Generator().manual_seed(0)
    x = torch.rand(ROWS, 1, 28, 28, generator=gen)
    y = torch.randint(0, 10, (ROWS,), generator=gen)
    cpu = CNNAdapter(28, 10).fit(x, y, seed=0)
    return cpu, copy.deepcopy(cpu).to("cuda"), x, y


def test_per_sample_gradients_and_hvps_agree(models):
    from fastif_engine.influence.gradients import FlatParams, gradient_matrix
    from fastif_engine.influence.hessian import hvp_on_batch

    cpu, gpu, x, y = models
    g_cpu, g_gpu = gradient_matrix(cpu, x, y, chunk_size=256), gradient_matrix(gpu, x, y, chunk_size=256)
    assert g_gpu.device.type == "cuda" and relative(g_gpu, g_cpu) < 1e-4
    v = g_cpu[:8]
    h_cpu = hvp_on_batch(cpu, FlatParams.of(cpu), x[:128], y[:128], v)
    h_gpu = hvp_on_batch(gpu, FlatParams.of(gpu), x[:128], y[:128], v.cuda())
    assert relative(h_gpu, h_cpu) < 1e-4


def test_lissa_ekfac_and_influence_agree(models):
    from fastif_engine.influence.gradients import gradient_matrix
    from fastif_engine.influence.kfac import EkfacSolver
    from fastif_engine.influence.scores import influence_on_candidates
    from fastif_engine.influence.solvers import LissaSettings, LissaSolver

    cpu, gpu, x, y = models
    v = gradient_matrix(cpu, x[:8], y[:8])
    settings = LissaSettings(depth=100, batch_size=8, damping=0.05, scale=50.0, seed=1)
    s_cpu = LissaSolver(cpu, x, y, settings).solve(v)
    s_gpu = LissaSolver(gpu, x, y, settings).solve(v.cuda())
    assert relative(s_gpu, s_cpu) < 1e-3
    e_cpu = EkfacSolver(cpu, x, y, ridge=2.5).solve(v)
    e_gpu = EkfacSolver(gpu, x, y, ridge=2.5).solve(v.cuda())
    assert relative(e_gpu, e_cpu) < 1e-3
    candidates = np.random.default_rng(0).choice(ROWS, (8, 128))
    i_cpu = influence_on_candidates(cpu, x, y, s_cpu, candidates).influence
    i_gpu = influence_on_candidates(gpu, x, y, s_gpu, candidates).influence
    assert relative(i_gpu, i_cpu) < 1e-3


def test_faiss_gpu_flat_index_finds_the_cpu_neighbours():
    from fastif_engine.influence.knn import FaissIndex, gpu_count, recall_at_k

    if gpu_count() == 0:
        pytest.skip("faiss sees no GPU (the CPU build is installed)")
    feats = np.random.default_rng(0).normal(size=(20_000, 32)).astype(np.float32)
    queries = feats[:200] + 0.01
    _, on_cpu = FaissIndex("flat", use_gpu=False).build(feats).search(queries, 50)
    _, on_gpu = FaissIndex("flat", use_gpu=True).build(feats).search(queries, 50)
    assert recall_at_k(on_gpu, on_cpu) > 0.999
