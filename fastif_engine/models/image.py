"""``image-cnn``: a small CNN trained from scratch on grayscale images (digits, Fashion-MNIST).

Inputs are ``[n, 1, H, W]`` floats. Features for the kNN are the penultimate layer (what the
head sees). Influence is taken over the top layers — the penultimate ``fc`` and the ``head``
(FastIF's choice of differentiating only the top of the network) — or over everything with
``influence_layers="all"``.
"""
from __future__ import annotations

import dataclasses

import torch
from torch import nn

from ..adapter import TrainableAdapter
from ..errors import SettingsError
from .training import TrainSettings, seeded, train


class _CNN(nn.Module):
    def __init__(self, side: int, n_classes: int, width: int, hidden: int):
        super().__init__()
        self.register_buffer("mean", torch.zeros(()))
        self.register_buffer("std", torch.ones(()))
        self.conv = nn.Sequential(
            nn.Conv2d(1, width, 3, padding=1), nn.ReLU(), nn.MaxPool2d(2),
            nn.Conv2d(width, 2 * width, 3, padding=1), nn.ReLU(), nn.MaxPool2d(2),
        )
        self.fc = nn.Linear(2 * width * (side // 4) ** 2, hidden)
        self.head = nn.Linear(hidden, n_classes)

    def features(self, x: torch.Tensor) -> torch.Tensor:
        h = self.conv((x - self.mean) / self.std)
        return torch.tanh(self.fc(h.flatten(1)))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.head(self.features(x))


class CNNAdapter(TrainableAdapter):
    def __init__(self, side: int, n_classes: int, *, width: int = 16, hidden: int = 64,
                 influence_layers: str = "top", l2: float = 1e-3,
                 settings: TrainSettings = TrainSettings(optimizer="adam", epochs=8, lr=2e-3, batch_size=128,
                                                          schedule="linear")):
        if side < 4:
            raise SettingsError(f"image-cnn needs images of at least 4×4 pixels, got {side}×{side}")
        if influence_layers not in ("top", "all"):
            raise SettingsError("influence_layers must be 'top' or 'all'")
        self.side, self.n_classes, self.width, self.hidden = side, n_classes, width, hidden
        self.influence_layers, self.l2, self.settings = influence_layers, l2, settings
        with seeded(settings.seed):
            self._net = self._build()

    def _build(self) -> _CNN:
        return _CNN(self.side, self.n_classes, self.width, self.hidden).eval()

    @property
    def model(self) -> nn.Module:
        return self._net

    def parameter_names(self) -> list[str]:
        names = [n for n, _ in self._net.named_parameters()]
        return names if self.influence_layers == "all" else [n for n in names if n.startswith(("fc.", "head."))]

    def features(self, inputs: torch.Tensor) -> torch.Tensor:
        with torch.no_grad():
            return self._net.features(inputs)

    def fit(self, inputs: torch.Tensor, labels: torch.Tensor, seed: int = 0) -> "CNNAdapter":
        with seeded(seed):
            self._net = self._placed(self._build())
            self._net.mean.fill_(float(inputs.mean()))
            self._net.std.fill_(float(inputs.std().clamp_min(1e-6)))
            train(self, inputs, labels, dataclasses.replace(self.settings, seed=seed))
        return self
