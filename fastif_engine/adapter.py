"""The one class a user implements to run fastif on their own classifier.

fastif never looks inside the model: everything (gradients, Hessian-vector products, kNN
features, predictions) goes through a :class:`ModelAdapter`.  A minimal adapter::

    class MyAdapter(ModelAdapter):
        def __init__(self, net):
            self.net = net.eval()
        @property
        def model(self):
            return self.net
        def features(self, inputs):
            return self.net.body(inputs)          # what the classifier head sees

``model(inputs)`` must return logits ``[n, n_classes]``; ``inputs`` is a tensor or a dict of
tensors whose first dim is the row (see :mod:`fastif_engine.data.batching`).
"""
from __future__ import annotations

import contextlib
from abc import ABC, abstractmethod

import torch
import torch.nn.functional as F
from torch import nn

from .data.batching import Inputs


class ModelAdapter(ABC):
    """Tells fastif which parameters to differentiate, the per-example loss, and the features.

    Attributes:
        l2: coefficient of the L2 penalty ``(l2 / 2) * sum(p**2)`` that the model was trained
            with, over :meth:`regularized` parameters.  It belongs to the training objective,
            so it enters the Hessian (and so s_test) but never a single example's gradient:
            adding it to every training gradient shifts all scores by a shared bias.
    """

    l2: float = 0.0

    @property
    @abstractmethod
    def model(self) -> nn.Module:
        """The classifier; ``model(inputs)`` returns logits. Kept in eval mode (no dropout)."""

    @abstractmethod
    def features(self, inputs: Inputs) -> torch.Tensor:
        """Feature vectors ``[n, d]`` used for the kNN search (what the classifier head sees)."""

    def parameter_names(self) -> list[str]:
        """Names (as in ``model.named_parameters()``) of the parameters influence is taken over.

        Default: every parameter with ``requires_grad``.  FastIF differentiates only the top
        layers and the head; freeze the rest (``requires_grad_(False)``) or override this.
        """
        return [n for n, p in self.model.named_parameters() if p.requires_grad]

    def loss(self, logits: torch.Tensor, labels: torch.Tensor) -> torch.Tensor:
        """Per-example loss ``[n]`` (cross-entropy unless overridden)."""
        return F.cross_entropy(logits, labels, reduction="none")

    def regularized(self, name: str) -> bool:
        """Whether parameter ``name`` carries the L2 penalty (biases and norm weights do not)."""
        lowered = name.lower()
        return not (lowered.endswith("bias") or "norm" in lowered)

    def trim_batch(self, inputs: Inputs) -> Inputs:
        """Drop what is padding for every row of this batch (e.g. trailing pad tokens).

        Called on each chunk/minibatch before any forward pass; results must not change.
        """
        return inputs

    def row_lengths(self, inputs: Inputs):
        """Optional per-row size (e.g. tokens) so gradient chunks group rows of similar length.

        ``None`` (the default) keeps rows in their given order; text adapters return lengths,
        which cuts the padding that :meth:`trim_batch` cannot remove from a mixed chunk.
        """
        return None

    def rows_first(self):
        """A context in which every layer's activations keep the row as their first dimension.

        Curvature factors (EK-FAC) sum a row's gradient over the other dimensions; a model that
        packs rows' tokens together for speed turns that off here. Default: nothing to change.
        """
        return contextlib.nullcontext()

    @property
    def device(self) -> torch.device:
        return next(self.model.parameters()).device

    @property
    def dtype(self) -> torch.dtype:
        return next(self.model.parameters()).dtype

    @torch.no_grad()
    def logits(self, inputs: Inputs) -> torch.Tensor:
        return self.model(inputs)

    @torch.no_grad()
    def predict(self, inputs: Inputs) -> torch.Tensor:
        """Predicted class per row."""
        return self.logits(inputs).argmax(dim=-1)


class TrainableAdapter(ModelAdapter):
    """A :class:`ModelAdapter` that also turns table values into inputs and trains itself.

    The flows need both: ``prepare`` once per split (cached), ``fit`` for the first training
    and again, with the same recipe and another seed, for every retrain.
    """

    placement: torch.device | None = None  # where fit() builds the model; None = CPU
    # Input leaves (by name, of dict inputs) the flow writes to disk and reads by rows
    # (``batching.RowFile``); ``prepare`` must give their rows one shape whatever the values.
    rows_on_disk: tuple[str, ...] = ()
    # Whether fits of copies of this model may run in threads at once (the retrain's): True where ``fit``
    # holds ``models.training.seeded``'s lock only while it draws from torch's global generator.
    concurrent_fits: bool = False

    def to(self, device: torch.device | str) -> "TrainableAdapter":
        """Move the model to ``device`` and build every later ``fit`` there (e.g. ``"cuda"``)."""
        self.placement = torch.device(device)
        self.model.to(self.placement)
        return self

    def _placed(self, net: nn.Module) -> nn.Module:
        """A freshly built network, moved to this adapter's device (for ``fit``)."""
        return net.to(self.placement) if self.placement is not None else net

    def prepare(self, values) -> Inputs:
        """Column values of a validated split (text list, ``[n, F]`` or ``[n, 1, H, W]`` floats) → inputs."""
        return torch.as_tensor(values, dtype=self.dtype)

    @abstractmethod
    def fit(self, inputs: Inputs, labels: torch.Tensor, seed: int = 0) -> "TrainableAdapter":
        """Re-initialise (deterministically for ``seed``) and train on ``(inputs, labels)``."""
