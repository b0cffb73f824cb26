"""Rank training rows by the harm they do to the model's errors, and flag the worst.

    harm(z) = Σ_{e ∈ errors with z among its k neighbours} I(z, e)

with I(z, e) = −s_test(e)·∇L(z) (positive = harmful). A row never retrieved as a candidate
scores 0. ``n_errors_harmed`` counts the errors it harms (I > 0). Rank 1 is the most harmful.
Only rows with harm > 0 are ever flagged, whatever the budget.
"""
from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import pandas as pd


@dataclass(frozen=True)
class FlagRule:
    """One of: ``fraction`` of training rows, ``top`` N rows, or every row with harm > ``threshold``."""

    fraction: float | None = 0.1
    top: int | None = None
    threshold: float | None = None

    def __post_init__(self):
        given = [v is not None for v in (self.fraction, self.top, self.threshold)]
        if sum(given) != 1:
            raise ValueError("flag by exactly one of a fraction, a top N or a threshold")
        if self.fraction is not None and not 0.0 <= self.fraction <= 1.0:
            raise ValueError(f"flag fraction must be in [0, 1], got {self.fraction}")
        if self.top is not None and self.top < 0:
            raise ValueError(f"flag top N must be >= 0, got {self.top}")


def harm_scores(influence: pd.DataFrame, n_train: int) -> pd.DataFrame:
    """Per training row (by position): ``harm_score`` and ``n_errors_harmed`` from the long table.

    ``influence`` has columns ``train_index`` (row position) and ``influence``.
    """
    pos = influence["train_index"].to_numpy()
    vals = influence["influence"].to_numpy()
    harm = np.bincount(pos, weights=vals, minlength=n_train)
    harmed = np.bincount(pos, weights=(vals > 0).astype(np.float64), minlength=n_train).astype(np.int64)
    candidates = np.bincount(pos, minlength=n_train)
    return pd.DataFrame({"harm_score": harm, "n_errors_harmed": harmed, "n_errors_candidate": candidates})


def rank_and_flag(scores: pd.DataFrame, rule: FlagRule) -> pd.DataFrame:
    """Add ``rank`` (1 = most harmful; ties broken by row order) and ``flagged``."""
    out = scores.copy()
    order = np.lexsort((np.arange(len(out)), -out["harm_score"].to_numpy()))
    rank = np.empty(len(out), dtype=np.int64)
    rank[order] = np.arange(1, len(out) + 1)
    out["rank"] = rank
    harmful = out["harm_score"].to_numpy() > 0
    if rule.threshold is not None:
        flagged = out["harm_score"].to_numpy() > max(rule.threshold, 0.0)
    else:
        budget = rule.top if rule.top is not None else int(round(rule.fraction * len(out)))
        flagged = (rank <= budget) & harmful
    out["flagged"] = flagged
    return out
