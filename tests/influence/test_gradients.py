import numpy as np
import pytest
import torch

from fastif_engine.errors import NonFiniteGradientError
from fastif_engine.influence.gradients import FlatParams, gradient_matrix, per_sample_gradients
from tests.exact import loop_gradients


def test_batched_gradients_equal_per_example_autograd(small_model, digits):
    x, y = digits["train"]
    expected = loop_gradients(small_model, x[:37], y[:37])
    got = gradient_matrix(small_model, x[:37], y[:37], chunk_size=10)
    assert got.shape == (37, FlatParams.of(small_model).size)
    torch.testing.assert_close(got, expected, rtol=1e-10, atol=1e-12)


def test_index_selects_rows_and_chunks_cover_them(mlp, digits):
    x, y = digits["train"]
    index = np.array([5, 3, 300, 3])
    parts = list(per_sample_gradients(mlp, x, y, chunk_size=3, index=index))
    assert [p.stop - p.start for p, _ in parts] == [3, 1]
    got = torch.cat([g for _, g in parts])
    torch.testing.assert_close(got, loop_gradients(mlp, x[index], y[index]))


def test_non_finite_gradient_names_the_row(logreg, digits):
    x, y = digits["train"]
    x = x[:20].clone()
    x[13, 5] = float("nan")
    with pytest.raises(NonFiniteGradientError, match="row 13"):
        gradient_matrix(logreg, x, y[:20])


def test_frozen_parameters_are_not_differentiated(mlp):
    names = [n for n, _ in mlp.model.named_parameters()]
    assert FlatParams.of(mlp).names == tuple(names)
    mlp.model.body[0].weight.requires_grad_(False)
    try:
        flat = FlatParams.of(mlp)
        assert "body.0.weight" not in flat.names
        assert flat.size == sum(p.numel() for p in mlp.model.parameters() if p.requires_grad)
    finally:
        mlp.model.body[0].weight.requires_grad_(True)


def test_chunk_rows_follow_the_memory_budget():
    from fastif_engine.influence.gradients import MAX_CHUNK_ROWS, chunk_rows

    p = 1_775_234  # text-minilm's top layer + head
    assert chunk_rows(p, 0.5) == int(0.5e9 // (3 * 4 * p)) == 23  # three [rows, P] float32 copies fit 0.5 GB
    assert chunk_rows(p, 1.0) == 46 and chunk_rows(p, 1e-6) == 1
    assert chunk_rows(650, 0.5) == MAX_CHUNK_ROWS  # small models: activations, not gradients, bound the chunk


def test_fit_check_measures_the_training_gradient_at_the_weights(logreg, digits):
    """‖∇R(θ̂)‖ equals autograd's gradient of the whole objective (L2 included); a converged logreg reads as
    stationary; the same model with its weights moved reads higher, and one where every row pulls the same way
    (zero weights, rows of one class) is far from a minimum."""
    import copy

    from fastif_engine.influence.gradients import STATIONARY_RATIO, fit_check
    from fastif_engine.models.training import objective

    x, y = digits["train"]
    at_minimum = fit_check(logreg, x, y)
    assert at_minimum["stationary"] and at_minimum["ratio"] < 1e-4 and at_minimum["gradient_rows"] == len(y)
    moved = copy.deepcopy(logreg)
    with torch.no_grad():
        moved.model.head.weight.mul_(0.3)
    params = [p for p in moved.model.parameters() if p.requires_grad]
    exact = torch.cat([g.reshape(-1) for g in torch.autograd.grad(objective(moved, x, y), params)]).norm()
    check = fit_check(moved, x, y)
    assert check["gradient_norm"] == pytest.approx(float(exact), rel=1e-6)
    assert check["ratio"] > 0.1 and check["stationary"] == (check["ratio"] <= STATIONARY_RATIO)
    with torch.no_grad():
        moved.model.head.weight.zero_()
        moved.model.head.bias.zero_()
    one_way = fit_check(moved, x[y == 0], y[y == 0])
    assert not one_way["stationary"] and one_way["ratio"] > 0.7  # 0.81
