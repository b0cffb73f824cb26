"""Net harm: the influence of each training row on the *whole* validation loss, with its spread.

Harm to the errors alone (``ranking.harm_scores``) asks which rows push the misclassified
validation rows the wrong way; a row that does so but supports many correct predictions is
then flagged anyway, and under random label noise those are mostly clean prototypes of the
errors' predicted class. Net harm asks instead what removing the row does to the loss of every
validation row, errors and correct alike:

    net_harm(z) = Σ_{v ∈ valid} I(z, v) = −(Σ_v ∇L(v))ᵀ (H + λI)⁻¹ ∇L(z)      (positive = harmful)

Removing z changes the summed validation loss by about −net_harm(z) / n_train, so a positive
score predicts that removing the row lowers it.

The validation rows are split into G folds; one s_test per fold (G inverse-HVPs in one solve,
not one per row) gives G independent estimates of the same sum. Their spread is the evidence:

    t(z) = net_harm(z) / (√G · sd_g(fold score))

t is large when every part of the validation set agrees the row is harmful and about 1 when
one validation row carries all of it. ``t ≥ flag_evidence`` (default 2) is the floor a row must
clear before any budget can flag it: a budget is a ceiling, not a quota.

The class prior. A model that predicts one class more often than the validation rows have it
gets a validation gradient dominated by "predict the other class more": every row of the
over-predicted class then looks harmful, and the fold t-statistic agrees, because every fold
asks for the same shift. That shift is one hypothesis shared by all rows, not evidence row by
row: on Rotten Tomatoes (uniform noise, one seed) validation's 250 rows held 6 points less of
one class than the model predicted (z = 1.93, sampling noise), and 862 rows of that class
cleared t ≥ 2; the 199 flagged were 75% clean, and removing them cost 0.052 test accuracy. When
a class is really under-reported in training, the same shift *is* the evidence (breast cancer,
one class 30% under-reported: z = 2.3, flags 97% flipped).

So the shift is tested once (``check_prior``: validation's class counts against the model's
summed probabilities, a χ² test given as a two-sided normal z) and, with ``prior="auto"``, used
only when its z reaches the same evidence level rows must reach; otherwise the validation loss
is taken at the logits plus the per-class offsets δ* that minimise it (the prior refitted on
validation, C numbers, a convex fit). Since that loss is minimal in δ at δ*, its derivative in θ
is exactly

    −∇θ L_valid(θ̂; δ*)ᵀ (H + λI)⁻¹ ∇L(z)

(the envelope theorem): the same formula with the offsets in the validation loss only.
``prior="refit"`` always refits, ``prior="model"`` never does.
"""
from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import torch

from ..adapter import ModelAdapter
from ..data.batching import INFERENCE_ROWS, Inputs
from ..errors import SettingsError
from ..models.training import logits_in_chunks
from .gradients import FlatParams, per_sample_gradients
from .scores import influence_and_net_harm
from .solvers import InverseHVPSolver

DEFAULT_FOLDS = 10
PRIORS = ("auto", "refit", "model")  # net harm's class prior: refit unless the shift is evident / always / never


def fold_of_rows(n_valid: int, folds: int = DEFAULT_FOLDS, seed: int = 0) -> np.ndarray:
    """Fold number of each validation row: a seeded shuffle dealt round-robin (sizes differ by ≤ 1)."""
    if n_valid < 2:
        raise SettingsError(f"net harm needs at least 2 validation rows, got {n_valid}")
    folds = min(folds, n_valid)
    out = np.empty(n_valid, dtype=np.int64)
    out[np.random.default_rng(seed).permutation(n_valid)] = np.arange(n_valid) % folds
    return out


