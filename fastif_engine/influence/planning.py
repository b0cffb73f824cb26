"""Which solver a run uses: :func:`plan_solver` (``auto``: by measured cost and fidelity) and
:func:`make_solver`, the one dispatch, with one ridge λ = damping × scale for every solver.
"""
from __future__ import annotations

import dataclasses
import time
from dataclasses import dataclass

import torch

from ..adapter import ModelAdapter
from ..data.batching import Inputs, n_rows, take
from ..errors import SettingsError
from .gradients import MEMORY_BUDGET_GB, FlatParams, gradient_matrix
from .hessian import full_hvp, probe_chunk
from .krylov import LOW_RANK, CgSolver, LowRankSolver
from .solvers import EXACT_MAX_PARAMS, ExactSolver, InverseHVPSolver, LissaSettings, LissaSolver, lissa_block, with_scale

SOLVERS = ("auto", "exact", "lissa", "lowrank", "ekfac", "cg")


def choose_solver(name: str, n_params: int | None = None) -> str:
    """``name`` after a check (``auto`` included: :func:`plan_solver` resolves it, by measuring)."""
    if name not in SOLVERS:
        raise SettingsError(f"unknown solver {name!r}; choose one of {', '.join(SOLVERS)}")
    return name


# ``auto``: an exact-quality solver (exact, or EK-FAC-preconditioned CG) is used when its predicted
# time is within this budget (seconds, on the device the run uses), else the better-fitting approximation.
AUTO_BUDGET_SECONDS = 30.0
AUTO_RANK = 4  # top Hessian eigenpairs auto's low-rank candidate keeps (text-minilm: as close as rank 8; docs/decisions/solver-auto.md)
# Both approximations are built for auto's comparison on a sample of the training rows: an eighth
# of them, within these bounds, so what the comparison costs shrinks with the data it explains.
AUTO_SAMPLE_ROWS = (64, 128)
PROBE_VALUES = 5e7  # probe rows × parameters timed by plan_solver (≥ 32 rows)
PROBE_BLOCKS = (4, 16)  # vectors per timed HVP pass: a pass costs a + b × vectors, fitted on these two
# Block CG to a relative residual of 1e-4: 3–6 iterations at the default ridge (0.3 × top eigenvalue) and
# 8–15 at 10× less, on digits (logreg, MLP) and image-cnn on Fashion-MNIST (docs/decisions/solver-auto.md).
CG_EXPECTED_ITERATIONS = 10


