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
"""
from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import torch

from .adapter import ModelAdapter
from .batching import Inputs, n_rows
from .gradients import FlatParams, per_sample_gradients
from .solvers import InverseHVPSolver

DEFAULT_FOLDS = 10


def fold_of_rows(n_valid: int, folds: int = DEFAULT_FOLDS, seed: int = 0) -> np.ndarray:
    """Fold number of each validation row: a seeded shuffle dealt round-robin (sizes differ by ≤ 1)."""
    if n_valid < 2:
        raise ValueError(f"net harm needs at least 2 validation rows, got {n_valid}")
    folds = min(folds, n_valid)
    out = np.empty(n_valid, dtype=np.int64)
    out[np.random.default_rng(seed).permutation(n_valid)] = np.arange(n_valid) % folds
    return out


def fold_gradients(adapter: ModelAdapter, inputs: Inputs, labels: torch.Tensor, fold: np.ndarray, *,
                   chunk_size: int = 256, flat: FlatParams | None = None) -> torch.Tensor:
    """``[G, P]``: the summed loss gradient of each fold's validation rows."""
    flat = flat or FlatParams.of(adapter)
    n_folds = int(fold.max()) + 1
    out = None
    onehot = torch.zeros(len(fold), n_folds, dtype=torch.float64)
    onehot[torch.arange(len(fold)), torch.as_tensor(fold)] = 1.0
    for part, grads in per_sample_gradients(adapter, inputs, labels, chunk_size=chunk_size, flat=flat):
        contrib = onehot[part].to(grads.device, grads.dtype).T @ grads
        out = contrib if out is None else out + contrib
    return out


def scores_against(adapter: ModelAdapter, inputs: Inputs, labels: torch.Tensor, s_vectors: torch.Tensor, *,
                   chunk_size: int = 256, flat: FlatParams | None = None) -> np.ndarray:
    """``[n, G]``: I(z, fold g) = −s_g·∇L(z) for every training row z (positive = harmful)."""
    out = np.empty((n_rows(inputs), s_vectors.shape[0]), dtype=np.float64)
    s_t = s_vectors.T.contiguous().to(adapter.device)
    for part, grads in per_sample_gradients(adapter, inputs, labels, chunk_size=chunk_size, flat=flat):
        out[part] = -(grads @ s_t.to(grads.dtype)).double().cpu().numpy()
    return out


@dataclass(frozen=True)
class NetHarm:
    """Per training row: ``score`` = Σ over folds (the net harm) and ``t`` (its evidence)."""

    per_fold: np.ndarray  # [n, G]

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


def net_harm(adapter: ModelAdapter, train_inputs: Inputs, train_labels: torch.Tensor, valid_inputs: Inputs,
             valid_labels: torch.Tensor, solver: InverseHVPSolver, *, folds: int = DEFAULT_FOLDS, seed: int = 0,
             chunk_size: int = 256, flat: FlatParams | None = None) -> NetHarm:
    """Net harm of every training row on the validation loss, from ``folds`` s_test vectors."""
    flat = flat or FlatParams.of(adapter)
    fold = fold_of_rows(len(valid_labels), folds, seed)
    v = fold_gradients(adapter, valid_inputs, valid_labels, fold, chunk_size=chunk_size, flat=flat)
    s = solver.solve(v)
    return NetHarm(scores_against(adapter, train_inputs, train_labels, s, chunk_size=chunk_size, flat=flat))
