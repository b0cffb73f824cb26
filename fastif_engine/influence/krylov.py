"""The Krylov solvers: :class:`LowRankSolver` (the Hessian's top eigenpairs by Lanczos, the ridge
elsewhere) and :class:`CgSolver` (conjugate gradient on the full-data damped Hessian, every vector
at once, optionally preconditioned). See :mod:`fastif_engine.influence.solvers` for the interface.
"""
from __future__ import annotations


import torch

from ..adapter import ModelAdapter
from ..data.batching import Inputs, n_rows, take
from ..errors import SolverSetupError
from .gradients import FlatParams
from .hessian import full_hvp, lanczos_eigenpairs

from .solvers import InverseHVPSolver, ProgressFn

LOW_RANK = 32  # top Hessian eigenpairs the low-rank solver keeps
CG_TOLERANCE = 1e-4  # relative residual at which CG stops
CG_MAX_ITERATIONS = 50


class LowRankSolver(InverseHVPSolver):
    """(H + λI)⁻¹ from H's ``rank`` largest eigenpairs; H estimated on ``rows`` sampled training rows.

    Lanczos runs ``iterations`` steps (default ``2 × rank``; one full-sample HVP each), or fewer with
    ``early_stop`` once the top ``rank`` Ritz values settle, and keeps the ``rank`` best Ritz pairs. Negative eigenvalues (a model not quite at a minimum) are clipped to
    0, so the damped operator stays positive definite for any λ > 0.
    """

    def __init__(self, adapter: ModelAdapter, inputs: Inputs, labels: torch.Tensor, *, ridge: float,
                 rank: int = LOW_RANK, rows: int = 1024, seed: int = 0, chunk_size: int = 128,
                 flat: FlatParams | None = None, iterations: int | None = None, early_stop: bool = False):
        _check_low_rank(ridge, rank)
        self.flat = flat or FlatParams.of(adapter)
        self._ridge = float(ridge)
        n = n_rows(inputs)
        sample = torch.randperm(n, generator=torch.Generator().manual_seed(seed))[:min(rows, n)].sort().values
        x, y = take(inputs, sample), labels[sample]
        values, vectors = lanczos_eigenpairs(
            lambda v: full_hvp(adapter, self.flat, x, y, v, chunk_size=chunk_size), self.flat.size,
            iterations=min(iterations or 2 * rank, self.flat.size), dtype=self.flat.l2_mask.dtype,
            device=self.flat.l2_mask.device, seed=seed, converged=rank if early_stop else None)
        self.eigenvalues = values[:rank].clamp_min(0.0)
        self.eigenvectors = vectors[:rank]  # [r, P], orthonormal rows

    @classmethod
    def from_eigenpairs(cls, eigenvalues: torch.Tensor, eigenvectors: torch.Tensor, ridge: float) -> "LowRankSolver":
        """A solver from saved eigenpairs (``eigenvalues [r]``, orthonormal ``eigenvectors [r, P]``)."""
        _check_low_rank(ridge, len(eigenvalues))
        solver = cls.__new__(cls)
        solver._ridge, solver.flat = float(ridge), None
        solver.eigenvalues, solver.eigenvectors = eigenvalues.clamp_min(0.0), eigenvectors
        return solver

    @property
    def ridge(self) -> float:
        return self._ridge

    def solve(self, vectors: torch.Tensor, progress: ProgressFn | None = None) -> torch.Tensor:
        u = self.eigenvectors
        v = vectors.to(device=u.device, dtype=u.dtype)
        coef = v @ u.T  # [m, r]: components on the top subspace
        inside = (coef / (self.eigenvalues + self._ridge)) @ u
        outside = (v - coef @ u) / self._ridge
        if progress:
            progress(1, 1)
        return inside + outside


def _check_low_rank(ridge: float, rank: int) -> None:
    if not ridge > 0:
        raise SolverSetupError(f"the low-rank solver needs a ridge λ > 0 (got {ridge:g}): raise --damping")
    if rank < 1:
        raise SolverSetupError(f"the low-rank solver needs rank >= 1 (got {rank})")