def auto_sample_rows(n: int) -> int:
    """Training rows ``auto`` builds each approximation on, for N = ``n`` rows (``AUTO_SAMPLE_ROWS``)."""
    low, high = AUTO_SAMPLE_ROWS
    return min(n, max(low, min(high, n // 8)))


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
                seed: int = 0, block: int | None = None) -> SolverPlan:
    """Resolve ``name`` (``auto``: by measured cost and fidelity) for ``n_vectors`` vectors to solve,
    ``block`` at a time (default: all at once; the pipeline solves its errors in batches).

    Times Hessian-vector products over a sample of up to ``probe_rows`` training rows for two
    blocks of training gradients (``PROBE_BLOCKS``: a pass's cost grows slower than its vectors,
    so it is fitted as a + b × vectors) and predicts from it, for this model on this device: exact
    costs P Hessian columns, (block) CG ``CG_EXPECTED_ITERATIONS`` + 1 passes over N rows for each
    block of vectors. ``auto`` takes the cheaper when it fits ``AUTO_BUDGET_SECONDS``. Otherwise it builds both one-off
    approximations on samples of :func:`auto_sample_rows` rows, EK-FAC (factors, for the comparison)
    and the low-rank Hessian (Lanczos, stopped when its top ``AUTO_RANK`` eigenvalues settle), and
    keeps the one whose relative residual ‖v − (H + λI) S v‖ / ‖v‖ on ``probes`` probe gradients is
    smaller (fidelity measured, not assumed); EK-FAC, if it wins, is rebuilt on every row, or on as
    many as its measured build time per row fits in ``AUTO_BUDGET_SECONDS``.
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
    block = min(max(n_vectors, 1), block or n_vectors or 1)
    small, large = (min(block, size, len(rows)) for size in PROBE_BLOCKS)  # no more probes than sampled rows
    g = gradient_matrix(adapter, take(inputs, rows[:large]), labels[rows[:large]], flat=flat)
    v = g[:min(small, probes)]  # the probe gradients the approximations' residuals are measured on
    full_hvp(adapter, flat, take(x, slice(0, 2)), y[:2], v)  # warm-up: the first call of a path allocates (0.3 s)

    def residual(solver: InverseHVPSolver) -> float:
        s = solver.solve(v)
        hs = full_hvp(adapter, flat, x, y, s, chunk_size=probe_chunk(len(rows), len(s))) + ridge * s
        return float(((v - hs).norm(dim=1) / v.norm(dim=1).clamp_min(1e-30)).max())

    def timed_pass(k: int) -> float:  # seconds for k vectors over all N rows
        started = time.perf_counter()
        full_hvp(adapter, flat, x, y, g[:k], chunk_size=probe_chunk(len(rows), k))
        return (time.perf_counter() - started) * n / len(rows)

    t_small = timed_pass(small)
    t_large = timed_pass(large) if large > small else t_small
    per_vector = max((t_large - t_small) / (large - small), 0.0) if large > small else t_small / small
    fixed = max(t_small - per_vector * small, 0.0)

    def per_pass(k: int) -> float:
        return fixed + per_vector * k

    full, rest = divmod(max(n_vectors, 1), block)
    predicted = {"cg": (CG_EXPECTED_ITERATIONS + 1) * (full * per_pass(block) + (per_pass(rest) if rest else 0.0))}
    if p <= EXACT_MAX_PARAMS:  # P Hessian columns, in blocks of the larger probe's size
        predicted["exact"] = per_pass(large) * p / large
    measured = {"hvp_pass_s": t_large, "hvp_pass_vectors": large, "hvp_pass_fixed_s": fixed,
                "hvp_pass_per_vector_s": per_vector, "probe_rows": len(rows)}
    best = min(predicted, key=predicted.get)
    if name == "auto" and predicted[best] <= AUTO_BUDGET_SECONDS:
        plan = SolverPlan(best, f"{best}: exact-quality, predicted {predicted[best]:.1f} s within the budget of "
                          f"{AUTO_BUDGET_SECONDS:.0f} s ({n_vectors} vectors, {p:,} parameters, {n:,} rows)",
                          predicted, measured=measured)
        # auto's CG runs unpreconditioned: at a spectrum-relative ridge the damped Hessian is well-conditioned,
        # and an EK-FAC preconditioner (256 rows) never saved a block-CG iteration (solver-auto.md).
        return plan
    if name in ("ekfac", "cg"):  # by name: EK-FAC is the answer, or CG's preconditioner
        ekfac = EkfacSolver(adapter, inputs, labels, ridge=ridge, flat=flat)
        return SolverPlan(name, "requested", predicted, ekfac, residual(ekfac), measured)
    # Both approximations on the same sample of rows first (what they cost there is timed); the winner
    # is then the low-rank solver as built, or EK-FAC rebuilt on as many rows as the budget allows.
    sampled = auto_sample_rows(n)
    sample = torch.randperm(n, generator=torch.Generator().manual_seed(seed + 1))[:sampled]
    started = time.perf_counter()
    trial = EkfacSolver(adapter, take(inputs, sample), labels[sample], ridge=ridge, flat=flat)
    predicted["ekfac"] = measured["ekfac_sample_build_s"] = time.perf_counter() - started
    predicted["ekfac"] *= n / len(sample)
    started = time.perf_counter()
    low = LowRankSolver(adapter, inputs, labels, ridge=ridge, rank=AUTO_RANK, rows=sampled, seed=seed,
                        flat=flat, iterations=3 * AUTO_RANK, early_stop=True)
    predicted["lowrank"] = measured["lowrank_build_s"] = time.perf_counter() - started
    plan = SolverPlan("lowrank", "", predicted, None, residual(trial), measured, low, residual(low))
    rebuilt = ""
    if plan.ekfac_residual < plan.lowrank_residual:
        plan.name, plan.ekfac = "ekfac", trial
        # Rebuilt on more rows, as many as its measured cost per row fits in the budget (all, where it can).
        more = min(n, max(sampled, int(sampled * AUTO_BUDGET_SECONDS / max(measured["ekfac_sample_build_s"], 1e-9))))
        if more > sampled:
            rows_more = torch.randperm(n, generator=torch.Generator().manual_seed(seed + 2))[:more].sort().values
            plan.ekfac = EkfacSolver(adapter, inputs if more == n else take(inputs, rows_more),
                                     labels if more == n else labels[rows_more], ridge=ridge, flat=flat)
        rebuilt = f"; EK-FAC {'rebuilt' if more > sampled else 'kept as built'} on {more:,} of {n:,} rows"
        measured["ekfac_rows"] = more
    plan.reason = (f"{plan.name}: exact-quality solvers predicted {predicted[best]:.0f} s ({best}), over the budget "
                   f"of {AUTO_BUDGET_SECONDS:.0f} s; relative residual on probe gradients: EK-FAC "
                   f"{plan.ekfac_residual:.3f} (factors from {len(sample)} rows), low-rank (rank "
                   f"{len(low.eigenvalues)}, {sampled} rows) {plan.lowrank_residual:.3f}{rebuilt}")
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
