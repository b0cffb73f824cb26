"""Net harm on the validation loss: exact formula, leave-one-out signs, the fold t-statistic."""
import copy

import numpy as np
import pytest
import torch
from sklearn.datasets import load_breast_cancer

from fastif_engine.influence.gradients import FlatParams, gradient_matrix
from fastif_engine.influence.net_harm import NetHarm, check_prior, class_offsets, fold_of_rows, net_harm
from fastif_engine.influence.solvers import ExactSolver
from fastif_engine.models import LogisticRegressionAdapter
from fastif_engine.models.training import TrainSettings
from tests.exact import reference_hessian
from tests.exact import leave_one_out_changes


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
    result = net_harm(logreg, x, y, xv, yv, ExactSolver(logreg, x, y, ridge=0.05), folds=4, seed=1, chunk_size=13,
                      prior="model")
    assert result.prior is None and not result.refitted
    g = gradient_matrix(logreg, x, y).numpy()
    gv = gradient_matrix(logreg, xv, yv).numpy()
    h = reference_hessian(logreg, x, y).numpy() + 0.05 * np.eye(g.shape[1])
    fold = fold_of_rows(60, 4, seed=1)
    expected = np.stack([-g @ np.linalg.solve(h, gv[fold == f].sum(axis=0)) for f in range(4)], axis=1)
    np.testing.assert_allclose(result.per_fold, expected, rtol=1e-7, atol=1e-10)
    np.testing.assert_allclose(result.score, -g @ np.linalg.solve(h, gv.sum(axis=0)), rtol=1e-7, atol=1e-10)


def test_class_offsets_match_the_predicted_class_mix_to_the_rows(logreg, digits):
    """Cross-entropy's optimum in δ: the mean predicted probability of each class = its share of the rows."""
    xv, yv = digits["test"]
    keep = (yv != 3) | (torch.arange(len(yv)) % 4 == 0)  # class 3 under-represented: the model over-predicts it
    xv, yv = xv[keep], yv[keep]
    delta = class_offsets(logreg, xv, yv, chunk_size=50)
    mix = torch.softmax(logreg.logits(xv).double() + delta, -1).mean(0)
    np.testing.assert_allclose(mix.numpy(), np.bincount(yv.numpy(), minlength=10) / len(yv), atol=1e-7)
    assert abs(float(delta.sum())) < 1e-10 and int(delta.argmin()) == 3


def test_refitted_prior_net_harm_is_the_derivative_of_the_recalibrated_validation_loss(logreg, digits):
    """Envelope theorem, checked by finite differences: moving θ̂ along −(H + λI)⁻¹∇L(z) and refitting
    the class offsets changes min_δ Σ_v L(v; θ, δ) at the rate net_harm(z) (prior="refit")."""
    x, y = digits["train"]
    xv, yv = digits["test"][0][:120], digits["test"][1][:120]
    xv, yv = xv[yv != 3], yv[yv != 3]  # a class missing from validation: the model's prior is clearly off
    result = net_harm(logreg, x, y, xv, yv, ExactSolver(logreg, x, y, ridge=0.05), folds=3, prior="refit")
    assert result.refitted and np.abs(result.prior.offset).max() > 1.0
    flat = FlatParams.of(logreg)
    theta = torch.cat([v.reshape(-1) for v in flat.values])
    h = reference_hessian(logreg, x, y) + 0.05 * torch.eye(flat.size, dtype=torch.float64)
    g = gradient_matrix(logreg, x, y)

    def recalibrated_loss(params: torch.Tensor) -> float:
        moved = copy.deepcopy(logreg)
        named = dict(moved.model.named_parameters())
        with torch.no_grad():
            for name, value in flat.unflatten(params).items():
                named[name].copy_(value)
        delta = class_offsets(moved, xv, yv)
        with torch.no_grad():
            return float(moved.loss(moved.logits(xv) + delta, yv).sum())

    rows = np.argsort(-np.abs(result.score))[[0, 5, 50]]
    eps = 1e-4
    for r in rows:
        u = -torch.linalg.solve(h, g[r])
        fd = (recalibrated_loss(theta + eps * u) - recalibrated_loss(theta - eps * u)) / (2 * eps)
        np.testing.assert_allclose(result.score[r], fd, rtol=1e-4)
    model_prior = net_harm(logreg, x, y, xv, yv, ExactSolver(logreg, x, y, ridge=0.05), folds=3, prior="model")
    assert not np.allclose(model_prior.score[rows], result.score[rows], rtol=1e-2)  # the refit matters here


