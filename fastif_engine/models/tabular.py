"""``tabular-logreg`` and ``tabular-mlp``: classifiers over numeric feature columns.

Inputs are a float tensor ``[n, n_features]``; the model standardises them with the training
set's mean and std (kept as buffers, so retrains and saved models agree).
"""
from __future__ import annotations

import dataclasses

import torch
from torch import nn

from ..adapter import TrainableAdapter
from .training import TrainSettings, seeded, train


class Standardize(nn.Module):
    def __init__(self, n_features: int):
        super().__init__()
        self.register_buffer("mean", torch.zeros(n_features))
        self.register_buffer("std", torch.ones(n_features))

    def fit(self, x: torch.Tensor) -> None:
        self.mean.copy_(x.mean(0))
        self.std.copy_(x.std(0).clamp_min(1e-6))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return (x - self.mean) / self.std


class _TabularNet(nn.Module):
    def __init__(self, n_features: int, n_classes: int, hidden: tuple[int, ...]):
        super().__init__()
        self.scale = Standardize(n_features)
        layers: list[nn.Module] = []
        width = n_features
        for h in hidden:
            layers += [nn.Linear(width, h), nn.Tanh()]
            width = h
        self.body = nn.Sequential(*layers)
        self.head = nn.Linear(width, n_classes)

    def features(self, x: torch.Tensor) -> torch.Tensor:
        return self.body(self.scale(x))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.head(self.features(x))


class _TabularAdapter(TrainableAdapter):
    hidden: tuple[int, ...] = ()

    def __init__(self, n_features: int, n_classes: int, *, l2: float, settings: TrainSettings,
                 dtype: torch.dtype = torch.float32):
        self.n_features, self.n_classes, self.l2 = n_features, n_classes, l2
        self.settings, self._dtype = settings, dtype
        with seeded(settings.seed):
            self._net = self._build()

    def _build(self) -> _TabularNet:
        return _TabularNet(self.n_features, self.n_classes, self.hidden).to(self._dtype).eval()

    @property
    def model(self) -> nn.Module:
        return self._net

    def features(self, inputs: torch.Tensor) -> torch.Tensor:
        with torch.no_grad():
            return self._net.features(inputs.to(self._dtype))

    def fit(self, inputs: torch.Tensor, labels: torch.Tensor, seed: int | None = None) -> "_TabularAdapter":
        """Re-initialise (seeded) and train on ``(inputs, labels)`` with this model's recipe."""
        seed = self.settings.seed if seed is None else seed
        with seeded(seed):
            self._net = self._placed(self._build())
            self._net.scale.fit(inputs.to(self._dtype))
            train(self, inputs.to(self._dtype), labels, dataclasses.replace(self.settings, seed=seed))
        return self


class LogisticRegressionAdapter(_TabularAdapter):
    """Multinomial logistic regression, L2-regularised, fit to convergence by L-BFGS (convex)."""

    hidden = ()

    def __init__(self, n_features: int, n_classes: int, *, l2: float = 1e-2,
                 settings: TrainSettings = TrainSettings(optimizer="lbfgs", epochs=500, lr=1.0),
                 dtype: torch.dtype = torch.float32):
        super().__init__(n_features, n_classes, l2=l2, settings=settings, dtype=dtype)

    def features(self, inputs: torch.Tensor) -> torch.Tensor:
        with torch.no_grad():
            return self._net.scale(inputs.to(self._dtype))


class MLPAdapter(_TabularAdapter):
    """One tanh hidden layer (smooth, so its Hessian is well defined), Adam-trained."""

    def __init__(self, n_features: int, n_classes: int, *, hidden: int = 64, l2: float = 1e-3,
                 settings: TrainSettings = TrainSettings(optimizer="adam", epochs=60, lr=3e-3, batch_size=64),
                 dtype: torch.dtype = torch.float32):
        self.hidden = (hidden,)
        super().__init__(n_features, n_classes, l2=l2, settings=settings, dtype=dtype)
