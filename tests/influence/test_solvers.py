import numpy as np
import pytest
import torch
from scipy.stats import spearmanr

from fastif_engine.errors import LissaDivergenceError, SolverSetupError
from fastif_engine.influence.gradients import FlatParams, gradient_matrix
from fastif_engine.influence.krylov import LowRankSolver
from fastif_engine.influence.planning import make_solver
from fastif_engine.influence.scores import influence_on_candidates, self_influence
from fastif_engine.influence.solvers import ExactSolver, LissaSettings, LissaSolver, lissa_block
from tests.exact import reference_hessian


def misclassified(adapter, x, y, n):
    """The first n wrong predictions: the examples fastif computes s_test for."""
    wrong = (adapter.predict(x) != y).nonzero().ravel()[:n]
    assert len(wrong) == n, "the fixture model is expected to make at least n mistakes"
    return x[wrong], y[wrong]


def test_exact_solver_equals_numpy_solve_of_autograd_hessian(logreg, digits):
    x, y = digits["train"]
    xt, yt = digits["test"]
    v = gradient_matrix(logreg, xt[:6], yt[:6])
    ridge = 0.05
    h = reference_hessian(logreg, x, y).numpy()
    expected = np.linalg.solve(h + ridge * np.eye(len(h)), v.numpy().T).T
    got = ExactSolver(logreg, x, y, ridge=ridge).solve(v)
    np.testing.assert_allclose(got.numpy(), expected, rtol=1e-7, atol=1e-10)


@pytest.mark.parametrize("batch_size,repeats", [pytest.param(1, 8, marks=pytest.mark.slow), (16, 4)])
def test_lissa_matches_the_exact_damped_inverse(small_model, digits, batch_size, repeats):
    """FastIF's regime (B=1, several repeats) and a mid-size batch both reach cosine ≥ 0.99."""
    x, y = digits["train"]
    xt, yt = misclassified(small_model, *digits["test"], n=8)
    v = gradient_matrix(small_model, xt, yt)
    settings = LissaSettings(depth=1000, repeats=repeats, batch_size=batch_size, damping=0.01, seed=3)
    lissa = LissaSolver(small_model, x, y, settings)
    exact = ExactSolver(small_model, x, y, ridge=lissa.ridge)
    s_l, s_e = lissa.solve(v), exact.solve(v)
    cos = torch.nn.functional.cosine_similarity(s_l, s_e, dim=1)
    assert float(cos.min()) >= 0.99, cos

    # Influence over every training row: Pearson of LiSSA vs exact scores, per test example.
    inf_l = influence_on_candidates(small_model, x, y, s_l).as_matrix(len(yt), len(y))
    inf_e = influence_on_candidates(small_model, x, y, s_e).as_matrix(len(yt), len(y))
    pearson = [np.corrcoef(a, b)[0, 1] for a, b in zip(inf_l, inf_e)]
    assert min(pearson) >= 0.99, pearson


def test_lissa_blocks_bound_memory_without_changing_results(logreg, digits):
    """Vectors solved a few at a time (the memory budget's blocks) get the same s_test as all at once."""
    x, y = digits["train"]
    v = gradient_matrix(logreg, *[t[:7] for t in digits["test"]])
    settings = LissaSettings(depth=50, batch_size=4, repeats=2, damping=0.01, scale=50.0, seed=1)
    together = LissaSolver(logreg, x, y, settings, block=7)
    apart = LissaSolver(logreg, x, y, settings, block=3)
    torch.testing.assert_close(apart.solve(v), together.solve(v), rtol=1e-5, atol=1e-9)
    assert len(apart.iterations_used) == 3 * 2 and len(together.iterations_used) == 2
    # the block size follows the budget: 5 (B = 1) to 10 (B = 16) copies of m × P float32 values within it
    assert lissa_block(1_775_234, 0.5, batch_size=16) == 7 and lissa_block(1_775_234, 1.0, batch_size=16) == 14
    assert lissa_block(1_775_234, 0.25, batch_size=1) == 7  # 0.25e9 // (5 × 4 × 1,775,234)
    assert make_solver("lissa", logreg, x, y, settings, memory_budget=10.5 * 6.0 * 4 * 650 / 1e9).block == 10  # B = 4: 6 copies
    assert lissa_block(10**9, 0.5) == 1 and make_solver("lissa", logreg, x, y, settings, memory_budget=1e-5).block == 1