def test_prior_check_z_and_the_auto_choice(digits):
    """Two classes: the χ² z is |observed − expected| / √(n p (1 − p)). "auto" refits the prior when the
    shift is within sampling noise (clean labels) and keeps the model's when validation clearly
    disagrees with it (40% of one class's training rows labelled as the other)."""
    x, y = digits["train"]
    xv, yv = digits["test"]
    y, yv = (y >= 5).long(), (yv >= 5).long()
    under = y.clone()
    under[(y == 1).nonzero().ravel()[::5]] = 0
    under[(y == 1).nonzero().ravel()[1::5]] = 0
    runs = {}
    for name, labels in {"clean": y, "under-reported": under}.items():
        model = LogisticRegressionAdapter(64, 2, l2=1e-2, dtype=torch.float64).fit(x, labels)
        solver = ExactSolver(model, x, labels, ridge=0.05)
        runs[name] = {p: net_harm(model, x, labels, xv, yv, solver, folds=3, prior=p) for p in ("auto", "refit", "model")}
        check = check_prior(model, xv, yv)
        n, e1, o1 = len(yv), float(check.expected[1]), int(yv.sum())
        assert check.observed.tolist() == [n - o1, o1]
        np.testing.assert_allclose(check.z, abs(o1 - e1) / np.sqrt(n * (e1 / n) * (1 - e1 / n)), rtol=1e-9)
        assert check.z == runs[name]["auto"].prior.z
    assert runs["clean"]["auto"].prior.z < 2 <= runs["under-reported"]["auto"].prior.z
    assert runs["clean"]["auto"].refitted and not runs["under-reported"]["auto"].refitted
    np.testing.assert_array_equal(runs["clean"]["auto"].per_fold, runs["clean"]["refit"].per_fold)
    np.testing.assert_array_equal(runs["under-reported"]["auto"].per_fold, runs["under-reported"]["model"].per_fold)
    assert not np.allclose(runs["clean"]["refit"].per_fold, runs["clean"]["model"].per_fold)


def test_t_statistic_on_hand_made_fold_scores():
    per_fold = np.array([[4.0, 0.0, 0.0, 0.0],    # one fold carries it all: t = 1
                         [1.0, 1.0, 1.0, 1.0],    # every fold agrees exactly: infinite evidence
                         [0.0, 0.0, 0.0, 0.0],    # never scored
                         [1.0, 2.0, 3.0, 2.0],    # sum 8, sd √(2/3): t = 8 / (2 · 0.8165) = 4.899
                         [-1.0, -1.0, -1.0, -1.0]])
    nh = NetHarm(per_fold)
    np.testing.assert_allclose(nh.score, [4.0, 4.0, 0.0, 8.0, -4.0])
    np.testing.assert_allclose(nh.t, [1.0, np.inf, 0.0, 8 / (2 * np.sqrt(2 / 3)), -np.inf])


@pytest.mark.parametrize("prior", ["model", "refit"])
def test_net_harm_predicts_the_sign_of_leave_one_out_retraining(prior):
    """Removing row z changes the summed validation loss by about −net_harm(z)/n. L2 logistic
    regression on breast cancer, retrained to convergence without each of the 20 rows with the
    largest |net harm|: the predicted and actual changes agree in sign for ≥ 90% of them. With the
    refitted prior the validation loss is measured at the class offsets refitted to each model."""
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
    scores = net_harm(model, x, y, xv, yv, ExactSolver(model, x, y, ridge=1e-6), prior=prior).score
    chosen = np.argsort(-np.abs(scores))[:20]
    predicted = -scores[chosen] / len(y)

    def valid_loss(m):
        delta = class_offsets(m, xv, yv) if prior == "refit" else 0.0
        with torch.no_grad():
            return float(m.loss(m.logits(xv) + delta, yv).sum())

    actual = leave_one_out_changes(model, x, y, chosen, recipe, valid_loss)
    agree = np.mean(np.sign(predicted) == np.sign(actual))
    assert agree >= 0.9, (agree, predicted[:5], actual[:5])
    assert (predicted < 0).any() and (predicted > 0).any()  # both signs among the 20: the check can fail
