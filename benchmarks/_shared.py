"""Small helpers the benchmark scripts share (run them from the repository root)."""
from __future__ import annotations

import os
import time
from pathlib import Path

import numpy as np
import torch

from fastif_engine.data.batching import take
from fastif_engine.models import DataInfo, create_model


def model_for(model_name: str, ds):
    """A fresh built-in model for dataset ``ds`` and a function split name → prepared inputs.

    Tabular models on image data see the pixels as flat feature columns.
    """
    flatten = model_name.startswith("tabular") and ds.modality == "image"
    shape = (int(np.prod(ds.input_shape)),) if flatten else ds.input_shape
    model = create_model(model_name, DataInfo("tabular" if flatten else ds.modality, ds.n_classes, shape))

    def inputs(split: str):
        values = ds.splits[split].values
        return model.prepare(values.reshape(len(values), -1) if flatten else values)

    return model, inputs


def log_log_axes(figsize=(5.5, 3.5)):
    """A matplotlib figure (headless backend) with one log-log axis."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=figsize)
    ax.set_xscale("log")
    ax.set_yscale("log")
    return fig, ax


def save_figure(fig, path: Path) -> None:
    fig.tight_layout()
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path, dpi=110)


def loop_influence(model, x, y, s: torch.Tensor, rows: np.ndarray) -> np.ndarray:
    """The original algorithm's inner loop: one autograd call per training row, dotted with s_test."""
    named = dict(model.model.named_parameters())
    params = [named[n] for n in model.parameter_names()]
    out = np.empty(len(rows))
    for i, r in enumerate(rows):
        xi = model.trim_batch(take(x, slice(int(r), int(r) + 1)))
        loss = model.loss(model.model(xi), y[r:r + 1]).sum()
        g = torch.cat([t.reshape(-1) for t in torch.autograd.grad(loss, params)])
        out[i] = -float(g @ s)
    return out


def reference_cg(adapter, x, y, *, ridge: float, flat, tolerance: float, max_iterations: int = 500):
    """A high-accuracy reference solver: CG on the full-data damped Hessian to ``tolerance``,
    preconditioned by ``auto``'s low-rank candidate (its top eigenpairs on a sample of rows)."""
    from fastif_engine.influence.krylov import CgSolver, LowRankSolver
    from fastif_engine.influence.planning import AUTO_RANK, auto_sample_rows

    top = LowRankSolver(adapter, x, y, ridge=ridge, rank=AUTO_RANK, flat=flat, rows=auto_sample_rows(len(y)),
                        iterations=3 * AUTO_RANK)
    return CgSolver(adapter, x, y, ridge=ridge, flat=flat, tolerance=tolerance, max_iterations=max_iterations,
                    preconditioner=top)


def ridge_damping(adapter, flat, x, y, scale: float, damping: float | None = None) -> float:
    """The damping d (λ = d × ``scale``) a benchmark runs at: ``damping`` when given (the rule up to
    0.3.3), else the product's default ridge (``solvers.default_damping``: RIDGE_OF_TOP × the
    Hessian's sampled top eigenvalue)."""
    if damping is not None:
        return damping
    from fastif_engine.influence.hessian import spectrum
    from fastif_engine.influence.solvers import default_damping
    return default_damping(spectrum(adapter, flat, x, y).largest, scale)


def add_ridge_options(parser) -> None:
    """``--damping``, read by :func:`ridge_damping`."""
    parser.add_argument("--damping", type=float,
                        help="d: λ = d × the estimated scale (the rule up to 0.3.3; default: the product's ridge)")


def timed(fn):
    t0 = time.perf_counter()
    out = fn()
    return out, time.perf_counter() - t0


def results_dir() -> Path:
    """``benchmarks/results`` (the latest result per headline), or ``$FASTIF_BENCHMARK_RESULTS`` (the
    suite's quick runs write there, so they never replace a headline's result)."""
    return Path(os.environ.get("FASTIF_BENCHMARK_RESULTS") or Path(__file__).resolve().parent / "results")
