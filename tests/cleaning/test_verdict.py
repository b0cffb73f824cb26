"""The retrain verdict's arithmetic on hand-made per-seed accuracies (exact answers)."""
import math

import pytest

from fastif_engine.cleaning.verdict import accuracy_stderr, paired_ci, retrain_verdict, verdict


def test_paired_ci_on_a_hand_made_table():
    # diffs 0.02, 0.03, 0.01: mean 0.02, sd 0.01, t(0.975, 2) = 4.302653
    ci = paired_ci([0.80, 0.82, 0.81], [0.78, 0.79, 0.80])
    half = 4.302653 * 0.01 / math.sqrt(3)
    assert ci.n == 3 and ci.mean == pytest.approx(0.02)
    assert (ci.low, ci.high) == (pytest.approx(0.02 - half, abs=1e-6), pytest.approx(0.02 + half, abs=1e-6))
    one = paired_ci([0.8], [0.7])
    assert one.mean == pytest.approx(0.1) and math.isnan(one.low) and one.n == 1
    with pytest.raises(ValueError, match="paired values"):
        paired_ci([0.8, 0.9], [0.7])


def test_verdict_words():
    # 5 seeds, diffs 0.02 ± small: clearly above 0; vs random: 0.01 ± 0.005 → above 0 too
    table = {"original": [0.80, 0.81, 0.79, 0.80, 0.82], "cleaned": [0.82, 0.83, 0.81, 0.82, 0.845],
             "random": [0.81, 0.82, 0.80, 0.81, 0.83]}
    out = retrain_verdict(table)
    assert out["verdict"] == "helped, beyond random removal"
    assert out["fixed_minus_original"]["low"] > 0 and out["fixed_minus_random"]["low"] > 0
    hurt = retrain_verdict({"original": table["cleaned"], "cleaned": table["original"], "random": table["random"]})
    assert hurt["verdict"] == "hurt"
    # the first table's diffs straddle 0: 0.02 − 4.30 · 0.01/√3 < 0
    assert verdict(paired_ci([0.80, 0.82, 0.81], [0.78, 0.79, 0.80]), paired_ci([0.8] * 3, [0.8] * 3)) \
        == "no measurable effect"
    mixed = retrain_verdict({"original": table["original"], "cleaned": table["cleaned"],
                             "random": [0.83, 0.84, 0.82, 0.83, 0.85]})
    assert mixed["verdict"] == "helped, but random removal helped more"
    assert verdict(paired_ci([0.9], [0.8]), paired_ci([0.9], [0.8])).startswith("no measurable effect (one seed")


def test_accuracy_stderr():
    assert accuracy_stderr(0.8, 100) == pytest.approx(0.04)
    assert math.isnan(accuracy_stderr(0.8, 0))
