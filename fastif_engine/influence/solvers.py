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
* ``krylov.LowRankSolver`` (beside conjugate gradient in :mod:`.krylov`) — H's top-r eigenpairs
  (Lanczos on HVPs over a row sample), then
      (H + λI)⁻¹ ≈ U diag(1/(μ + λ)) Uᵀ + (I − UUᵀ)/λ
  exact on the top subspace, zero curvature assumed elsewhere. Built once, every solve is two
  matrix products: what makes self-influence of every training row affordable for big models.

Which one a run uses, and building it: :mod:`fastif_engine.influence.planning`.
"""
from __future__ import annotations

import dataclasses
import logging
import math
from abc import ABC, abstractmethod
from dataclasses import dataclass
from typing import Callable

import torch

from ..adapter import ModelAdapter
from ..data.batching import Inputs, chunk_slices, n_rows, take
from ..errors import LissaDivergenceError, SettingsError, SolverSetupError
from .gradients import MEMORY_BUDGET_GB, FlatParams, chunk_rows, gradient_matrix
from .hessian import explicit_hessian, hvp_on_batch, top_eigenvalue

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


# d in λ = d × scale, the 0.3.0–0.3.3 default, kept for benchmarks that compare at a fixed d: the ridge
# study (docs/decisions/ridge.md) found cleaning quality flat from d = 0.01 to 0.05 on four datasets ×
# two noise kinds, while d = 0.01 left the breast-cancer MLP's H + λI indefinite in 1 of 10 runs.
DEFAULT_DAMPING = 0.05
# The ridge `fastif clean` and ``FastIF`` use unless a damping is given (since 0.3.4 and 0.3.7): λ = RIDGE_OF_TOP × the Hessian's
# top eigenvalue (sampled, hessian.spectrum). The same cleaning quality as d = 0.05 where that sits at
# 0.3–0.7 × the top eigenvalue (text, tabular), and on Fashion-MNIST's image-cnn, where d = 0.05 is
# 1–2 × it, half of the recall d = 0.05 lost (docs/decisions/ridge.md).
RIDGE_OF_TOP = 0.3


def default_damping(largest: float, scale: float) -> float:
    """d in λ = d × ``scale`` for the default ridge λ = RIDGE_OF_TOP × ``largest`` (the Hessian's sampled
    top eigenvalue); a :class:`SettingsError` when that d is not in (0, 1)."""
    damping = RIDGE_OF_TOP * largest / scale
    if not 0.0 < damping < 1.0:
        raise SettingsError(f"the default ridge λ = {RIDGE_OF_TOP:g} × the Hessian's top eigenvalue "
                            f"({largest:.4g}, estimated) does not fit the scale {scale:.4g} (damping "
                            f"{damping:.4g} is not in (0, 1)): set --damping (λ = damping × scale) or --scale")
    return damping


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
    damping: float | None = None  # d; None = the default ridge, λ = RIDGE_OF_TOP × the top eigenvalue
    scale: float | None = None  # s; None = estimated once from the curvature (logged)
    tolerance: float | None = None  # stop a repeat early when the relative change per 10 steps < tol
    seed: int = 0

    def __post_init__(self):
        if self.depth < 1 or self.repeats < 1 or self.batch_size < 1:
            raise SettingsError("LiSSA depth, repeats and batch_size must all be >= 1")
        if self.damping is not None and not 0.0 <= self.damping < 1.0:
            raise SettingsError(f"LiSSA damping must be in [0, 1), got {self.damping}")
        if self.scale is not None and not self.scale > 0:
            raise SettingsError(f"LiSSA scale must be > 0, got {self.scale}")

    @property
    def ridge(self) -> float:
        """λ = damping × scale: the one place it is computed (every solver and report uses it)."""
        if self.scale is None or self.damping is None:
            raise SettingsError("the ridge needs a scale and a damping: fill them in with with_scale first")
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
    """``settings`` with the scale and the damping filled in where unset: the scale estimated from the
    curvature, the damping by the default ridge rule (:func:`default_damping`, the one ``fastif clean``
    uses, from the same sampled spectrum), both logged."""
    if settings.scale is None:
        settings = dataclasses.replace(settings, scale=auto_scale(adapter, flat, inputs, labels, settings.seed))
        log.info("scale estimated from the curvature: %.4g", settings.scale)
    if settings.damping is None:
        from .hessian import spectrum

        top = spectrum(adapter, flat, inputs, labels, seed=settings.seed).largest
        settings = dataclasses.replace(settings, damping=default_damping(top, settings.scale))
        log.info("default ridge λ = %g × the Hessian's top eigenvalue (%.4g, estimated) = %.4g",
                 RIDGE_OF_TOP, top, settings.ridge)
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