def class_offsets(adapter: ModelAdapter, inputs: Inputs, labels: torch.Tensor, *,
                  chunk_size: int = INFERENCE_ROWS, logits: torch.Tensor | None = None) -> torch.Tensor:
    """``[C]``: the logit offsets δ* that minimise the mean loss of ``logits + δ`` on these rows.

    For cross-entropy this makes the mean predicted probability of every class equal to its
    share of the rows: the class prior the rows ask for. Centred (softmax ignores a common
    shift); a vanishing ridge keeps δ* finite when a class is absent from the rows.
    """
    logits = logits_in_chunks(adapter, inputs, chunk_size=chunk_size).double() if logits is None else logits
    labels = labels.cpu()
    delta = torch.zeros(logits.shape[1], dtype=torch.float64, requires_grad=True)
    opt = torch.optim.LBFGS([delta], lr=1.0, max_iter=200, tolerance_grad=1e-12, tolerance_change=1e-15,
                            line_search_fn="strong_wolfe")

    def objective():
        opt.zero_grad()
        loss = adapter.loss(logits + delta, labels).mean() + 1e-8 * delta.square().sum()
        loss.backward()
        return loss

    with torch.enable_grad():
        opt.step(objective)
    out = delta.detach()
    return out - out.mean()


@dataclass(frozen=True)
class PriorCheck:
    """Validation's class counts against the model's predictions for the same rows."""

    observed: np.ndarray  # [C] validation rows per class
    expected: np.ndarray  # [C] the model's summed probabilities per class
    z: float  # the χ² test (C − 1 degrees of freedom) of observed vs expected, as a two-sided normal z
    offset: np.ndarray  # [C] δ*: the logit offsets that refit the prior to validation (class_offsets)

    def as_dict(self) -> dict:
        return {"z": round(self.z, 3), "observed": self.observed.tolist(),
                "expected": [round(float(e), 1) for e in self.expected], "offset": [round(float(o), 4) for o in self.offset]}


def check_prior(adapter: ModelAdapter, inputs: Inputs, labels: torch.Tensor, *,
                chunk_size: int = INFERENCE_ROWS) -> PriorCheck:
    """Does validation's class mix differ from what the model predicts for it beyond sampling noise?"""
    from scipy.stats import chi2, norm

    logits = logits_in_chunks(adapter, inputs, chunk_size=chunk_size).double()
    n_classes = logits.shape[1]
    observed = np.bincount(labels.cpu().numpy(), minlength=n_classes)
    expected = torch.softmax(logits, -1).sum(0).numpy()
    statistic = float(((observed - expected) ** 2 / np.maximum(expected, 1e-12)).sum())
    z = float(min(norm.isf(chi2.sf(statistic, max(n_classes - 1, 1)) / 2), 99.0))
    return PriorCheck(observed, expected, z, class_offsets(adapter, inputs, labels, logits=logits).numpy())


def fold_gradients(adapter: ModelAdapter, inputs: Inputs, labels: torch.Tensor, fold: np.ndarray, *,
                   chunk_size: int = 256, flat: FlatParams | None = None,
                   logit_offset: torch.Tensor | None = None) -> torch.Tensor:
    """``[G, P]``: the summed loss gradient of each fold's validation rows (at ``logits + logit_offset``)."""
    flat = flat or FlatParams.of(adapter)
    n_folds = int(fold.max()) + 1
    out = None
    onehot = torch.zeros(len(fold), n_folds, dtype=torch.float64)
    onehot[torch.arange(len(fold)), torch.as_tensor(fold)] = 1.0
    for part, grads in per_sample_gradients(adapter, inputs, labels, chunk_size=chunk_size, flat=flat,
                                            logit_offset=logit_offset):
        contrib = onehot[part].to(grads.device, grads.dtype).T @ grads
        out = contrib if out is None else out + contrib
    return out


