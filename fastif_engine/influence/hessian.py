"""Hessian-vector products of the training objective, on a sampled minibatch or on all rows.

Training objective (what θ̂ minimises):  R(θ) = (1/N) Σ_i L(z_i, θ) + (l2/2) ‖θ_reg‖².
Its Hessian on a minibatch S of size B:   H_S = (1/B) Σ_{i∈S} ∇²L(z_i, θ̂) + l2 · diag(mask).
Products H_S v are forward-over-reverse (``jvp`` of ``grad``), vmapped over many v at once,
so one call serves every test example being solved together.
"""
from __future__ import annotations

from dataclasses import dataclass

import torch
from torch.func import grad, jvp, vmap

from ..adapter import ModelAdapter
from ..data.batching import Inputs, chunk_slices, n_rows, take, to_device
from .gradients import TRANSFORM_LOCK, FlatParams, loss_function


def hvp_on_batch(adapter: ModelAdapter, flat: FlatParams, inputs: Inputs, labels: torch.Tensor,
                 vectors: torch.Tensor, *, include_l2: bool = True, out: torch.Tensor | None = None) -> torch.Tensor:
    """``H_S v`` for every row ``v`` of ``vectors [m, P]``, with S = (inputs, labels).

    Many vectors: forward-over-reverse, vmapped (:func:`_many_hvps`); one vector: reverse-over-reverse
    with plain autograd (:func:`_one_hvp`), which skips the transforms' fixed cost per call.
    ``out`` (``[m, P]``, not ``vectors``) receives the result: a loop that calls this many times
    reuses one buffer instead of a fresh ``m × P`` block per call (on CPU each fresh block is
    zero-filled by the kernel page by page, which costs as much as the arithmetic at B = 1).
    """
    f = loss_function(adapter)
    x = adapter.trim_batch(to_device(inputs, adapter.device))
    y = labels.to(adapter.device)
    m = vectors.shape[0]
    with TRANSFORM_LOCK:  # also guards functional_call, which swaps the module's parameters
        parts = _one_hvp(f, flat, x, y, vectors[0]) if m == 1 else _many_hvps(f, flat, x, y, vectors)
    out = torch.cat([parts[n].reshape(m, -1) for n in flat.names], dim=1, out=out)
    if include_l2 and adapter.l2:
        out.addcmul_(flat.l2_mask, vectors, value=adapter.l2)
    return out


def _many_hvps(f, flat: FlatParams, x: Inputs, y: torch.Tensor, vectors: torch.Tensor) -> dict[str, torch.Tensor]:
    """Forward-over-reverse, vmapped over the rows of ``vectors``: one call for many vectors."""
    params = flat.as_dict()
    grad_of_mean_loss = grad(lambda p: f(p, x, y).mean())

    def one(v: torch.Tensor) -> dict[str, torch.Tensor]:
        return jvp(grad_of_mean_loss, (params,), (flat.unflatten(v),))[1]

    return vmap(one)(vectors)


def _one_hvp(f, flat: FlatParams, x: Inputs, y: torch.Tensor, v: torch.Tensor) -> dict[str, torch.Tensor]:
    """Reverse-over-reverse on the scalar ⟨∇R_S, v⟩, for a single vector: plain autograd has none of
    the transforms' per-call cost, which dominates small models and batches (image-cnn at B = 1:
    1.7 vs 7.3 ms a product; docs/BENCHMARKS.md, Table 1). With many vectors the vmapped path is
    the cheaper one on the text model, so :func:`hvp_on_batch` uses this only for one."""
    params = {n: t.detach().requires_grad_() for n, t in flat.as_dict().items()}
    leaves = list(params.values())
    with torch.enable_grad():  # callers may hold no_grad; torch.func's path ignores it too
        g = torch.autograd.grad(f(params, x, y).mean(), leaves, create_graph=True)
        dot = sum((gi * vi).sum() for gi, vi in zip(g, flat.unflatten(v).values()))
        if not dot.requires_grad:  # the gradient does not depend on θ: the Hessian is zero
            return {n: torch.zeros_like(t) for n, t in params.items()}
        hv = torch.autograd.grad(dot, leaves, allow_unused=True, materialize_grads=True)
    return dict(zip(flat.names, hv))


def full_hvp(adapter: ModelAdapter, flat: FlatParams, inputs: Inputs, labels: torch.Tensor,
             vectors: torch.Tensor, *, chunk_size: int = 512) -> torch.Tensor:
    """``H v`` over all N rows (chunk means weighted by chunk size), l2 term added once."""
    n = n_rows(inputs)
    out = torch.zeros_like(vectors)
    for rows in chunk_slices(n, chunk_size):
        weight = (rows.stop - rows.start) / n
        out += weight * hvp_on_batch(adapter, flat, take(inputs, rows), labels[rows], vectors,
                                     include_l2=False)
    if adapter.l2:
        out += adapter.l2 * flat.l2_mask * vectors
    return out