def test_small_scale_diverges_with_a_clear_error(logreg, digits):
    x, y = digits["train"]
    v = gradient_matrix(logreg, *[t[:2] for t in digits["test"]])
    solver = LissaSolver(logreg, x, y, LissaSettings(depth=200, scale=1e-6, damping=0.01))
    with pytest.raises(LissaDivergenceError, match=r"diverged.*scale 1e-06 is too small.*--scale"):
        solver.solve(v)


def test_explicit_scale_is_never_changed(logreg, digits):
    x, y = digits["train"]
    solver = LissaSolver(logreg, x, y, LissaSettings(depth=5, scale=123.0, damping=0.02))
    assert solver.settings.scale == 123.0
    assert solver.ridge == pytest.approx(0.02 * 123.0)


def test_tolerance_stops_early_and_stays_accurate(logreg, digits):
    x, y = digits["train"]
    v = gradient_matrix(logreg, *[t[:4] for t in digits["test"]])
    settings = LissaSettings(depth=5000, batch_size=len(y), damping=0.01, tolerance=1e-6)
    lissa = LissaSolver(logreg, x, y, settings)
    s = lissa.solve(v)
    assert lissa.iterations_used[0] < 5000
    exact = ExactSolver(logreg, x, y, ridge=lissa.ridge).solve(v)
    assert float(torch.nn.functional.cosine_similarity(s, exact).min()) > 0.9999


def test_make_solver_shares_the_ridge(logreg, digits):
    x, y = digits["train"]
    settings = LissaSettings(depth=10, damping=0.01, batch_size=8)
    assert make_solver("exact", logreg, x, y, settings).ridge == pytest.approx(
        make_solver("lissa", logreg, x, y, settings).ridge)
    with pytest.raises(ValueError, match="unknown solver 'newton'"):
        make_solver("newton", logreg, x, y, settings)


def test_exact_solver_refuses_large_models(mlp, digits):
    x, y = digits["train"]
    with pytest.raises(SolverSetupError, match="limited to 100 parameters"):
        ExactSolver(mlp, x, y, max_params=100)


def test_exact_solver_reports_an_indefinite_hessian(mlp, digits):
    """An undamped MLP Hessian far from a minimum can be indefinite: say which ridge fixes it."""
    x, y = digits["train"]
    with torch.no_grad():
        saved = [p.clone() for p in mlp.model.parameters()]
        for p in mlp.model.parameters():
            p.add_(torch.randn_like(p, generator=torch.Generator().manual_seed(0)))
    try:
        with pytest.raises(SolverSetupError, match="not positive definite"):
            ExactSolver(mlp, x, y, ridge=0.0)
    finally:
        with torch.no_grad():
            for p, s in zip(mlp.model.parameters(), saved):
                p.copy_(s)


@pytest.mark.parametrize("bad", [dict(depth=0), dict(damping=1.5), dict(scale=-1.0)])
def test_settings_are_validated(bad):
    with pytest.raises(ValueError):
        LissaSettings(**bad)


def test_low_rank_solver_at_full_rank_is_the_exact_inverse(logreg, digits):
    x, y = digits["train"]
    v = gradient_matrix(logreg, *[t[:6] for t in digits["test"]])
    p = FlatParams.of(logreg).size
    exact = ExactSolver(logreg, x, y, ridge=0.05).solve(v)
    low = LowRankSolver(logreg, x, y, ridge=0.05, rank=p, rows=len(y)).solve(v)
    np.testing.assert_allclose(low.numpy(), exact.numpy(), rtol=1e-6, atol=1e-9)


def test_low_rank_self_influence_ranks_rows_like_the_exact_inverse(small_model, digits):
    """Rank 32 of ~650–1,800 parameters: the ranking of rows by self-influence survives."""
    x, y = digits["train"]
    exact = self_influence(small_model, x, y, ExactSolver(small_model, x, y, ridge=0.05))
    low = self_influence(small_model, x, y, LowRankSolver(small_model, x, y, ridge=0.05, rank=32, rows=len(y)))
    assert spearmanr(exact, low)[0] >= 0.99
    assert np.corrcoef(exact, low)[0, 1] >= 0.99


def test_low_rank_solver_needs_a_ridge(logreg, digits):
    x, y = digits["train"]
    with pytest.raises(SolverSetupError, match="ridge"):
        LowRankSolver(logreg, x, y, ridge=0.0)


# ---- EK-FAC, CG and auto: each against the exact damped inverse ----

