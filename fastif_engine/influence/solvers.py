"""s_test = (H + λI)⁻¹ ∇θ L(z_test, θ̂): the inverse-Hessian-vector product, behind one interface.

Every solver takes a block of test gradients ``V [m, P]`` and returns ``S [m, P]`` with
``S[i] ≈ (H + λI)⁻¹ V[i]``, where H is the Hessian of the training objective (see
:mod:`fastif_engine.influence.hessian`) and λ the solver's ``ridge``.

* :class:`ExactSolver` — the explicit damped Hessian, Cholesky-solved. Small P only; the
  reference every approximation is tested against.
* :class:`LissaSolver` — FastIF's stochastic recursion (Agarwal et al.; Koh & Liang):
      h₀ = v,   h_j = v + (1 − d)·h_{j−1} − H_{S_j} h_{j−1} / s,   s_test = h_J / s
  with a fresh minibatch S_j of size B per step. Its fixed point is (H + d·s·I)⁻¹ v, so the
  effective ridge is λ = damping · scale. T independent repeats are averaged; each repeat is
  a pure function of (V, repeat index) so repeats can run on different workers.
* :class:`LowRankSolver` — H's top-r eigenpairs (Lanczos on HVPs over a row sample), then
      (H + λI)⁻¹ ≈ U diag(1/(μ + λ)) Uᵀ + (I − UUᵀ)/λ
  exact on the top subspace, zero curvature assumed elsewhere. Built once, every solve is two
  matrix products: what makes self-influence of every training row affordable for big models.
"""
from __future__ import annotations

import dataclasses
import logging
import math
import time
from abc import ABC, abstractmethod
from dataclasses import dataclass
from typing import Callable

import torch

from ..adapter import ModelAdapter
from ..data.batching import Inputs, chunk_slices, n_rows, take
from ..errors import LissaDivergenceError, SolverSetupError
from .gradients import MEMORY_BUDGET_GB, FlatParams, chunk_rows, gradient_matrix
from .hessian import explicit_hessian, full_hvp, hvp_on_batch, lanczos_eigenpairs, top_eigenvalue

log = logging.getLogger("fastif")

ProgressFn = Callable[[int, int], None]  # (steps done, steps total)


class InverseHVPSolver(ABC):
    """Solves (H + λI) S = V for a block of vectors."""

    @property
    @abstractmethod
    def ridge(self) -> float:
        """λ, the damping added to the Hessian's diagonal (report it beside every score)."""

    @abstractmethod
    def solve(self, vectors: torch.Tensor, progress: ProgressFn | None = None) -> torch.Tensor:
        """``[m, P]`` test gradients → ``[m, P]`` inverse-Hessian-vector products."""


EXACT_MAX_PARAMS = 10_000  # a 10k × 10k Hessian is 400 MB in float32


class ExactSolver(InverseHVPSolver):
    """Explicit (H + λI)⁻¹ from the full-data Hessian; refuses more than ``max_params`` parameters."""

    def __init__(self, adapter: ModelAdapter, inputs: Inputs, labels: torch.Tensor, *,
                 ridge: float = 0.0, max_params: int = EXACT_MAX_PARAMS, flat: FlatParams | None = None):
        self.flat = flat or FlatParams.of(adapter)
        if self.flat.size > max_params:
            raise SolverSetupError(
                f"the exact solver needs a {self.flat.size}×{self.flat.size} Hessian; it is limited to "
                f"{max_params} parameters. Use the LiSSA solver, or differentiate fewer layers.")
        self._ridge = float(ridge)
        self.hessian = explicit_hessian(adapter, self.flat, inputs, labels)
        damped = self.hessian + self._ridge * torch.eye(self.flat.size, dtype=self.hessian.dtype,
                                                        device=self.hessian.device)
        self._cholesky, info = torch.linalg.cholesky_ex(damped)
        if int(info) != 0:
            low = float(torch.linalg.eigvalsh(self.hessian)[0])
            needed = max(-low, 0.0) + 1e-6 * max(1.0, abs(low))
            raise SolverSetupError(
                f"H + λI is not positive definite (λ = {self._ridge:g}, smallest Hessian eigenvalue "
                f"{low:.3g}): raise the ridge (damping × scale) above {needed:.3g}.")

    @property
    def ridge(self) -> float:
        return self._ridge

    def solve(self, vectors: torch.Tensor, progress: ProgressFn | None = None) -> torch.Tensor:
        rhs = vectors.T.to(device=self._cholesky.device, dtype=self._cholesky.dtype)
        out = torch.cholesky_solve(rhs, self._cholesky).T
        if progress:
            progress(1, 1)
        return out