# A sampled probe (the spectrum, auto's timed passes and residuals) applies many vectors over a few rows;
# the vmapped products hold activations for every (row, vector) pair at once, so one call takes at most
# this many vectors' worth of the sample's rows (text-minilm, 32 rows: 16 vectors in one call lifted the
# process by 2.3 GB, in chunks of 8 rows by 1.0 GB, and ran faster).
PROBE_ROW_VECTORS = 4


def probe_chunk(rows: int, vectors: int) -> int:
    """Rows per HVP call for ``vectors`` vectors over a probe sample of ``rows`` rows (``PROBE_ROW_VECTORS``)."""
    return max(1, min(rows, rows * PROBE_ROW_VECTORS // max(vectors, 1)))


def explicit_hessian(adapter: ModelAdapter, flat: FlatParams, inputs: Inputs, labels: torch.Tensor,
                     *, chunk_size: int = 512, columns_per_call: int = 256) -> torch.Tensor:
    """The full ``[P, P]`` Hessian of R(θ) at θ̂, one block of identity columns at a time."""
    p = flat.size
    eye = torch.eye(p, dtype=flat.l2_mask.dtype, device=flat.l2_mask.device)
    blocks = [full_hvp(adapter, flat, inputs, labels, eye[cols], chunk_size=chunk_size)
              for cols in chunk_slices(p, columns_per_call)]
    h = torch.cat(blocks)
    return 0.5 * (h + h.T)  # exact in theory; symmetrise away float round-off


def top_eigenvalue(adapter: ModelAdapter, flat: FlatParams, inputs: Inputs, labels: torch.Tensor,
                   *, batch_size: int, n_batches: int = 8, iterations: int = 30,
                   seed: int = 0, rtol: float = 1e-3) -> float:
    """Largest |eigenvalue| of H_S over ``n_batches`` sampled minibatches (power iteration).

    LiSSA with minibatch Hessians H_S is stable only while ‖I − H_S/scale‖ < 1 for the batches
    it draws, so the *largest* per-batch curvature, not the mean Hessian's, sets the scale.
    Stops after ``iterations`` steps, or once no batch's estimate moved by more than ``rtol`` ×
    the largest in a step (single rows have rank-few Hessians: a handful of steps on the text model).
    """
    n = n_rows(inputs)
    gen = torch.Generator().manual_seed(seed)
    batch_size = min(batch_size, n)
    # Power iteration on all sampled batches at once: one vector per batch.
    idx = torch.stack([torch.randperm(n, generator=gen)[:batch_size] for _ in range(n_batches)])
    v = torch.randn(n_batches, flat.size, generator=gen, dtype=flat.l2_mask.dtype)
    v = (v / v.norm(dim=1, keepdim=True)).to(flat.l2_mask.device)
    eig = torch.zeros(n_batches, dtype=v.dtype, device=v.device)
    for _ in range(iterations):
        hv = torch.stack([hvp_on_batch(adapter, flat, take(inputs, idx[b]), labels[idx[b]], v[b:b + 1])[0]
                          for b in range(n_batches)])
        previous, eig = eig, (hv * v).sum(dim=1)
        v = hv / hv.norm(dim=1, keepdim=True).clamp_min(1e-30)
        if float((eig - previous).abs().max()) <= rtol * float(eig.abs().max()):
            break
    return float(eig.abs().max())


def lanczos_eigenpairs(matvec, size: int, *, iterations: int, dtype: torch.dtype,
                       device: torch.device | str = "cpu", seed: int = 0, converged: int | None = None,
                       rtol: float = 1e-2, check_every: int = 4) -> tuple[torch.Tensor, torch.Tensor]:
    """Eigenpairs of a symmetric operator from up to ``iterations`` Lanczos steps (full reorthogonalisation).

    ``matvec`` maps a ``[1, size]`` block to ``[1, size]``. Returns Ritz values ``[r]`` (descending)
    and Ritz vectors ``[r, size]``, r ≤ iterations. The largest eigenvalues converge first; with
    ``iterations = size`` the decomposition is exact up to round-off. ``converged``: stop as soon as
    the top ``converged`` Ritz values moved by less than ``rtol`` (relative to the largest) over
    the last ``check_every`` steps — a well-separated top of the spectrum settles in a few steps.
    """
    iterations = min(iterations, size)
    gen = torch.Generator().manual_seed(seed)
    basis = torch.zeros(iterations, size, dtype=dtype, device=device)
    q = torch.randn(size, generator=gen, dtype=dtype).to(device)
    q /= q.norm()
    alphas, betas = [], []
    previous = None
    for j in range(iterations):
        basis[j] = q
        w = matvec(q[None])[0]
        alphas.append(float(w @ q))
        done = basis[:j + 1]
        for _ in range(2):  # twice is enough to keep the basis orthogonal in floating point
            w = w - done.T @ (done @ w)
        beta = float(w.norm())
        if beta <= 1e-10 * max(1.0, abs(alphas[0])) or j == iterations - 1:
            break  # invariant subspace found (or budget spent)
        betas.append(beta)
        q = w / beta
        if converged and (j + 1) % check_every == 0 and j + 1 > converged:
            top = _ritz_values(alphas, betas)[:converged]
            if previous is not None and float((top - previous).abs().max()) <= rtol * float(top.abs().max()):
                break
            previous = top
    k = len(alphas)
    tri = torch.diag(torch.tensor(alphas, dtype=torch.float64))
    if k > 1:
        off = torch.tensor(betas[:k - 1], dtype=torch.float64)
        tri += torch.diag(off, 1) + torch.diag(off, -1)
    values, vectors = torch.linalg.eigh(tri)
    order = torch.argsort(values, descending=True)
    values, vectors = values[order], vectors[:, order]
    ritz = vectors.T.to(dtype=dtype, device=device) @ basis[:k]
    return values.to(dtype), ritz


def _ritz_values(alphas: list[float], betas: list[float]) -> torch.Tensor:
    """Eigenvalues (descending) of the Lanczos tridiagonal so far."""
    k = len(alphas)
    tri = torch.diag(torch.tensor(alphas, dtype=torch.float64))
    if k > 1:
        off = torch.tensor(betas[:k - 1], dtype=torch.float64)
        tri += torch.diag(off, 1) + torch.diag(off, -1)
    return torch.linalg.eigvalsh(tri).flip(0)


@dataclass(frozen=True)
class Spectrum:
    """Where the ridge λ sits in the Hessian's spectrum, estimated on a sample of training rows.

    ``largest``: the top eigenvalue (Lanczos); ``mean``: trace / P (Hutchinson's estimator, so
    noisy where a few directions carry the trace). A ridge far below ``largest`` lets the
    Hessian shape the answer; one above it makes (H + λI)⁻¹ ≈ I/λ, a plain gradient dot product.
    """

    largest: float
    mean: float
    rows: int

    def relative(self, ridge: float) -> dict[str, float]:
        return {"largest_eigenvalue": self.largest, "mean_eigenvalue": self.mean, "rows": self.rows,
                "ridge_over_largest": ridge / self.largest if self.largest > 0 else float("inf"),
                "ridge_over_mean": ridge / self.mean if self.mean > 0 else float("inf")}


SPECTRUM_VALUES = 2e7  # sampled rows × parameters the spectrum estimate spends HVPs on (≥ 32 rows)


def spectrum(adapter: ModelAdapter, flat: FlatParams, inputs: Inputs, labels: torch.Tensor, *,
             rows: int | None = None, probes: int = 8, iterations: int = 12, seed: int = 0,
             largest: float | None = None) -> Spectrum:
    """Top and mean eigenvalue of the full-data Hessian, from HVPs on a sample of training rows
    (as many as ``SPECTRUM_VALUES`` allows, at most ``rows``). A sample's top eigenvalue
    overestimates the full data's (digits, 512 of 1,257 rows: 0.85 vs 0.57), so small samples read
    high. ``largest``, when a solver already knows it (a Lanczos decomposition), is taken as given."""
    n, p = n_rows(inputs), flat.size
    gen = torch.Generator().manual_seed(seed)
    sample = torch.randperm(n, generator=gen)[:min(n, rows or n, max(32, int(SPECTRUM_VALUES // p)))].sort().values
    x, y = take(inputs, sample), labels[sample]
    dtype, device = flat.l2_mask.dtype, flat.l2_mask.device

    def hv(v: torch.Tensor) -> torch.Tensor:
        return full_hvp(adapter, flat, x, y, v, chunk_size=probe_chunk(len(sample), len(v)))

    if largest is None:
        values, _ = lanczos_eigenpairs(hv, p, iterations=iterations, dtype=dtype, device=device, seed=seed,
                                       converged=1, check_every=2)
        largest = float(values[0])
    z = (torch.randint(0, 2, (probes, p), generator=gen) * 2 - 1).to(dtype=dtype, device=device)
    mean = float((hv(z) * z).sum(dim=1).mean()) / p
    return Spectrum(float(largest), mean, len(sample))
