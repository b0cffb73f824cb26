import torch

from fastif_engine.influence import hessian
from fastif_engine.influence.gradients import FlatParams
from fastif_engine.influence.hessian import explicit_hessian, full_hvp, hvp_on_batch, spectrum, top_eigenvalue
from fastif_engine.models.training import objective
from tests.exact import reference_hessian


def test_explicit_hessian_matches_autograd(small_model, digits):
    x, y = digits["train"]
    x, y = x[:120], y[:120]
    flat = FlatParams.of(small_model)
    expected = reference_hessian(small_model, x, y)
    got = explicit_hessian(small_model, flat, x, y, chunk_size=50, columns_per_call=100)
    torch.testing.assert_close(got, expected, rtol=1e-8, atol=1e-10)


def test_hvp_on_batch_matches_explicit_product(logreg, digits):
    x, y = digits["train"]
    flat = FlatParams.of(logreg)
    h = reference_hessian(logreg, x[:16], y[:16])
    v = torch.randn(5, flat.size, dtype=torch.float64, generator=torch.Generator().manual_seed(1))
    torch.testing.assert_close(hvp_on_batch(logreg, flat, x[:16], y[:16], v), v @ h)
    torch.testing.assert_close(full_hvp(logreg, flat, x[:100], y[:100], v, chunk_size=30),
                               v @ reference_hessian(logreg, x[:100], y[:100]))


def test_one_vector_hvp_matches_explicit_product(small_model, digits):
    """A single vector takes plain autograd's reverse-over-reverse path, many the vmapped one: the
    same exact product either way, also when the caller holds no_grad."""
    x, y = digits["train"]
    flat = FlatParams.of(small_model)
    h = reference_hessian(small_model, x[:12], y[:12])
    v = torch.randn(3, flat.size, dtype=torch.float64, generator=torch.Generator().manual_seed(2))
    many = hvp_on_batch(small_model, flat, x[:12], y[:12], v)
    torch.testing.assert_close(many, v @ h)
    for i in range(3):
        with torch.no_grad():
            one = hvp_on_batch(small_model, flat, x[:12], y[:12], v[i:i + 1])
        torch.testing.assert_close(one, v[i:i + 1] @ h)
    one = hvp_on_batch(small_model, flat, x[:1], y[:1], v[:1])  # B = 1, as fast s_test uses
    torch.testing.assert_close(one, v[:1] @ reference_hessian(small_model, x[:1], y[:1]))


def test_objective_gradient_vanishes_at_the_trained_logreg(logreg, digits):
    """The Hessian is only meaningful at a stationary point of the same objective."""
    x, y = digits["train"]
    params = [p for p in logreg.model.parameters() if p.requires_grad]
    g = torch.autograd.grad(objective(logreg, x, y), params)
    assert max(float(t.abs().max()) for t in g) < 1e-6


def test_top_eigenvalue_is_the_largest_batch_eigenvalue(logreg, digits):
    x, y = digits["train"]
    flat = FlatParams.of(logreg)
    estimate = top_eigenvalue(logreg, flat, x, y, batch_size=len(y), n_batches=1, iterations=200, rtol=0.0)
    exact = float(torch.linalg.eigvalsh(reference_hessian(logreg, x, y)).abs().max())
    assert abs(estimate - exact) / exact < 1e-3


def test_top_eigenvalue_stops_early_close_to_the_answer(logreg, digits, monkeypatch):
    """The default stop (a step that moves no estimate by 1e-3) lands within 1% of the exact top
    eigenvalue of each sampled row's Hessian, in fewer steps than the budget."""
    x, y = digits["train"]
    flat = FlatParams.of(logreg)
    calls = []
    original = hessian.hvp_on_batch

    def counted(*args, **kwargs):
        calls.append(1)
        return original(*args, **kwargs)

    monkeypatch.setattr(hessian, "hvp_on_batch", counted)
    estimate = top_eigenvalue(logreg, flat, x, y, batch_size=1, n_batches=4, iterations=30, seed=3)
    gen = torch.Generator().manual_seed(3)
    rows = [torch.randperm(len(y), generator=gen)[:1] for _ in range(4)]
    exact = max(float(torch.linalg.eigvalsh(reference_hessian(logreg, x[r], y[r])).abs().max()) for r in rows)
    assert abs(estimate - exact) / exact < 1e-2
    assert len(calls) < 4 * 30


def test_spectrum_matches_the_explicit_hessian(small_model, digits):
    """Top eigenvalue (Lanczos) and mean eigenvalue (Hutchinson) of the full-data Hessian vs eigvalsh;
    the ridge ratios the log and report print follow from them."""
    x, y = digits["train"]
    flat = FlatParams.of(small_model)
    exact = torch.linalg.eigvalsh(reference_hessian(small_model, x, y))
    spec = spectrum(small_model, flat, x, y, probes=64, iterations=40)
    assert spec.rows == len(y)
    assert abs(spec.largest - float(exact[-1])) / float(exact[-1]) < 1e-3
    assert abs(spec.mean - float(exact.mean())) / float(exact.mean()) < 0.05  # Hutchinson, 64 probes: within 2% on three seeds
    ratios = spec.relative(0.5)
    assert ratios["ridge_over_largest"] == 0.5 / spec.largest and ratios["ridge_over_mean"] == 0.5 / spec.mean


def test_probe_chunk_bounds_the_row_vector_pairs_of_one_call():
    """A probe's HVP call holds activations for every (row, vector) pair: at most PROBE_ROW_VECTORS × rows."""
    for rows, vectors in [(32, 16), (32, 1), (512, 95), (5, 100), (32, 4)]:
        chunk = hessian.probe_chunk(rows, vectors)
        assert 1 <= chunk <= rows
        assert chunk * vectors <= max(hessian.PROBE_ROW_VECTORS * rows, vectors)
    assert hessian.probe_chunk(32, 16) == 8 and hessian.probe_chunk(32, 4) == 32
