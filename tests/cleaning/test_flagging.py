"""Ranking and flagging rules on small hand-made score tables (exact answers)."""
import numpy as np
import pandas as pd
import pytest

from fastif_engine.cleaning.flagging import FlagRule, harm_scores, rank_and_flag, rank_fusion, within_budget


def test_harm_sums_influence_per_row_and_counts_harmed_errors():
    influence = pd.DataFrame({"test_pos": [0, 0, 1, 1], "train_index": [2, 0, 2, 3],
                              "influence": [0.5, -1.0, 0.25, 0.0]})
    scores = harm_scores(influence, n_train=5)
    np.testing.assert_allclose(scores["harm_score"], [-1.0, 0.0, 0.75, 0.0, 0.0])
    assert scores["n_errors_harmed"].tolist() == [0, 0, 2, 0, 0]
    assert scores["n_errors_candidate"].tolist() == [1, 0, 2, 1, 0]


def test_rank_by_another_score_and_flag_its_top():
    scores = pd.DataFrame({"harm_score": [3.0, 0.0, -1.0, 2.0], "train_loss": [0.1, 2.0, 0.7, 0.7]})
    out = rank_and_flag(scores, FlagRule(fraction=None, top=2), by="train_loss")
    assert out["rank"].tolist() == [4, 1, 2, 3]  # the tie at 0.7 goes to the earlier row
    assert out["flagged"].tolist() == [False, True, True, False]
    by_harm = rank_and_flag(scores, FlagRule(fraction=None, top=3))
    assert by_harm["rank"].tolist() == [1, 3, 4, 2]
    assert by_harm["flagged"].tolist() == [True, False, False, True]  # harm ≤ 0 is never flagged


def test_threshold_and_fraction_rules():
    scores = pd.DataFrame({"self_influence": [0.2, 5.0, 1.5, 0.0, 3.0]})
    assert rank_and_flag(scores, FlagRule(fraction=None, threshold=1.0), by="self_influence")["flagged"].tolist() \
        == [False, True, True, False, True]
    assert rank_and_flag(scores, FlagRule(fraction=0.4), by="self_influence")["flagged"].tolist() \
        == [False, True, False, False, True]


def test_unscored_rows_cannot_be_ranked():
    scores = pd.DataFrame({"self_influence": [0.2, np.nan]})
    with pytest.raises(ValueError, match="1 rows have no score"):
        rank_and_flag(scores, FlagRule(), by="self_influence")
    with pytest.raises(KeyError, match="no 'train_loss' column"):
        rank_and_flag(scores, FlagRule(), by="train_loss")


def test_evidence_floor_makes_the_budget_a_ceiling():
    scores = pd.DataFrame({"combined_score": [0.9, 0.8, 0.7, 0.6, 0.5], "net_harm_t": [3.0, 1.0, np.inf, 2.0, 5.0]})
    out = rank_and_flag(scores, FlagRule(fraction=0.8), by="combined_score", evidence="net_harm_t", min_evidence=2.0)
    assert out["flagged"].tolist() == [True, False, True, True, False]  # row 1 lacks evidence, row 4 is over budget
    assert within_budget(out["combined_score"].to_numpy(), out["rank"].to_numpy(), FlagRule(fraction=0.8)).sum() == 4
    quota = rank_and_flag(scores, FlagRule(fraction=0.8), by="combined_score")
    assert quota["flagged"].sum() == 4


def test_rank_fusion_averages_percentile_ranks():
    a = np.array([10.0, 20.0, 30.0, 40.0])
    b = np.array([4.0, 3.0, 2.0, 1.0])
    np.testing.assert_allclose(rank_fusion(a, b), [0.625, 0.625, 0.625, 0.625])
    np.testing.assert_allclose(rank_fusion(a, np.array([0.0, 5.0, 5.0, 9.0])), [0.25, 0.5625, 0.6875, 1.0])