@dataclass(frozen=True)
class NetHarm:
    """Per training row: ``score`` = Σ over folds (the net harm) and ``t`` (its evidence)."""

    per_fold: np.ndarray  # [n, G]
    prior: PriorCheck | None = None  # the class-prior test (None: not made, prior="model")
    refitted: bool = False  # whether the validation loss was taken at the refitted prior

    @property
    def score(self) -> np.ndarray:
        return self.per_fold.sum(axis=1)

    @property
    def t(self) -> np.ndarray:
        g = self.per_fold.shape[1]  # ≥ 2 (fold_of_rows)
        score, sd = self.score, self.per_fold.std(axis=1, ddof=1)
        # zero spread: every fold agrees exactly (infinite evidence), or the row scores 0 everywhere
        t = np.where(score > 0, np.inf, np.where(score < 0, -np.inf, 0.0))
        spread = sd > 0
        t[spread] = score[spread] / (np.sqrt(g) * sd[spread])
        return t


def refits_prior(prior: str, z: float, evidence: float) -> bool:
    """Whether net harm takes the validation loss at the refitted class prior (module docstring)."""
    return prior == "refit" or (prior == "auto" and z < evidence)


@dataclass(frozen=True)
class FoldSolve:
    """One s_test per validation fold, and the class prior they were taken at."""

    vectors: torch.Tensor  # [G, P]: (H + λI)⁻¹ of each fold's summed validation-loss gradient
    prior: PriorCheck | None  # the class-prior test (None: not made, prior="model")
    refitted: bool  # whether the validation loss was taken at the refitted prior


def fold_s_tests(adapter: ModelAdapter, valid_inputs: Inputs, valid_labels: torch.Tensor, solver: InverseHVPSolver,
                 *, folds: int = DEFAULT_FOLDS, seed: int = 0, chunk_size: int = 256, flat: FlatParams | None = None,
                 prior: str = "auto", evidence: float = 2.0) -> FoldSolve:
    """The ``folds`` s_test vectors net harm dots every training row's gradient with (one solve).

    ``prior`` (module docstring): ``"auto"`` refits the class prior on validation unless the
    model's and validation's class mix differ with z ≥ ``evidence``; ``"refit"``, ``"model"``.
    """
    if prior not in PRIORS:
        raise SettingsError(f"prior must be one of {', '.join(PRIORS)}, got {prior!r}")
    flat = flat or FlatParams.of(adapter)
    fold = fold_of_rows(len(valid_labels), folds, seed)
    check = check_prior(adapter, valid_inputs, valid_labels) if prior != "model" else None
    refit = prior != "model" and refits_prior(prior, check.z, evidence)
    offset = torch.as_tensor(check.offset) if refit else None
    v = fold_gradients(adapter, valid_inputs, valid_labels, fold, chunk_size=chunk_size, flat=flat,
                       logit_offset=offset)
    return FoldSolve(solver.solve(v), check, refit)


def net_harm(adapter: ModelAdapter, train_inputs: Inputs, train_labels: torch.Tensor, valid_inputs: Inputs,
             valid_labels: torch.Tensor, solver: InverseHVPSolver, *, folds: int = DEFAULT_FOLDS, seed: int = 0,
             chunk_size: int = 256, flat: FlatParams | None = None, prior: str = "auto",
             evidence: float = 2.0) -> NetHarm:
    """Net harm of every training row on the validation loss, from ``folds`` s_test vectors
    (:func:`fold_s_tests`; ``prior`` and ``evidence`` as there).

    With per-error influence to score as well, ``scores.influence_and_net_harm`` forms each
    training row's gradient once for both.
    """
    flat = flat or FlatParams.of(adapter)
    solved = fold_s_tests(adapter, valid_inputs, valid_labels, solver, folds=folds, seed=seed, chunk_size=chunk_size,
                          flat=flat, prior=prior, evidence=evidence)
    _, per_fold = influence_and_net_harm(adapter, train_inputs, train_labels, torch.zeros(0, flat.size), [],
                                         solved.vectors, chunk_size=chunk_size, flat=flat)  # no errors: net harm alone
    return NetHarm(per_fold, solved.prior, solved.refitted)
