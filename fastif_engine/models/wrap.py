"""Any ``nn.Module`` classifier as a fastif model: :class:`TorchClassifier`.

    model = TorchClassifier(net, differentiate=["head.*"])          # influence over the head only
    result = fastif_engine.clean(train_df, valid_df, model=model, weights="given")

``differentiate``: name patterns (``fnmatch``, as in ``net.named_parameters()``) of the
parameters influence is taken over (FastIF: the top layers and the head). ``features``: the
submodule whose output the kNN search compares (default: the input of the last ``nn.Linear``,
what the head sees). ``fit``: how a copy is trained for retrains, ``fit(module, inputs, labels,
seed)`` in place; by default the differentiated layers are re-initialised and trained with
fastif's recipe while everything else stays as given. Every fit starts from a copy of the
module as it was given, so retrains never inherit one another's weights.
"""
from __future__ import annotations

import copy
import dataclasses
import fnmatch
from typing import Callable

import torch
from torch import nn

from ..adapter import TrainableAdapter
from ..data.batching import Inputs
from ..errors import FastIFError
from .training import TrainSettings, seeded, train

FitFn = Callable[[nn.Module, Inputs, torch.Tensor, int], None]


class TorchClassifier(TrainableAdapter):
    """Wrap ``module`` (inputs → logits ``[n, C]``); see the module docstring for the arguments."""

    def __init__(self, module: nn.Module, *, differentiate: tuple[str, ...] | list[str] = ("*",),
                 features: str | None = None, fit: FitFn | None = None, l2: float = 0.0,
                 settings: TrainSettings = TrainSettings(optimizer="adam", epochs=30, lr=1e-3, batch_size=64)):
        self._given = copy.deepcopy(module).eval()
        self.patterns = tuple(differentiate)
        self.feature_module = features
        self.fit_fn, self.l2, self.settings = fit, l2, settings
        self._net = copy.deepcopy(self._given)
        self.parameter_names()  # checks the patterns and the feature module now, not in the middle of a run
        self._feature_layer()

    @property
    def model(self) -> nn.Module:
        return self._net

    def parameter_names(self) -> list[str]:
        named = [n for n, _ in self._net.named_parameters()]
        chosen = [n for n in named if any(fnmatch.fnmatchcase(n, p) for p in self.patterns)]
        if not chosen:
            raise FastIFError(f"TorchClassifier: differentiate={list(self.patterns)} matches no parameter "
                              f"(the module has {', '.join(named[:12])}{', …' if len(named) > 12 else ''})")
        return chosen

    def _feature_layer(self) -> tuple[nn.Module, bool]:
        """The module whose output (``True``) or input (``False``, the last Linear) are the features."""
        if self.feature_module is not None:
            modules = dict(self._net.named_modules())
            if self.feature_module not in modules:
                raise FastIFError(f"TorchClassifier: features={self.feature_module!r} is not a submodule "
                                  f"(have {', '.join(n for n in modules if n)[:300]})")
            return modules[self.feature_module], True
        linears = [m for m in self._net.modules() if isinstance(m, nn.Linear)]
        if not linears:
            raise FastIFError("TorchClassifier: the module has no nn.Linear head; name the submodule whose "
                              "output is the features (features=...)")
        return linears[-1], False

    @torch.no_grad()
    def features(self, inputs: Inputs) -> torch.Tensor:
        layer, output = self._feature_layer()
        seen = []
        hook = layer.register_forward_hook(lambda mod, args, out: seen.append(out if output else args[0]))
        try:
            self._net(inputs)
        finally:
            hook.remove()
        return seen[-1].reshape(len(seen[-1]), -1)

    def prepare(self, values) -> Inputs:
        return torch.as_tensor(values, dtype=next(self._given.parameters()).dtype)

    def fit(self, inputs: Inputs, labels: torch.Tensor, seed: int = 0) -> "TorchClassifier":
        with seeded(seed):
            self._net = self._placed(copy.deepcopy(self._given))
            if self.fit_fn is not None:
                self.fit_fn(self._net, inputs, labels, seed)
            else:
                self._fit_differentiated(inputs, labels, seed)
        self._net.eval()
        return self

    def _fit_differentiated(self, inputs: Inputs, labels: torch.Tensor, seed: int) -> None:
        """Re-initialise the layers that own differentiated parameters; train those parameters only."""
        chosen = set(self.parameter_names())
        for name, module in self._net.named_modules():
            owned = {f"{name}.{p}" if name else p for p, _ in module.named_parameters(recurse=False)}
            if owned & chosen and hasattr(module, "reset_parameters"):
                module.reset_parameters()
        frozen = [p for n, p in self._net.named_parameters() if n not in chosen and p.requires_grad]
        for p in frozen:
            p.requires_grad_(False)
        try:
            train(self, inputs, labels, dataclasses.replace(self.settings, seed=seed))
        finally:
            for p in frozen:
                p.requires_grad_(True)
