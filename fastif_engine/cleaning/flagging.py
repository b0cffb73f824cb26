"""Rank training rows by a score, and flag the top ones that clear an evidence floor.

Scores (``flag_by`` → flags.parquet column):

* ``combined`` (default): the mean percentile rank of ``net-harm`` and ``loss`` — rows that both
  raise the validation loss and that the model refuses to fit. Chosen by the study in
  docs/decisions/flag-score.md: it finds flipped labels under random *and* class-conditional noise.
* ``net-harm``: influence on the whole validation loss (errors and correct rows), see
  :mod:`fastif_engine.influence.net_harm`.
* ``harm``: FastIF's harm to the errors,
  ``harm(z) = Σ_{e ∈ errors with z among its k neighbours} I(z, e)``, I(z, e) = −s_test(e)·∇L(z)
  (positive = harmful); a row never retrieved as a candidate scores 0. ``n_errors_harmed``
  counts the errors it harms (I > 0).
* ``self-influence`` and ``loss``: the row's own ∇Lᵀ(H + λI)⁻¹∇L and training loss.

Rank 1 has the highest score. Only rows with a score > 0 are ever flagged, and, with an
evidence column (net harm's fold t-statistic), only rows that clear its floor: the budget
(fraction, top N) is a ceiling, not a quota.
"""
from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import pandas as pd
from ..errors import SettingsError


# ``flag_by`` setting → the flags.parquet column it ranks by
FLAG_SCORES = {"combined": "combined_score", "net-harm": "net_harm", "harm": "harm_score",
               "self-influence": "self_influence", "loss": "train_loss"}
DEFAULT_FLAG_BY = "combined"
# The default budget: at most 15% of training rows. A ceiling: where the evidence floor is stricter
# (10% uniform noise: 0.5–7.8% of the rows clear it on the study's four datasets) it changes nothing;
# where more rows are mislabelled than 10% holds (30% of half the classes: 15% of the rows), 0.2.4's
# 10% left most of the gain on the table (docs/decisions/flag-budget.md).
DEFAULT_FLAG_FRACTION = 0.15


@dataclass(frozen=True)
class FlagRule:
    """One of: ``fraction`` of training rows, ``top`` N rows, or every row scoring > ``threshold``."""

    fraction: float | None = DEFAULT_FLAG_FRACTION
    top: int | None = None
    threshold: float | None = None

    def __post_init__(self):
        given = [v is not None for v in (self.fraction, self.top, self.threshold)]
        if sum(given) != 1:
            raise SettingsError("flag by exactly one of a fraction, a top N or a threshold")
        if self.fraction is not None and not 0.0 <= self.fraction <= 1.0:
            raise SettingsError(f"flag fraction must be in [0, 1], got {self.fraction}")
        if self.top is not None and self.top < 0:
            raise SettingsError(f"flag top N must be >= 0, got {self.top}")


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


def rank_fusion(*scores: np.ndarray) -> np.ndarray:
    """Mean percentile rank of each row under several scores: in (0, 1], 1 = top of every one.

    Ranks, not values, so scores on different scales (a loss, an influence) weigh the same."""
    from scipy.stats import rankdata

    n = len(scores[0])
    return np.mean([rankdata(np.asarray(s, dtype=np.float64), method="average") / n for s in scores], axis=0)


def rank_and_flag(scores: pd.DataFrame, rule: FlagRule, by: str = "harm_score", *,
                  evidence: str | None = None, min_evidence: float = 0.0) -> pd.DataFrame:
    """Add ``rank`` (1 = highest ``by`` score; ties broken by row order) and ``flagged``.

    With ``evidence`` (a column, e.g. net harm's t) a row is flagged only where that column is
    ≥ ``min_evidence`` too: the budget is then a ceiling, not a quota."""
    if by not in scores.columns:
        raise KeyError(f"no {by!r} column to rank by (have {', '.join(scores.columns)})")
    out = scores.copy()
    score = out[by].to_numpy(dtype=np.float64)
    if np.isnan(score).any():
        raise SettingsError(f"{by}: {int(np.isnan(score).sum())} rows have no score; cannot rank by it")
    order = np.lexsort((np.arange(len(out)), -score))
    rank = np.empty(len(out), dtype=np.int64)
    rank[order] = np.arange(1, len(out) + 1)
    out["rank"] = rank
    flagged = within_budget(score, rank, rule)
    if evidence is not None:
        flagged &= out[evidence].to_numpy(dtype=np.float64) >= min_evidence
    out["flagged"] = flagged
    return out


def within_budget(score: np.ndarray, rank: np.ndarray, rule: FlagRule) -> np.ndarray:
    """Rows the budget alone would flag: score > 0 and within the fraction / top N (or above the threshold)."""
    if rule.threshold is not None:
        return score > max(rule.threshold, 0.0)
    budget = rule.top if rule.top is not None else int(round(rule.fraction * len(score)))
    return (rank <= budget) & (score > 0)
