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


def test_fit_all_runs_fits_at_once_and_returns_them_in_order():
    """Concurrent: fits overlap in threads with a core each, the reused one first, then the originals;
    results come back in the order asked, and the caller's torch threads are restored."""
    import threading
    import time

    import torch

    from fastif_engine.cleaning.retrain import fit_all

    fits = [("original", 0), ("cleaned", 0), ("random", 0), ("original", 1), ("cleaned", 1), ("random", 1)]
    started, running, most = [], [0], [0]
    lock = threading.Lock()

    def fit_one(variant, seed, threads):
        with lock:
            started.append((variant, seed, threads))
            running[0] += 1
            most[0] = max(most[0], running[0])
        time.sleep(0.05)
        with lock:
            running[0] -= 1
        return f"{variant}-{seed}"

    before = torch.get_num_threads()
    got = fit_all(fit_one, fits, concurrent=True, threads=2, first=lambda v, s: (v, s) == ("original", 0))
    assert got == [f"{v}-{s}" for v, s in fits]
    assert most[0] == 2 and {t for *_, t in started} == {1}
    assert [f[:2] for f in started[:2]] == [("original", 0), ("original", 1)]
    assert torch.get_num_threads() == before
    started.clear()
    most[0] = 0
    assert fit_all(fit_one, fits, concurrent=False, threads=2, first=lambda v, s: False) == got
    assert most[0] == 1 and [f[:2] for f in started] == fits and {t for *_, t in started} == {2}
