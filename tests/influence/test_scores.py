
import numpy as np
import pytest
import torch
from sklearn.datasets import load_breast_cancer

from fastif_engine.influence.gradients import gradient_matrix
from fastif_engine.influence.scores import influence_and_net_harm, influence_on_candidates, self_influence
from fastif_engine.influence.solvers import ExactSolver
from fastif_engine.models import LogisticRegressionAdapter
from fastif_engine.models.training import TrainSettings
from tests.exact import leave_one_out_changes, reference_hessian


@pytest.mark.parametrize("pairs_per_row", [0, 100], ids=["shared-gradients", "forward-mode"])
def test_candidate_scores_equal_dense_formula(mlp, digits, monkeypatch, pairs_per_row):
    """Both ways of scoring (shared per-sample gradients; one jvp per test example) give exactly
    −s_test·∇L(z) for each requested pair, in order."""
    monkeypatch.setattr("fastif_engine.influence.scores.FORWARD_MODE_PAIRS_PER_ROW", pairs_per_row)
    x, y = digits["train"]
    xt, yt = digits["test"]
    gen = torch.Generator().manual_seed(0)
    s = torch.randn(5, sum(p.numel() for p in mlp.model.parameters()), dtype=torch.float64, generator=gen)
    rng = np.random.default_rng(0)
    cands = rng.integers(0, len(y), size=(5, 40))
    res = influence_on_candidates(mlp, x, y, s, cands, chunk_size=17)
    g = gradient_matrix(mlp, x, y)
    expected = -(s @ g.T).numpy()[np.repeat(np.arange(5), 40), cands.ravel()]
    np.testing.assert_allclose(res.influence, expected, rtol=1e-10)
    np.testing.assert_array_equal(res.train_index, cands.ravel())
    assert res.n_distinct_candidates == len(np.unique(cands))


@pytest.mark.parametrize("pairs_per_row", [0, 100], ids=["shared-gradients", "forward-mode"])
def test_scores_in_groups_of_errors_from_disk_equal_all_at_once(mlp, digits, monkeypatch, tmp_path, pairs_per_row):
    """Holding at most 2 of 7 s_test vectors (read from a file) gives the same pairs, in the same
    order, as holding all of them."""
    from fastif_engine.store.files import NpyRows

    monkeypatch.setattr("fastif_engine.influence.scores.FORWARD_MODE_PAIRS_PER_ROW", pairs_per_row)
    x, y = digits["train"]
    s = torch.randn(7, sum(p.numel() for p in mlp.model.parameters()), generator=torch.Generator().manual_seed(1))
    np.save(tmp_path / "s.npy", s.numpy())
    rng = np.random.default_rng(1)
    cands = [rng.integers(0, len(y), size=n) for n in (30, 5, 30, 12, 0, 30, 8)]  # ragged, one empty
    whole = influence_on_candidates(mlp, x, y, s, cands, chunk_size=13)
    seen = []
    grouped = influence_on_candidates(mlp, x, y, NpyRows(tmp_path / "s.npy"), cands, chunk_size=13,
                                      max_vectors=2, progress=lambda done, total: seen.append((done, total)))
    np.testing.assert_allclose(grouped.influence, whole.influence, rtol=1e-5, atol=1e-7)
    np.testing.assert_array_equal(grouped.test_pos, whole.test_pos)
    np.testing.assert_array_equal(grouped.train_index, whole.train_index)
    assert grouped.n_distinct_candidates == whole.n_distinct_candidates
    assert seen == [(i, 4) for i in range(1, 5)]  # 7 errors in groups of ≤ 2


