"""Rank training rows by a score, and flag the top ones.

The default score is the harm a row does to the model's errors:

    harm(z) = Σ_{e ∈ errors with z among its k neighbours} I(z, e)

with I(z, e) = −s_test(e)·∇L(z) (positive = harmful). A row never retrieved as a candidate
scores 0. ``n_errors_harmed`` counts the errors it harms (I > 0). Other scores (a row's
self-influence, its own training loss) rank the same way: rank 1 has the highest score. Only
rows with a score > 0 are ever flagged, whatever the budget.
"""
from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import pandas as pd


# ``flag_by`` setting → the flags.parquet column it ranks by
FLAG_SCORES = {"harm": "harm_score", "self-influence": "self_influence", "loss": "train_loss"}


@dataclass(frozen=True)
class FlagRule:
    """One of: ``fraction`` of training rows, ``top`` N rows, or every row scoring > ``threshold``."""

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


def rank_and_flag(scores: pd.DataFrame, rule: FlagRule, by: str = "harm_score") -> pd.DataFrame:
    """Add ``rank`` (1 = highest ``by`` score; ties broken by row order) and ``flagged``."""
    if by not in scores.columns:
        raise KeyError(f"no {by!r} column to rank by (have {', '.join(scores.columns)})")
    out = scores.copy()
    score = out[by].to_numpy(dtype=np.float64)
    if np.isnan(score).any():
        raise ValueError(f"{by}: {int(np.isnan(score).sum())} rows have no score; cannot rank by it")
    order = np.lexsort((np.arange(len(out)), -score))
    rank = np.empty(len(out), dtype=np.int64)
    rank[order] = np.arange(1, len(out) + 1)
    out["rank"] = rank
    if rule.threshold is not None:
        flagged = score > max(rule.threshold, 0.0)
    else:
        budget = rule.top if rule.top is not None else int(round(rule.fraction * len(out)))
        flagged = (rank <= budget) & (score > 0)
    out["flagged"] = flagged
    return out
