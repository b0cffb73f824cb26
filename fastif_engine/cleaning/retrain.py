"""Fix-and-retrain: does fixing the flagged rows help more than fixing random ones?

For each seed: train on all rows (original), with the flagged rows fixed (cleaned), and with as
many randomly chosen rows fixed the same way (random control), with the same recipe; evaluate
each on the held-out split. A fix removes the rows, or (``targets`` given) relabels them to
``targets`` — the classes a model trained without the flags predicts for them. Retraining noise
is large (FastIF: removing one random point already moved a test loss by −0.16), so the spread
over seeds and the random control matter as much as the mean (see ``verdict``).
"""
from __future__ import annotations

import statistics
from dataclasses import dataclass

import numpy as np
import torch

from ..adapter import TrainableAdapter
from ..data.batching import Inputs, select
from ..errors import SettingsError
from ..models.training import evaluate

VARIANTS = ("original", "cleaned", "random")


def training_set(variant: str, labels: torch.Tensor, flagged: np.ndarray, seed: int,
                 targets: np.ndarray | None = None) -> tuple[np.ndarray, torch.Tensor]:
    """Training rows kept by ``variant`` and their labels (the random control is seeded and as large
    as the flags; without ``targets`` a fix removes rows, with them it relabels them)."""
    n_train = len(labels)
    if variant == "original":
        return np.arange(n_train), labels
    if variant == "cleaned":
        fixed = np.flatnonzero(flagged)
    elif variant == "random":
        fixed = np.random.default_rng(10_000 + seed).choice(n_train, int(flagged.sum()), replace=False)
    else:
        raise SettingsError(f"unknown variant {variant!r}")
    if targets is None:
        return np.setdiff1d(np.arange(n_train), fixed), labels
    relabelled = labels.clone()
    relabelled[torch.as_tensor(fixed, dtype=torch.long)] = torch.as_tensor(targets[fixed], dtype=labels.dtype)
    return np.arange(n_train), relabelled


def retrain_and_evaluate(adapter: TrainableAdapter, train_inputs: Inputs, train_labels: torch.Tensor,
                         eval_inputs: Inputs, eval_labels: torch.Tensor, flagged: np.ndarray,
                         variant: str, seed: int, targets: np.ndarray | None = None, *,
                         fitted: bool = False) -> dict:
    """Fit a fresh model on ``variant``'s rows with ``seed``; its accuracy and loss on the eval split.

    ``fitted``: ``adapter`` already is that fit, so it is only evaluated. Only the original rows
    qualify (the model a run trained with its own seed is the original variant's fit for that seed)."""
    if fitted and variant != "original":
        raise SettingsError(f"only the original variant can reuse a fitted model, not {variant!r}")
    rows, labels = training_set(variant, train_labels, flagged, seed, targets)
    idx = torch.as_tensor(rows)
    if not fitted:
        adapter.fit(select(train_inputs, idx), labels[idx], seed=seed)
    ev = evaluate(adapter, eval_inputs, eval_labels)
    changed = int((labels != train_labels).sum())
    return {"variant": variant, "seed": seed, "rows": int(len(rows)), "relabelled": changed,
            "accuracy": ev.accuracy, "loss": ev.loss, "reused_fit": fitted}


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
