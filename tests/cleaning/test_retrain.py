"""Retraining's variants; the run's trained model standing in for the original variant's fit."""
import numpy as np
import pytest
import torch

from fastif_engine.cleaning.retrain import retrain_and_evaluate
from fastif_engine.models import MLPAdapter
from fastif_engine.models.training import TrainSettings


def _mlp() -> MLPAdapter:
    return MLPAdapter(64, 10, hidden=24, l2=1e-3, dtype=torch.float64,
                      settings=TrainSettings(optimizer="adam", epochs=5, lr=3e-3))


def test_a_trained_model_is_the_original_variants_fit_for_its_seed(digits):
    """Why the flow reuses its trained model for (original, its seed): refitting gives the same model."""
    (x, y), (xt, yt) = digits["train"], digits["test"]
    flagged = np.zeros(len(y), dtype=bool)
    flagged[:20] = True
    reused = retrain_and_evaluate(_mlp().fit(x, y, seed=3), x, y, xt, yt, flagged, "original", 3, fitted=True)
    refit = retrain_and_evaluate(_mlp(), x, y, xt, yt, flagged, "original", 3)
    assert reused["reused_fit"] and not refit["reused_fit"]
    assert (reused["accuracy"], reused["loss"]) == (refit["accuracy"], refit["loss"])
    assert retrain_and_evaluate(_mlp(), x, y, xt, yt, flagged, "original", 4)["loss"] != refit["loss"]  # seeds differ
    with pytest.raises(ValueError, match="only the original variant"):
        retrain_and_evaluate(_mlp(), x, y, xt, yt, flagged, "cleaned", 3, fitted=True)
