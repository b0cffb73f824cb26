"""Net harm on the validation loss: exact formula, leave-one-out signs, the fold t-statistic."""
import numpy as np
import pytest
import torch
from sklearn.datasets import load_breast_cancer

from fastif_engine.gradients import gradient_matrix
from fastif_engine.models import LogisticRegressionAdapter
from fastif_engine.net_harm import NetHarm, fold_of_rows, net_harm
from fastif_engine.solvers import ExactSolver
from fastif_engine.training import TrainSettings
from tests.test_hessian import reference_hessian
from tests.test_influence import leave_one_out_changes


def test_folds_are_seeded_and_balanced():
    fold = fold_of_rows(23, folds=10, seed=4)
    assert np.bincount(fold).tolist() == [3, 3, 3, 2, 2, 2, 2, 2, 2, 2]
    assert (fold_of_rows(23, 10, seed=4) == fold).all() and not (fold_of_rows(23, 10, seed=5) == fold).all()
    assert fold_of_rows(3, folds=10).max() == 2  # never more folds than rows
    with pytest.raises(ValueError, match="at least 2 validation rows"):
        fold_of_rows(1)


def test_net_harm_is_the_exact_validation_loss_influence(logreg, digits):
    """Σ over folds = −(Σ_v ∇L(v))ᵀ(H + λI)⁻¹∇L(z), from an explicit Hessian; each fold its own rows' sum."""
    x, y = digits["train"]
    xv, yv = digits["test"]
    xv, yv = xv[:60], yv[:60]
    result = net_harm(logreg, x, y, xv, yv, ExactSolver(logreg, x, y, ridge=0.05), folds=4, seed=1, chunk_size=13)
    g = gradient_matrix(logreg, x, y).numpy()
    gv = gradient_matrix(logreg, xv, yv).numpy()
    h = reference_hessian(logreg, x, y).numpy() + 0.05 * np.eye(g.shape[1])
    fold = fold_of_rows(60, 4, seed=1)
    expected = np.stack([-g @ np.linalg.solve(h, gv[fold == f].sum(axis=0)) for f in range(4)], axis=1)
    np.testing.assert_allclose(result.per_fold, expected, rtol=1e-7, atol=1e-10)
    np.testing.assert_allclose(result.score, -g @ np.linalg.solve(h, gv.sum(axis=0)), rtol=1e-7, atol=1e-10)


def test_t_statistic_on_hand_made_fold_scores():
    per_fold = np.array([[4.0, 0.0, 0.0, 0.0],    # one fold carries it all: t = 1
                         [1.0, 1.0, 1.0, 1.0],    # every fold agrees exactly: infinite evidence
                         [0.0, 0.0, 0.0, 0.0],    # never scored
                         [1.0, 2.0, 3.0, 2.0],    # sum 8, sd √(2/3): t = 8 / (2 · 0.8165) = 4.899
                         [-1.0, -1.0, -1.0, -1.0]])
    nh = NetHarm(per_fold)
    np.testing.assert_allclose(nh.score, [4.0, 4.0, 0.0, 8.0, -4.0])
    np.testing.assert_allclose(nh.t, [1.0, np.inf, 0.0, 8 / (2 * np.sqrt(2 / 3)), -np.inf])


def test_net_harm_predicts_the_sign_of_leave_one_out_retraining():
    """Removing row z changes the summed validation loss by about −net_harm(z)/n. L2 logistic
    regression on breast cancer, retrained to convergence without each of the 20 rows with the
    largest |net harm|: the predicted and actual changes agree in sign for ≥ 90% of them."""
    xs, ys = load_breast_cancer(return_X_y=True)
    rng = np.random.default_rng(0)
    ys = ys.copy()
    flip = rng.choice(300, 30, replace=False)  # some flipped labels, so that some rows clearly harm
    ys[flip] = 1 - ys[flip]
    x, y = torch.tensor(xs[:300]), torch.tensor(ys[:300])
    xv, yv = torch.tensor(xs[300:450]), torch.tensor(load_breast_cancer(return_X_y=True)[1][300:450])
    recipe = TrainSettings(optimizer="lbfgs", epochs=2000, lr=1.0)
    model = LogisticRegressionAdapter(30, 2, l2=1e-2, settings=recipe, dtype=torch.float64).fit(x, y)
    # the two-class softmax has one flat direction (both biases up): gradients never move along it
    scores = net_harm(model, x, y, xv, yv, ExactSolver(model, x, y, ridge=1e-6)).score
    chosen = np.argsort(-np.abs(scores))[:20]
    predicted = -scores[chosen] / len(y)

    def valid_loss(m):
        with torch.no_grad():
            return float(m.loss(m.logits(xv), yv).sum())

    actual = leave_one_out_changes(model, x, y, chosen, recipe, valid_loss)
    agree = np.mean(np.sign(predicted) == np.sign(actual))
    assert agree >= 0.9, (agree, predicted[:5], actual[:5])
    assert (predicted < 0).any() and (predicted > 0).any()  # both signs among the 20: the check can fail
