import numpy as np
import pytest
import torch
from scipy.stats import spearmanr

from fastif_engine.errors import LissaDivergenceError, SolverSetupError
from fastif_engine.gradients import FlatParams, gradient_matrix
from fastif_engine.influence import influence_on_candidates, self_influence
from fastif_engine.solvers import ExactSolver, LissaSettings, LissaSolver, LowRankSolver, lissa_block, make_solver
from tests.test_hessian import reference_hessian


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


@pytest.mark.parametrize("batch_size,repeats", [(1, 8), (16, 4)])
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