def _ridge(model, x, y, damping):
    return make_solver("lissa", model, x, y, LissaSettings(damping=damping)).ridge


def _influence_pearson(model, x, y, s, reference):
    a = influence_on_candidates(model, x, y, s).as_matrix(len(s), len(y))
    b = influence_on_candidates(model, x, y, reference).as_matrix(len(s), len(y))
    return np.array([np.corrcoef(u, w)[0, 1] for u, w in zip(a, b)])


@pytest.mark.parametrize("damping,floor", [(0.01, 0.96), (0.001, 0.87)])
def test_ekfac_approximates_the_exact_damped_inverse(small_model, digits, damping, floor):
    """EK-FAC (Gauss-Newton, Kronecker-factored per layer) against the explicit Hessian, beside the
    no-Hessian baseline S = V / λ: closer than it, at the default ridge and at 10× less damping."""
    from fastif_engine.influence.kfac import EkfacSolver

    x, y = digits["train"]
    xt, yt = misclassified(small_model, *digits["test"], n=8)
    v = gradient_matrix(small_model, xt, yt)
    ridge = _ridge(small_model, x, y, damping)
    exact = ExactSolver(small_model, x, y, ridge=ridge).solve(v)
    ekfac = EkfacSolver(small_model, x, y, ridge=ridge)
    pearson = _influence_pearson(small_model, x, y, ekfac.solve(v), exact)
    baseline = _influence_pearson(small_model, x, y, v / ridge, exact)
    assert pearson.mean() >= floor and pearson.mean() > baseline.mean() + 0.01, (pearson, baseline)
    assert ekfac.describe()["kronecker"] == [n for n in FlatParams.of(small_model).names if n.endswith("weight")]


def test_ekfac_chunked_factors_equal_row_by_row_and_survive_saving(mlp, digits):
    """Per-row gradient sums from a batched chunk == one row at a time; saved factors solve the same."""
    from fastif_engine.influence.kfac import EkfacSolver

    x, y = digits["train"]
    v = gradient_matrix(mlp, *[t[:5] for t in digits["test"]])
    batched = EkfacSolver(mlp, x, y, ridge=0.05, chunk_size=64)
    single = EkfacSolver(mlp, x, y, ridge=0.05, chunk_size=1)
    torch.testing.assert_close(batched.solve(v), single.solve(v), rtol=1e-6, atol=1e-9)
    restored = EkfacSolver.from_state(mlp, batched.state(), ridge=0.05)
    torch.testing.assert_close(restored.solve(v), batched.solve(v), rtol=0, atol=0)


@pytest.mark.parametrize("damping", [0.01, 0.001])
@pytest.mark.parametrize("preconditioned", [False, True])
def test_cg_reaches_the_exact_damped_inverse(small_model, digits, damping, preconditioned):
    from fastif_engine.influence.kfac import EkfacSolver
    from fastif_engine.influence.krylov import CgSolver

    x, y = digits["train"]
    xt, yt = misclassified(small_model, *digits["test"], n=8)
    v = gradient_matrix(small_model, xt, yt)
    ridge = _ridge(small_model, x, y, damping)
    exact = ExactSolver(small_model, x, y, ridge=ridge).solve(v)
    pre = EkfacSolver(small_model, x, y, ridge=ridge) if preconditioned else None
    cg = CgSolver(small_model, x, y, ridge=ridge, preconditioner=pre)
    s = cg.solve(v)
    assert float(torch.nn.functional.cosine_similarity(s, exact).min()) > 0.99999
    assert float(cg.residuals.max()) <= 1e-4 and cg.iterations_used[0] < 50
    assert _influence_pearson(small_model, x, y, s, exact).min() > 0.99999


def test_lanczos_stops_once_the_top_eigenvalues_settle(logreg, digits):
    x, y = digits["train"]
    top = np.linalg.eigvalsh(reference_hessian(logreg, x, y).numpy())[::-1][:4]
    low = LowRankSolver(logreg, x, y, ridge=0.05, rank=4, rows=len(y), iterations=200, early_stop=True)
    np.testing.assert_allclose(low.eigenvalues.numpy(), top, rtol=2e-2)
    from fastif_engine.influence.hessian import lanczos_eigenpairs
    steps = []
    flat = FlatParams.of(logreg)

    def counted(q):
        steps.append(1)
        from fastif_engine.influence.hessian import full_hvp
        return full_hvp(logreg, flat, x, y, q)

    lanczos_eigenpairs(counted, flat.size, iterations=200, dtype=torch.float64, converged=4)
    assert len(steps) < 200


