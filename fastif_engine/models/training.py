"""The training recipe shared by first training and every retrain, and evaluation.

Objective (the one the Hessian in :mod:`fastif_engine.influence.hessian` describes):
    R(θ) = (1/N) Σ_i L(z_i, θ) + (l2/2) ‖θ_reg‖²
"""
from __future__ import annotations

import threading
from contextlib import contextmanager
from dataclasses import dataclass

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn

from ..adapter import ModelAdapter
from ..data.batching import INFERENCE_ROWS, Inputs, chunk_slices, n_rows, take, to_device
from ..errors import NonFiniteGradientError, SettingsError
from ..store.memory import TRIM_EVERY_INFERENCE, trimming


@dataclass(frozen=True)
class TrainSettings:
    optimizer: str = "adam"  # "adam" (minibatch) or "lbfgs" (full batch, for convex models)
    epochs: int = 30
    lr: float = 1e-3
    batch_size: int = 64
    seed: int = 0
    # minibatches of similar-length rows (text): about half the padded work, but a different fitted
    # model for the same seed (see ``minibatches``); off by default
    group_by_length: bool = False
    # Adam's learning rate over the run: "constant", or "linear" from ``lr`` down to 0 at the last
    # step, which settles the final weights instead of stopping mid-stride (less fit-to-fit spread)
    schedule: str = "constant"

    def __post_init__(self):
        if self.optimizer not in ("adam", "lbfgs"):
            raise SettingsError(f"optimizer must be 'adam' or 'lbfgs', got {self.optimizer!r}")
        for name in ("epochs", "batch_size"):
            value = getattr(self, name)
            if not isinstance(value, int) or isinstance(value, bool) or value < 1:
                raise SettingsError(f"{name} must be a whole number >= 1, got {value!r}")
        if not isinstance(self.lr, (int, float)) or not self.lr > 0:
            raise SettingsError(f"lr must be a number > 0, got {self.lr!r}")
        if self.schedule not in ("constant", "linear"):
            raise SettingsError(f"schedule must be 'constant' or 'linear', got {self.schedule!r}")
        if not isinstance(self.group_by_length, bool):
            raise SettingsError(f"group_by_length must be true or false, got {self.group_by_length!r}")


_SEED_LOCK = threading.RLock()


@contextmanager
def seeded(seed: int):
    """Run global-RNG work (weight init, dropout) for one model at a time, from ``seed``.

    torch's default generator is process-global: two models built or trained at once in a
    thread pool would draw from each other's stream, and the same seed would give different
    weights. Inside this block nothing else can use it, and its state is restored after.
    """
    with _SEED_LOCK, torch.random.fork_rng(devices=list(range(torch.cuda.device_count()))):
        torch.manual_seed(seed)
        yield


# The generator a fit running in this thread draws its dropout masks from (see ``drawing_from``).
_STREAM = threading.local()


def continued_stream() -> torch.Generator:
    """A CPU generator of its own that continues torch's global stream from where it is now.

    Taken inside :func:`seeded` once a model is built, it carries the rest of the fit's draws (dropout,
    through :func:`dropout` under :func:`drawing_from`): the lock can be let go and fits run in threads
    at once, with the masks the global generator would have given them."""
    gen = torch.Generator()
    gen.set_state(torch.get_rng_state())
    return gen


@contextmanager
def drawing_from(gen: torch.Generator):
    """This thread's :func:`dropout` draws from ``gen`` inside the block."""
    before, _STREAM.generator = getattr(_STREAM, "generator", None), gen
    try:
        yield
    finally:
        _STREAM.generator = before


def dropout(x: torch.Tensor, p: float, training: bool) -> torch.Tensor:
    """``F.dropout``, drawing from this thread's :func:`drawing_from` generator where a fit set one. The same
    masks for the same stream: on CPU ``F.dropout`` fills a tensor like ``x`` with Bernoulli(1 − p)
    draws and scales it by 1 / (1 − p) (tests/models: equal to the bit)."""
    gen = getattr(_STREAM, "generator", None)
    # (p of 0 or 1 and empty inputs: F.dropout returns without drawing, so the stream stays in step)
    if gen is None or not training or p in (0, 1) or x.numel() == 0 or x.device.type != "cpu":
        return F.dropout(x, p=p, training=training)
    noise = torch.empty_like(x).bernoulli_(1 - p, generator=gen)
    return x * noise.div_(1 - p)


class Dropout(nn.Dropout):
    """``nn.Dropout`` through :func:`dropout` (a fit's own generator where it has one)."""

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return dropout(x, self.p, self.training)


def own_dropout(module: nn.Module) -> nn.Module:
    """``module`` with every ``nn.Dropout`` inside replaced by :class:`Dropout` (same p), in place."""
    for name, child in module.named_children():
        if type(child) is nn.Dropout:
            setattr(module, name, Dropout(child.p))
        else:
            own_dropout(child)
    return module


def objective(adapter: ModelAdapter, inputs: Inputs, labels: torch.Tensor) -> torch.Tensor:
    """R(θ) on the given rows, differentiable w.r.t. the model's trainable parameters."""
    loss = adapter.loss(adapter.model(inputs), labels).mean()
    if adapter.l2:
        reg = sum((p ** 2).sum() for n, p in adapter.model.named_parameters()
                  if p.requires_grad and adapter.regularized(n))
        loss = loss + 0.5 * adapter.l2 * reg
    return loss