# d in λ = d × scale. 0.05 since 0.3.0: the ridge study (docs/decisions/ridge.md) found cleaning
# quality flat from d = 0.01 to 0.05 (and at 0.1 × the top eigenvalue) on four datasets × two noise kinds,
# while d = 0.01 left the breast-cancer MLP's H + λI indefinite in 1 of 10 runs (the run stops); 0.05 in none.
DEFAULT_DAMPING = 0.05


@dataclass(frozen=True)
class LissaSettings:
    """LiSSA's knobs, and the damping every solver shares.

    Defaults come from the J/B/T study (docs/decisions/lissa-defaults.md): one B = 1 chain plateaus at 25–35%
    error however deep, while B = 16 at J = 300 reaches cosine 0.998 to the exact inverse and is
    faster on CPU than J = 1000 at B = 1 (FastIF's GPU setting, still available).
    """

    depth: int = 300  # J, recursion steps per repeat
    repeats: int = 1  # T, independent repeats averaged
    batch_size: int = 16  # B, training rows per Hessian-vector product
    damping: float = DEFAULT_DAMPING  # d
    scale: float | None = None  # s; None = estimated once from the curvature (logged)
    tolerance: float | None = None  # stop a repeat early when the relative change per 10 steps < tol
    seed: int = 0

    def __post_init__(self):
        if self.depth < 1 or self.repeats < 1 or self.batch_size < 1:
            raise ValueError("LiSSA depth, repeats and batch_size must all be >= 1")
        if not 0.0 <= self.damping < 1.0:
            raise ValueError(f"LiSSA damping must be in [0, 1), got {self.damping}")
        if self.scale is not None and not self.scale > 0:
            raise ValueError(f"LiSSA scale must be > 0, got {self.scale}")

    @property
    def ridge(self) -> float:
        """λ = damping × scale: the one place it is computed (every solver and report uses it)."""
        if self.scale is None:
            raise ValueError("the ridge needs a scale: estimate it with auto_scale first")
        return self.damping * self.scale


def auto_scale(adapter: ModelAdapter, flat: FlatParams, inputs: Inputs, labels: torch.Tensor,
               seed: int = 0, safety: float = 2.0, batch_size: int = 1) -> float:
    """A scale that keeps the recursion stable: ``safety`` × the largest sampled curvature.

    Sampled on single rows by default, the most curved a minibatch of any size can be, so that
    the scale (and the ridge λ it sets) does not depend on LiSSA's batch size.
    """
    top = top_eigenvalue(adapter, flat, inputs, labels, batch_size=batch_size, seed=seed)
    return float(max(safety * top, 1e-8))


def with_scale(adapter: ModelAdapter, inputs: Inputs, labels: torch.Tensor, settings: LissaSettings,
               flat: FlatParams) -> LissaSettings:
    """``settings`` with the scale filled in (estimated and logged when unset)."""
    if settings.scale is not None:
        return settings
    settings = dataclasses.replace(settings, scale=auto_scale(adapter, flat, inputs, labels, settings.seed))
    log.info("scale estimated from the curvature: %.4g (ridge λ = %.4g)", settings.scale, settings.ridge)
    return settings


def lissa_copies(batch_size: int) -> float:
    """m × P values one LiSSA chain over m vectors peaks at: h, v, the H v buffer, the HVP's
    per-parameter parts and its transients, which grow with the minibatch (measured on the text
    model: ~5 at B = 1, ~10 at B = 16; linear between, and beyond)."""
    return 5.0 + 5.0 * (max(batch_size, 1) - 1) / 15.0


def lissa_block(n_params: int, budget_gb: float = MEMORY_BUDGET_GB, batch_size: int = 16) -> int:
    """Vectors one LiSSA chain with minibatch ``batch_size`` may carry at once within ``budget_gb`` (≥ 1)."""
    return chunk_rows(n_params, budget_gb, copies=lissa_copies(batch_size))


