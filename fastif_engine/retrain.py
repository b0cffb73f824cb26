"""Remove-and-retrain: does dropping the flagged rows help more than dropping random ones?

For each seed: train on all rows (original), without the flagged rows (cleaned), and without
as many randomly chosen rows (random control), with the same recipe; evaluate each on the
held-out split. Retraining noise is large (FastIF: removing one random point already moved a
test loss by −0.16), so the spread over seeds and the random control matter as much as the mean.
"""
from __future__ import annotations

import statistics
from dataclasses import dataclass

import numpy as np
import torch

from .adapter import TrainableAdapter
from .batching import Inputs, take
from .training import evaluate

VARIANTS = ("original", "cleaned", "random")


def keep_rows(variant: str, n_train: int, flagged: np.ndarray, seed: int) -> np.ndarray:
    """Training rows kept by ``variant`` (random removal is seeded and as large as the flags)."""
    if variant == "original":
        return np.arange(n_train)
    if variant == "cleaned":
        return np.flatnonzero(~flagged)
    if variant == "random":
        drop = np.random.default_rng(10_000 + seed).choice(n_train, int(flagged.sum()), replace=False)
        return np.setdiff1d(np.arange(n_train), drop)
    raise ValueError(f"unknown variant {variant!r}")


def retrain_and_evaluate(adapter: TrainableAdapter, train_inputs: Inputs, train_labels: torch.Tensor,
                         eval_inputs: Inputs, eval_labels: torch.Tensor, flagged: np.ndarray,
                         variant: str, seed: int) -> dict:
    """Fit a fresh model on ``variant``'s rows with ``seed``; its accuracy and loss on the eval split."""
    rows = keep_rows(variant, len(train_labels), flagged, seed)
    idx = torch.as_tensor(rows)
    adapter.fit(take(train_inputs, idx), train_labels[idx], seed=seed)
    ev = evaluate(adapter, eval_inputs, eval_labels)
    return {"variant": variant, "seed": seed, "rows": int(len(rows)), "accuracy": ev.accuracy, "loss": ev.loss}


@dataclass
class Summary:
    mean: float
    std: float
    values: list[float]

    def as_dict(self) -> dict:
        return {"mean": self.mean, "std": self.std, "values": self.values}


def summarise(results: list[dict], key: str = "accuracy") -> dict[str, Summary]:
    """Mean ± std (sample std; 0 for one seed) of ``key`` per variant."""
    out = {}
    for variant in VARIANTS:
        vals = [r[key] for r in sorted(results, key=lambda r: r["seed"]) if r["variant"] == variant]
        if vals:
            std = statistics.stdev(vals) if len(vals) > 1 else 0.0
            out[variant] = Summary(statistics.mean(vals), std, vals)
    return out