def train(adapter: ModelAdapter, inputs: Inputs, labels: torch.Tensor, settings: TrainSettings) -> None:
    """Fit ``adapter.model`` in place; deterministic for a given ``settings.seed``.

    The model is left in eval mode: dropout off, as influence requires.
    """
    model = adapter.model
    params = [p for p in model.parameters() if p.requires_grad]
    x_all = to_device(inputs, adapter.device)
    y_all = labels.to(adapter.device)
    gen = torch.Generator().manual_seed(settings.seed)
    model.train()
    try:
        if settings.optimizer == "lbfgs":
            opt = torch.optim.LBFGS(params, lr=settings.lr, max_iter=settings.epochs,
                                    tolerance_grad=1e-12, tolerance_change=1e-14,
                                    history_size=50, line_search_fn="strong_wolfe")

            def closure():
                opt.zero_grad()
                loss = objective(adapter, x_all, y_all)
                _check(loss, 0)
                loss.backward()
                return loss

            opt.step(closure)
        else:
            opt = torch.optim.Adam(params, lr=settings.lr)
            n = n_rows(inputs)
            lengths = adapter.row_lengths(inputs) if settings.group_by_length else None
            steps = settings.epochs * -(-n // settings.batch_size)
            step = 0
            for epoch in range(settings.epochs):
                for idx in trimming(minibatches(n, settings.batch_size, gen, lengths)):
                    idx = idx.to(adapter.device)
                    if settings.schedule == "linear":
                        opt.param_groups[0]["lr"] = settings.lr * (1 - step / steps)
                    opt.zero_grad()
                    loss = objective(adapter, adapter.trim_batch(take(x_all, idx)), y_all[idx])
                    _check(loss, epoch)
                    loss.backward()
                    opt.step()
                    step += 1
    finally:
        model.eval()


POOL_BATCHES = 50  # batches per pool whose rows are grouped by length


def minibatches(n: int, batch_size: int, gen: torch.Generator, lengths=None) -> list[torch.Tensor]:
    """One epoch's minibatches: a random permutation cut into ``batch_size`` rows.

    With row ``lengths`` (text), each pool of ``POOL_BATCHES`` batches of the permutation is
    sorted by length before it is cut, and the batches are then shuffled: a batch pads to its
    own longest row, so similar lengths together halve the padded work on short snippets
    while every batch is still a random draw of the data's lengths across the epoch.
    """
    perm = torch.randperm(n, generator=gen)
    if lengths is None:
        return [perm[rows] for rows in chunk_slices(n, batch_size)]
    lengths = torch.as_tensor(np.asarray(lengths))
    batches = []
    for pool in chunk_slices(n, batch_size * POOL_BATCHES):
        rows = perm[pool]
        rows = rows[torch.argsort(lengths[rows], stable=True)]
        batches += [rows[part] for part in chunk_slices(len(rows), batch_size)]
    return [batches[i] for i in torch.randperm(len(batches), generator=gen).tolist()]


@dataclass
class Evaluation:
    accuracy: float
    loss: float
    per_class_accuracy: dict[int, float]
    predictions: np.ndarray
    losses: np.ndarray  # per row, float64; ``loss`` is their mean

    def summary(self) -> dict:
        return {"accuracy": self.accuracy, "loss": self.loss,
                "per_class_accuracy": {str(k): v for k, v in self.per_class_accuracy.items()}}


@torch.no_grad()
def logits_in_chunks(adapter: ModelAdapter, inputs: Inputs, *, chunk_size: int = INFERENCE_ROWS) -> torch.Tensor:
    """``[n, C]`` logits of every row on the CPU, computed ``chunk_size`` rows at a time."""
    return torch.cat([adapter.model(adapter.trim_batch(to_device(take(inputs, rows), adapter.device))).cpu()
                      for rows in trimming(chunk_slices(n_rows(inputs), chunk_size), every=TRIM_EVERY_INFERENCE)])


@torch.no_grad()
def evaluate(adapter: ModelAdapter, inputs: Inputs, labels: torch.Tensor, *,
             chunk_size: int = INFERENCE_ROWS) -> Evaluation:
    """Accuracy, per-row and mean loss, and per-class accuracy, in chunks."""
    logits = logits_in_chunks(adapter, inputs, chunk_size=chunk_size)
    pred = logits.argmax(-1).numpy()
    y = labels.cpu().numpy()
    correct = pred == y
    per_class = {int(c): float(correct[y == c].mean()) for c in np.unique(y)}
    row_losses = adapter.loss(logits, labels.cpu()).double().numpy()
    return Evaluation(float(correct.mean()), float(row_losses.mean()), per_class, pred, row_losses)


def _check(loss: torch.Tensor, epoch: int) -> None:
    if not torch.isfinite(loss):
        raise NonFiniteGradientError(
            f"training loss became {float(loss)} in epoch {epoch + 1}: lower the learning rate, "
            "or check the inputs for extreme values")