@pytest.mark.parametrize("by_length", [False, True], ids=["in-order", "by-length"])
def test_one_pass_gives_the_dense_influence_and_net_harm_split_over_rows(mlp, digits, monkeypatch, by_length):
    """Per-error influence and per-fold net harm from one gradient pass, over two interleaved parts of
    the training rows (as two workers score them), equal −s·∇L(z) and −fold·∇L(z) of the dense gradient
    matrix; each pair comes from the part that holds its row, in list order within the part."""
    x, y = digits["train"]
    n, p = len(y), sum(q.numel() for q in mlp.model.parameters())
    if by_length:  # rows scored in order of a (made-up) length, as the text model's are
        monkeypatch.setattr(mlp, "row_lengths", lambda inputs: (np.arange(n) * 7919) % 101)
    gen = torch.Generator().manual_seed(2)
    s, folds = torch.randn(4, p, generator=gen), torch.randn(3, p, generator=gen)
    rng = np.random.default_rng(2)
    cands = [rng.integers(0, n, size=k) for k in (50, 0, 9, 50)]  # ragged, one error without candidates
    g = gradient_matrix(mlp, x, y)
    dense, dense_folds = -(s.double() @ g.T).numpy(), -(g @ folds.double().T).numpy()
    seen = []
    for part in range(2):
        rows = np.arange(n)[part::2]
        res, per_fold = influence_and_net_harm(mlp, x, y, s, cands, folds, rows=rows, chunk_size=23,
                                               progress=lambda done, total: seen.append(total))
        np.testing.assert_allclose(per_fold, dense_folds[rows], rtol=1e-4, atol=1e-6)
        mine = [c[c % 2 == part] for c in cands]
        np.testing.assert_array_equal(res.train_index, np.concatenate(mine))
        np.testing.assert_array_equal(res.test_pos, np.repeat(np.arange(4), [len(c) for c in mine]))
        np.testing.assert_allclose(res.influence, dense[res.test_pos, res.train_index], rtol=1e-4, atol=1e-6)
    assert seen[-1] == -(-(n // 2) // 23)  # progress counts the chunks of one part's rows
    # few candidates per chunk: their gradients' dots are taken a few rows at a time, same numbers
    res, _ = influence_and_net_harm(mlp, x, y, s, [cands[2]] * 4, folds, chunk_size=64)
    np.testing.assert_allclose(res.influence, dense[res.test_pos, res.train_index], rtol=1e-4, atol=1e-6)
    # room for 2 errors beside the 3 folds: those two in the pass, the others after it, same pairs in order
    for held in (5, 3):
        res, per_fold = influence_and_net_harm(mlp, x, y, s, cands, folds, chunk_size=23, max_vectors=held)
        np.testing.assert_array_equal(res.train_index, np.concatenate(cands))
        np.testing.assert_allclose(res.influence, dense[res.test_pos, res.train_index], rtol=1e-4, atol=1e-6)
        np.testing.assert_allclose(per_fold, dense_folds, rtol=1e-4, atol=1e-6)


def test_error_groups_put_errors_that_share_candidates_together():
    from fastif_engine.influence.scores import error_groups

    # two neighbourhoods, their errors interleaved: 0, 2, 4 near rows 0–9; 1, 3, 5 near rows 100–109
    rng = np.random.default_rng(0)
    lists = [rng.choice(np.arange(10) + 100 * (i % 2), size=8, replace=False) for i in range(6)]
    groups = error_groups(lists, 3)
    assert sorted(map(sorted, (g.tolist() for g in groups))) == [[0, 2, 4], [1, 3, 5]]
    assert [len(g) for g in error_groups(lists, 4)] == [4, 2]
    assert np.array_equal(np.sort(np.concatenate(error_groups(lists, 1))), np.arange(6))
    assert [g.tolist() for g in error_groups(lists, 6)] == [list(range(6))]


def test_ragged_candidate_lists_and_bad_index(logreg, digits):
    x, y = digits["train"]
    s = torch.zeros(2, 650, dtype=torch.float64)
    res = influence_on_candidates(logreg, x, y, s, [np.array([1, 2, 3]), np.array([7])])
    assert list(res.test_pos) == [0, 0, 0, 1]
    with pytest.raises(IndexError, match="outside the training set"):
        influence_on_candidates(logreg, x, y, s, [np.array([-1]), np.array([7])])


def test_self_influence_is_the_exact_quadratic_form(logreg, digits):
    x, y = digits["train"]
    solver = ExactSolver(logreg, x, y, ridge=0.01)
    got = self_influence(logreg, x[:50], y[:50], solver, chunk_size=16)
    g = gradient_matrix(logreg, x[:50], y[:50]).numpy()
    h = reference_hessian(logreg, x, y).numpy() + 0.01 * np.eye(650)
    expected = np.einsum("ip,ip->i", g, np.linalg.solve(h, g.T).T)
    np.testing.assert_allclose(got, expected, rtol=1e-8)
    assert (got >= 0).all()


def test_influence_predicts_leave_one_out_retraining():
    """Koh & Liang's check: −I(z, z_test)/N predicts the change in test loss when z is removed.

    L2-regularised logistic regression on the real breast-cancer data, retrained to convergence
    without each of the 30 most influential training points (float64, L-BFGS, warm start).
    """
    xs, ys = load_breast_cancer(return_X_y=True)
    x, y = torch.tensor(xs[:400]), torch.tensor(ys[:400])
    xt, yt = torch.tensor(xs[400:]), torch.tensor(ys[400:])
    recipe = TrainSettings(optimizer="lbfgs", epochs=2000, lr=1.0)
    model = LogisticRegressionAdapter(30, 2, l2=1e-2, settings=recipe, dtype=torch.float64).fit(x, y)
    test_losses = model.loss(model.logits(xt), yt)
    worst = int(test_losses.argmax())  # the most wrong test example has the clearest signal
    z_test = (xt[worst:worst + 1], yt[worst:worst + 1])

    s_test = ExactSolver(model, x, y, ridge=0.0).solve(gradient_matrix(model, *z_test))
    scores = influence_on_candidates(model, x, y, s_test).influence
    chosen = np.argsort(-np.abs(scores))[:30]
    predicted = -scores[chosen] / len(y)

    actual = leave_one_out_changes(model, x, y, chosen, recipe,
                                   lambda m: float(m.loss(m.logits(z_test[0]), z_test[1])))
    pearson = np.corrcoef(predicted, actual)[0, 1]
    assert pearson >= 0.9, (pearson, predicted[:5], actual[:5])