def test_block_cg_shares_one_krylov_space_and_survives_repeated_vectors(small_model, digits):
    """Solved together, vectors converge in fewer iterations than the slowest of them alone; a block
    with a vector twice (rank-deficient) still reaches the exact damped inverse for both copies."""
    from fastif_engine.influence.krylov import CgSolver

    x, y = digits["train"]
    xt, yt = misclassified(small_model, *digits["test"], n=8)
    v = gradient_matrix(small_model, xt, yt)
    ridge = _ridge(small_model, x, y, 0.001)
    exact = ExactSolver(small_model, x, y, ridge=ridge).solve(v)
    alone = CgSolver(small_model, x, y, ridge=ridge)
    for row in v:
        alone.solve(row[None])
    block = CgSolver(small_model, x, y, ridge=ridge)
    s = block.solve(torch.cat([v, v[:1]]))
    assert block.iterations_used[0] < max(alone.iterations_used)
    assert float(block.residuals.max()) <= 1e-4
    cosine = torch.nn.functional.cosine_similarity(s, torch.cat([exact, exact[:1]]))
    assert float(cosine.min()) > 0.99999


def test_auto_takes_an_exact_quality_solver_where_it_is_cheap(logreg, digits):
    from fastif_engine.influence.planning import plan_solver

    x, y = digits["train"]
    plan = plan_solver("auto", logreg, x, y, ridge=0.05, n_vectors=20)
    assert plan.name in ("exact", "cg") and "exact-quality" in plan.reason
    assert set(plan.predicted_seconds) == {"exact", "cg"}
    assert plan.as_dict()["predicted_seconds"][plan.name] <= 30


def test_auto_compares_the_approximations_by_measured_residual(mlp, digits, monkeypatch):
    """With no time for an exact-quality solver, auto builds EK-FAC and the low-rank Hessian and keeps
    the one with the smaller residual on probe gradients; the residual it reports is the real one."""
    import fastif_engine.influence.planning as planning

    monkeypatch.setattr(planning, "AUTO_BUDGET_SECONDS", 0.0)
    x, y = digits["train"]
    monkeypatch.setattr(planning, "AUTO_SAMPLE_ROWS", (len(y), len(y)))  # both compared as built on every row
    plan = planning.plan_solver("auto", mlp, x, y, ridge=0.05, n_vectors=20, probe_rows=len(y))
    assert plan.name == ("lowrank" if plan.lowrank_residual < plan.ekfac_residual else "ekfac")
    assert "over the budget" in plan.reason
    chosen = plan.lowrank if plan.name == "lowrank" else plan.ekfac
    v = gradient_matrix(mlp, x[:4], y[:4])
    exact = ExactSolver(mlp, x, y, ridge=0.05)
    direct = ((v - (exact.hessian @ chosen.solve(v).T).T - 0.05 * chosen.solve(v)).norm(dim=1) / v.norm(dim=1)).max()
    assert min(plan.lowrank_residual, plan.ekfac_residual) == pytest.approx(float(direct), rel=1e-6)


def test_auto_rebuilds_ekfac_on_as_many_rows_as_its_budget_allows(logreg, digits, monkeypatch):
    """EK-FAC, when it wins the comparison, is rebuilt on every row if its measured cost per row fits
    the budget, and kept as built on the sample if not (55,000 images: minutes, not seconds)."""
    import fastif_engine.influence.planning as planning

    x, y = digits["train"]
    monkeypatch.setattr(planning, "CG_EXPECTED_ITERATIONS", 10**9)  # no exact-quality solver within budget
    monkeypatch.setattr(planning, "EXACT_MAX_PARAMS", 0)
    plan = planning.plan_solver("auto", logreg, x, y, ridge=0.05, n_vectors=20)
    assert plan.name == "ekfac" and plan.ekfac_residual < plan.lowrank_residual  # logreg: EK-FAC fits better
    assert plan.ekfac.n == len(y) and f"rebuilt on {len(y)} of {len(y)} rows" in plan.reason
    monkeypatch.setattr(planning, "AUTO_BUDGET_SECONDS", 1e-6)
    plan = planning.plan_solver("auto", logreg, x, y, ridge=0.05, n_vectors=20)
    sampled = planning.auto_sample_rows(len(y))
    assert plan.ekfac.n == sampled < len(y) and f"kept as built on {sampled} of" in plan.reason
