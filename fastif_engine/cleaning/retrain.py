"""Fix-and-retrain: does fixing the flagged rows help more than fixing random ones?

For each seed: train on all rows (original), with the flagged rows fixed (cleaned), and with as
many randomly chosen rows fixed the same way (random control), with the same recipe; evaluate
each on the held-out split. A fix removes the rows, or (``targets`` given) relabels them to
``targets`` — the classes a model trained without the flags predicts for them. Retraining noise
is large (FastIF: removing one random point already moved a test loss by −0.16), so the spread
over seeds and the random control matter as much as the mean (see ``verdict``).
"""
from __future__ import annotations

import logging
import statistics
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor, as_completed
from dataclasses import dataclass

import numpy as np
import torch

from ..adapter import TrainableAdapter
from ..data.batching import Inputs, select
from ..errors import SettingsError
from ..models.training import evaluate

log = logging.getLogger("fastif_engine")

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


# Fits a retrain task runs at once where the model allows it (``concurrent_fits``), one core each: two
# 1-thread text-minilm fits at once on two cores did 1.21× the work of one 2-thread fit after another.
FITS_AT_ONCE = 4


def fits_per_task(concurrent: Callable[[], bool], threads: int | None, n_fits: int) -> int:
    """(variant, seed) fits one retrain task takes: all of them where it can run them at once (more than
    one core, ``threads``, None: this process's torch threads; and ``concurrent()``, the model's
    ``concurrent_fits``), so none waits for a slower one of its group; else one (pool and Dask
    workers run tasks at once)."""
    return n_fits if (threads or torch.get_num_threads()) > 1 and concurrent() else 1


def fit_all(fit_one: Callable[[str, int, int], str], fits: list[tuple[str, int]], *, concurrent: bool,
            threads: int, first: Callable[[str, int], bool]) -> list[str]:
    """``fit_one(variant, seed, torch threads)`` for every pair of ``fits``, results in their order. Where the
    model's fits may run at once (``concurrent``) up to ``threads`` of them (``FITS_AT_ONCE`` at most) run in
    threads, a core each: the ``first`` ones started first, then the original variant's (all rows, the
    longest), so the last fit to start is a short one; otherwise one after the other on every core."""
    at_once = min(len(fits), threads, FITS_AT_ONCE) if concurrent else 1
    if at_once == 1:
        return [fit_one(*fit, threads) for fit in fits]
    order = sorted(range(len(fits)), key=lambda i: (not first(*fits[i]), fits[i][0] != "original"))
    paths: list[str] = [""] * len(fits)
    try:
        with ThreadPoolExecutor(at_once, thread_name_prefix="fastif-fit") as pool:
            futures = {pool.submit(fit_one, *fits[i], max(1, threads // at_once)): i for i in order}
            for done, future in enumerate(as_completed(futures), start=1):
                paths[futures[future]] = future.result()
                log.info("retrain: %d/%d fits done, %d at a time", done, len(fits), at_once)
        return paths
    finally:
        torch.set_num_threads(threads)  # MKL's count is process-wide: the fits' own is not left behind


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