class LissaSolver(InverseHVPSolver):
    """LiSSA for every vector at once, in blocks of at most ``block`` vectors (the memory bound).

    Every block replays the same seeded minibatch stream, so (without a tolerance, which stops a
    block when its slowest vector settles) a vector's result does not depend on which block, or
    how many others, it was solved with.
    """

    CHECK_EVERY = 10

    def __init__(self, adapter: ModelAdapter, inputs: Inputs, labels: torch.Tensor,
                 settings: LissaSettings = LissaSettings(), *, flat: FlatParams | None = None,
                 block: int | None = None):
        self.adapter, self.inputs, self.labels = adapter, inputs, labels
        self.flat = flat or FlatParams.of(adapter)
        self.n = n_rows(inputs)
        self.settings = with_scale(adapter, inputs, labels, settings, self.flat)
        self.block = block or lissa_block(self.flat.size, batch_size=self.settings.batch_size)
        self.iterations_used: list[int] = []  # steps run, one entry per chain (block × repeat)

    @property
    def ridge(self) -> float:
        return self.settings.ridge

    def solve(self, vectors: torch.Tensor, progress: ProgressFn | None = None) -> torch.Tensor:
        total = self.settings.repeats
        acc = torch.zeros_like(vectors)
        for r in range(total):
            acc += self.solve_repeat(vectors, r)
            if progress:
                progress(r + 1, total)
        return acc / total

    def solve_repeat(self, vectors: torch.Tensor, repeat: int) -> torch.Tensor:
        """One independent LiSSA chain (seeded by ``settings.seed`` and ``repeat``) for all vectors."""
        return torch.cat([self._chain(vectors[part], repeat) for part in chunk_slices(len(vectors), self.block)])

    def _chain(self, vectors: torch.Tensor, repeat: int) -> torch.Tensor:
        st = self.settings
        d, s = st.damping, st.scale
        batches = _BatchStream(self.n, st.batch_size, seed=st.seed * 1_000_003 + repeat)
        v = vectors.to(self.flat.l2_mask.device)
        v_norm = v.norm(dim=1).clamp_min(1e-30)
        # With H ⪰ 0, ‖h‖ ≤ ‖v‖/d at the fixed point; a 100× overshoot means exponential blow-up.
        bound = 100.0 * v_norm / d if d > 0 else torch.full_like(v_norm, math.inf)
        h = v.clone()
        hv = torch.empty_like(h)  # one buffer for every step's H v (see hvp_on_batch's ``out``)
        h_checkpoint = h.clone() if st.tolerance is not None else None  # h changes in place
        steps = st.depth
        for j in range(1, st.depth + 1):
            rows = batches.next()
            hvp_on_batch(self.adapter, self.flat, take(self.inputs, rows), self.labels[rows], h, out=hv)
            h.mul_(1.0 - d).add_(v).sub_(hv, alpha=1.0 / s)  # h ← v + (1 − d) h − H v / s, in place
            if j % self.CHECK_EVERY and j != st.depth:
                continue
            norms = h.norm(dim=1)
            if not torch.isfinite(norms).all() or (norms > bound).any():
                raise LissaDivergenceError(
                    f"LiSSA diverged at step {j} of {st.depth} (‖h‖ = {float(norms.max()):.3g}, "
                    f"expected ≤ {float(bound.max()):.3g}): the scale {s:g} is too small for the "
                    f"Hessian's curvature. Raise --scale (try {10 * s:g}); raising --damping also "
                    f"stabilises it (effective ridge λ = damping × scale = {d * s:g}).")
            if st.tolerance is not None:
                change = ((h - h_checkpoint).norm(dim=1) / norms.clamp_min(1e-30)).max()
                if float(change) < st.tolerance:
                    steps = j
                    break
                h_checkpoint.copy_(h)
        self.iterations_used.append(steps)
        return h / s


def sweep_scale(adapter: ModelAdapter, inputs: Inputs, labels: torch.Tensor, settings: LissaSettings, *,
                flat: FlatParams | None = None, tries: int = 6, probe_rows: int = 4,
                max_depth: int = 200) -> tuple[float, list[dict]]:
    """Probe LiSSA (≤ ``max_depth`` steps, on a few training gradients) at ``settings.scale``, 10×,
    100×, … until it stays bounded; returns that scale and every try. Raises LissaDivergenceError
    when none does. Only on request (``--scale-sweep``): a given scale is otherwise never changed."""
    flat = flat or FlatParams.of(adapter)
    rows = torch.arange(min(probe_rows, n_rows(inputs)))
    probe = gradient_matrix(adapter, take(inputs, rows), labels[rows], flat=flat)
    scale, tried = settings.scale, []
    for _ in range(tries):
        probe_settings = dataclasses.replace(settings, scale=scale, depth=min(settings.depth, max_depth),
                                             repeats=1, tolerance=None)
        try:
            LissaSolver(adapter, inputs, labels, probe_settings, flat=flat).solve_repeat(probe, 0)
        except LissaDivergenceError:
            tried.append({"scale": scale, "diverged": True})
            scale *= 10
            continue
        tried.append({"scale": scale, "diverged": False})
        return scale, tried
    scales = ", ".join(f"{t['scale']:g}" for t in tried)
    raise LissaDivergenceError(f"LiSSA diverged at every scale tried ({scales}); raise --damping or check "
                               "the model for a loss that is not smooth")