class CgSolver(InverseHVPSolver):
    """Block conjugate gradient on (H + λI) S = V, every vector in one block, with full-data HVPs.

    Each iteration is one pass of Hessian-vector products over the training rows, for one search
    direction per unsolved vector (vmapped together); the directions are chosen in the span of all
    the vectors' residuals at once (block CG: O'Leary 1980), so m vectors share a Krylov space m
    times wider than each would build alone, and converge in fewer passes. Breakdown-free (Ji & Li
    2017): the directions are orthonormalised every iteration and those of (nearly) repeated vectors
    dropped, so vectors that are nearly parallel do not make the small k × k systems singular. A ``preconditioner`` (an EK-FAC solver: a cheap
    approximate inverse) both starts the iteration and preconditions it. A vector stops when its
    relative residual ‖v − (H + λI)s‖ / ‖v‖ is below ``tolerance``; all stop after
    ``max_iterations`` (0: the preconditioner's answer alone). The residuals reached are kept in
    ``residuals`` (one per vector) and the iterations run in ``iterations_used``.
    """

    def __init__(self, adapter: ModelAdapter, inputs: Inputs, labels: torch.Tensor, *, ridge: float,
                 preconditioner: InverseHVPSolver | None = None, tolerance: float = CG_TOLERANCE,
                 max_iterations: int = CG_MAX_ITERATIONS, flat: FlatParams | None = None, chunk_size: int = 512):
        if not ridge > 0:
            raise SolverSetupError(f"the CG solver needs a ridge λ > 0 (got {ridge:g}): raise --damping")
        self.adapter, self.inputs, self.labels = adapter, inputs, labels
        self.flat = flat or FlatParams.of(adapter)
        self._ridge, self.tolerance, self.max_iterations = float(ridge), float(tolerance), int(max_iterations)
        self.preconditioner, self.chunk_size = preconditioner, chunk_size
        self.iterations_used: list[int] = []
        self.residuals: torch.Tensor | None = None

    @property
    def ridge(self) -> float:
        return self._ridge

    def _operator(self, vectors: torch.Tensor) -> torch.Tensor:
        return full_hvp(self.adapter, self.flat, self.inputs, self.labels, vectors,
                        chunk_size=self.chunk_size) + self._ridge * vectors

    def _precondition(self, r: torch.Tensor) -> torch.Tensor:
        return self.preconditioner.solve(r) if self.preconditioner is not None else r / self._ridge

    def solve(self, vectors: torch.Tensor, progress: ProgressFn | None = None) -> torch.Tensor:
        # Rows are vectors throughout: x, r [m, P]; the search directions p and q = (H + λI)p [k, P].
        b = vectors.to(device=self.flat.l2_mask.device, dtype=self.flat.l2_mask.dtype)
        b_norm = b.norm(dim=1).clamp_min(1e-30)
        x = self._precondition(b)
        if self.max_iterations == 0:
            self.iterations_used.append(0)
            if progress:
                progress(1, 1)
            return x
        r = b - self._operator(x)
        self.residuals = r.norm(dim=1) / b_norm
        active = torch.nonzero(self.residuals > self.tolerance).flatten()
        r = r[active]
        p = _orthonormal_rows(self._precondition(r)) if len(active) else r
        used = 0
        for it in range(1, self.max_iterations + 1):
            if not len(active):
                break
            q = self._operator(p)
            factor, info = torch.linalg.cholesky_ex(p @ q.T)  # pᵀ(H + λI)p, k × k
            if int(info):
                raise SolverSetupError(
                    f"H + λI is not positive definite (λ = {self._ridge:g}; CG met a direction of "
                    "curvature ≤ 0): the model is not at a minimum. Raise --damping, or train longer.")
            alpha = torch.cholesky_solve(p @ r.T, factor)  # [k, m_active]
            x[active] += alpha.T @ p
            r -= alpha.T @ q
            used = it
            if progress:
                progress(it, self.max_iterations)
            self.residuals[active] = left = r.norm(dim=1) / b_norm[active]
            keep = left > self.tolerance
            if not bool(keep.any()):
                break
            active, r = active[keep], r[keep]
            z = self._precondition(r)
            beta = torch.cholesky_solve(q @ z.T, factor)  # makes the new directions conjugate to p
            p = _orthonormal_rows(z - beta.T @ p)
        self.iterations_used.append(used)
        return x


def _orthonormal_rows(z: torch.Tensor) -> torch.Tensor:
    """An orthonormal basis of ``z``'s rows' span, as rows: QR of zᵀ, less the directions of rows
    that (nearly) repeat earlier ones, |R_ii| ≤ √eps × max |R_jj| (a vector solved twice would
    otherwise add an arbitrary direction, not conjugate to the last ones, and slow the rest)."""
    q, r = torch.linalg.qr(z.T)
    diagonal = r.diagonal().abs()
    kept = diagonal > torch.finfo(z.dtype).eps ** 0.5 * diagonal.max()
    return q[:, kept].T.contiguous()