class _BatchStream:
    """Minibatches drawn without replacement from reshuffled passes over the training rows.

    Every row is used equally often, and B = N gives the exact full-data Hessian each step.
    """

    def __init__(self, n: int, batch_size: int, seed: int):
        self.n, self.b = n, min(batch_size, n)
        self.gen = torch.Generator().manual_seed(seed)
        self.perm, self.pos = torch.randperm(n, generator=self.gen), 0

    def next(self) -> torch.Tensor:
        if self.pos + self.b > self.n:
            self.perm, self.pos = torch.randperm(self.n, generator=self.gen), 0
        rows = self.perm[self.pos:self.pos + self.b]
        self.pos += self.b
        return rows


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
    """Conjugate gradient on (H + λI) S = V, every vector at once, with full-data HVPs.

    Each iteration is one pass of Hessian-vector products over the training rows (all vectors
    vmapped together); a ``preconditioner`` (an EK-FAC solver: a cheap approximate inverse) both
    starts the iteration and preconditions it, so a few iterations reach the exact answer. Stops
    when every vector's relative residual ‖V − (H + λI)S‖ / ‖V‖ is below ``tolerance``, or after
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
        b = vectors.to(device=self.flat.l2_mask.device, dtype=self.flat.l2_mask.dtype)
        b_norm = b.norm(dim=1).clamp_min(1e-30)
        x = self._precondition(b)
        if self.max_iterations == 0:
            self.iterations_used.append(0)
            if progress:
                progress(1, 1)
            return x
        r = b - self._operator(x)
        z = self._precondition(r)
        p, rz = z.clone(), (r * z).sum(1)
        used = 0
        for it in range(1, self.max_iterations + 1):
            active = r.norm(dim=1) / b_norm > self.tolerance
            if not bool(active.any()):
                break
            ap = self._operator(p[active])
            curvature = (p[active] * ap).sum(1)
            if bool((curvature <= 0).any()):
                raise SolverSetupError(
                    f"H + λI is not positive definite (λ = {self._ridge:g}; CG met a direction of "
                    "curvature ≤ 0): the model is not at a minimum. Raise --damping, or train longer.")
            alpha = rz[active] / curvature
            x[active] += alpha[:, None] * p[active]
            r[active] -= alpha[:, None] * ap
            z_new = self._precondition(r[active])
            rz_new = (r[active] * z_new).sum(1)
            p[active] = z_new + (rz_new / rz[active])[:, None] * p[active]
            rz[active] = rz_new
            used = it
            if progress:
                progress(it, self.max_iterations)
        self.residuals = r.norm(dim=1) / b_norm
        self.iterations_used.append(used)
        return x


SOLVERS = ("auto", "exact", "lissa", "lowrank", "ekfac", "cg")


def choose_solver(name: str, n_params: int | None = None) -> str:
    """``name`` after a check (``auto`` included: :func:`plan_solver` resolves it, by measuring)."""
    if name not in SOLVERS:
        raise ValueError(f"unknown solver {name!r}; choose one of {', '.join(SOLVERS)}")
    return name


# ``auto``: an exact-quality solver (exact, or EK-FAC-preconditioned CG) is used when its predicted
# time is within this budget (seconds, on the device the run uses), else the better-fitting approximation.
AUTO_BUDGET_SECONDS = 30.0
AUTO_RANK = 8  # top Hessian eigenpairs auto's low-rank candidate keeps (text-minilm: rank 1 already Pearson 0.98)
AUTO_EKFAC_ROWS = 256  # training rows EK-FAC's factors are estimated on for auto's comparison
AUTO_LOWRANK_ROWS = 128  # training rows its Hessian is sampled on (text-minilm, rank 8: Pearson 0.983 at 128 rows, 0.989 at 256)
PROBE_VALUES = 1e8  # probe rows × parameters timed by plan_solver (≥ 32 rows)
CG_EXPECTED_ITERATIONS = 20  # preconditioned CG to 1e-4 on the built-in tabular models: 7–31 (tests/test_solvers.py)


@dataclass
class SolverPlan:
    """What ``auto`` (or the user) chose, why, and the predicted seconds behind it (for metrics.json)."""

    name: str
    reason: str
    predicted_seconds: dict[str, float]
    ekfac: object | None = None  # the built EK-FAC solver (the answer, or CG's preconditioner)
    ekfac_residual: float | None = None  # ‖v − (H + λI) S_EKFAC v‖ / ‖v‖ on probe gradients
    measured: dict[str, float] = dataclasses.field(default_factory=dict)
    lowrank: object | None = None  # the low-rank solver built for the comparison
    lowrank_residual: float | None = None

    def as_dict(self) -> dict:
        return {"name": self.name, "reason": self.reason,
                "predicted_seconds": {k: round(v, 2) for k, v in self.predicted_seconds.items()},
                "ekfac_residual": None if self.ekfac_residual is None else round(self.ekfac_residual, 4),
                "lowrank_residual": None if self.lowrank_residual is None else round(self.lowrank_residual, 4),
                **({"ekfac": self.ekfac.describe()} if self.ekfac is not None else {}),
                "measured": {k: round(v, 6) for k, v in self.measured.items()}}


def plan_solver(name: str, adapter: ModelAdapter, inputs: Inputs, labels: torch.Tensor, *, ridge: float,
                n_vectors: int, flat: FlatParams | None = None, probe_rows: int = 512, probes: int = 4,
                seed: int = 0) -> SolverPlan:
    """Resolve ``name`` (``auto``: by measured cost and fidelity) for ``n_vectors`` vectors to solve.

    Times one batch of Hessian-vector products (``probes`` training gradients over a sample of up
    to ``probe_rows`` training rows) and predicts from it, for this model on this device: exact
    costs N × P row-HVPs, CG ``CG_EXPECTED_ITERATIONS`` passes over N rows for ``n_vectors``. ``auto``
    takes the cheaper when it fits ``AUTO_BUDGET_SECONDS``. Otherwise it builds both one-off
    approximations, EK-FAC (factors from ``AUTO_EKFAC_ROWS`` rows, for the comparison) and the
    low-rank Hessian (Lanczos on ``AUTO_LOWRANK_ROWS`` rows, stopped when its top ``AUTO_RANK``
    eigenvalues settle), and keeps the one whose relative residual ‖v − (H + λI) S v‖ / ‖v‖ on the
    probe gradients is smaller (fidelity measured, not assumed); EK-FAC, if it wins, is rebuilt
    on every row.
    """
    name = choose_solver(name)
    flat = flat or FlatParams.of(adapter)
    n, p = n_rows(inputs), flat.size
    if name in ("exact", "lissa", "lowrank"):
        return SolverPlan(name, "requested", {})
    from .kfac import EkfacSolver

    gen = torch.Generator().manual_seed(seed)
    rows = torch.randperm(n, generator=gen)[:min(n, probe_rows, max(32, int(PROBE_VALUES // p)))].sort().values
    x, y = take(inputs, rows), labels[rows]
    m = min(max(n_vectors, 1), probes)
    v = gradient_matrix(adapter, take(inputs, rows[:m]), labels[rows[:m]], flat=flat)
    full_hvp(adapter, flat, take(x, slice(0, 2)), y[:2], v)  # warm-up: the first call of a path allocates (0.3 s)

    def residual(solver: InverseHVPSolver) -> float:
        s = solver.solve(v)
        hs = full_hvp(adapter, flat, x, y, s, chunk_size=len(rows)) + ridge * s
        return float(((v - hs).norm(dim=1) / v.norm(dim=1).clamp_min(1e-30)).max())

    started = time.perf_counter()
    full_hvp(adapter, flat, x, y, v, chunk_size=len(rows))
    per_pass = (time.perf_counter() - started) * n / len(rows)  # m vectors over all N rows
    predicted = {"cg": CG_EXPECTED_ITERATIONS * per_pass * max(n_vectors, 1) / m}
    if p <= EXACT_MAX_PARAMS:  # P Hessian columns: the same HVPs, at the same cost per vector and row
        predicted["exact"] = per_pass * p / m
    measured = {"hvp_pass_s": per_pass, "hvp_pass_vectors": m, "probe_rows": len(rows)}
    best = min(predicted, key=predicted.get)
    if name == "auto" and predicted[best] <= AUTO_BUDGET_SECONDS:
        plan = SolverPlan(best, f"{best}: exact-quality, predicted {predicted[best]:.1f} s within the budget of "
                          f"{AUTO_BUDGET_SECONDS:.0f} s ({n_vectors} vectors, {p:,} parameters, {n:,} rows)",
                          predicted, measured=measured)
        if best == "cg":
            plan.ekfac = EkfacSolver(adapter, inputs, labels, ridge=ridge, flat=flat)
        return plan
    if name in ("ekfac", "cg"):  # by name: EK-FAC is the answer, or CG's preconditioner
        ekfac = EkfacSolver(adapter, inputs, labels, ridge=ridge, flat=flat)
        return SolverPlan(name, "requested", predicted, ekfac, residual(ekfac), measured)
    # Both approximations on a sample of rows first (what they cost there is timed); the winner is then
    # the low-rank solver as built, or EK-FAC rebuilt on every row.
    sample = torch.randperm(n, generator=torch.Generator().manual_seed(seed + 1))[:min(n, AUTO_EKFAC_ROWS)]
    started = time.perf_counter()
    trial = EkfacSolver(adapter, take(inputs, sample), labels[sample], ridge=ridge, flat=flat)
    predicted["ekfac"] = measured["ekfac_sample_build_s"] = time.perf_counter() - started
    predicted["ekfac"] *= n / len(sample)
    started = time.perf_counter()
    low = LowRankSolver(adapter, inputs, labels, ridge=ridge, rank=AUTO_RANK, rows=AUTO_LOWRANK_ROWS, seed=seed,
                        flat=flat, iterations=3 * AUTO_RANK, early_stop=True)
    predicted["lowrank"] = measured["lowrank_build_s"] = time.perf_counter() - started
    plan = SolverPlan("lowrank", "", predicted, None, residual(trial), measured, low, residual(low))
    if plan.ekfac_residual < plan.lowrank_residual:
        plan.name = "ekfac"
        plan.ekfac = trial if len(sample) == n else EkfacSolver(adapter, inputs, labels, ridge=ridge, flat=flat)
    plan.reason = (f"{plan.name}: exact-quality solvers predicted {predicted[best]:.0f} s ({best}), over the budget "
                   f"of {AUTO_BUDGET_SECONDS:.0f} s; relative residual on probe gradients: EK-FAC "
                   f"{plan.ekfac_residual:.3f} (factors from {len(sample)} rows), low-rank (rank "
                   f"{len(low.eigenvalues)}, {min(n, AUTO_LOWRANK_ROWS)} rows) {plan.lowrank_residual:.3f}")
    return plan


def make_solver(name: str, adapter: ModelAdapter, inputs: Inputs, labels: torch.Tensor,
                settings: LissaSettings = LissaSettings(), *, rank: int = LOW_RANK,
                flat: FlatParams | None = None, memory_budget: float = MEMORY_BUDGET_GB,
                n_vectors: int = 16, plan: SolverPlan | None = None) -> InverseHVPSolver:
    """Build solver ``name`` (``auto``: see :func:`plan_solver`, for ``n_vectors`` vectors) with one
    ridge for all: λ = ``settings.ridge`` = damping × scale, the scale estimated once if unset.
    LiSSA solves as many vectors at once as ``memory_budget`` (GB) allows. ``plan``: a plan made
    before (its EK-FAC factors are reused).

    Sharing λ is what makes every solver comparable on the same data.
    """
    flat = flat or FlatParams.of(adapter)
    settings = with_scale(adapter, inputs, labels, settings, flat)
    if plan is None:
        plan = plan_solver(name, adapter, inputs, labels, ridge=settings.ridge, n_vectors=n_vectors, flat=flat,
                           seed=settings.seed)
    name = plan.name
    if name == "lissa":
        return LissaSolver(adapter, inputs, labels, settings, flat=flat,
                           block=lissa_block(flat.size, memory_budget, settings.batch_size))
    if name == "exact":
        return ExactSolver(adapter, inputs, labels, ridge=settings.ridge, flat=flat)
    if name == "ekfac":
        return plan.ekfac
    if name == "lowrank" and plan.lowrank is not None:
        return plan.lowrank
    if name == "cg":
        return CgSolver(adapter, inputs, labels, ridge=settings.ridge, preconditioner=plan.ekfac, flat=flat)
    return LowRankSolver(adapter, inputs, labels, ridge=settings.ridge, rank=rank, seed=settings.seed, flat=flat)
