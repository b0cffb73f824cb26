"""A worked bring-your-own-model example: a two-layer softplus network over numeric features.

Run fastif with it:

    fastif clean --train T --valid V --out runs/custom \\
        --model examples.custom_model.softplus_mlp:make_model

fastif calls ``make_model(info)`` with the data's :class:`~fastif_engine.models.DataInfo` and
uses the returned :class:`~fastif_engine.TrainableAdapter` for training, retraining,
gradients and kNN features.
"""
import torch
from torch import nn

from fastif_engine import TrainableAdapter
from fastif_engine.models import DataInfo, TrainSettings, seeded, train


class SoftplusNet(nn.Module):
    def __init__(self, n_features: int, n_classes: int, hidden: int = 32):
        super().__init__()
        self.register_buffer("mean", torch.zeros(n_features))
        self.register_buffer("std", torch.ones(n_features))
        self.body = nn.Sequential(nn.Linear(n_features, hidden), nn.Softplus())
        self.head = nn.Linear(hidden, n_classes)

    def features(self, x):
        return self.body((x - self.mean) / self.std)

    def forward(self, x):
        return self.head(self.features(x))


class SoftplusAdapter(TrainableAdapter):
    l2 = 1e-3

    def __init__(self, n_features: int, n_classes: int):
        self.n_features, self.n_classes = n_features, n_classes
        self.net = SoftplusNet(n_features, n_classes).eval()

    @property
    def model(self):
        return self.net

    def features(self, inputs):
        with torch.no_grad():
            return self.net.features(inputs)

    def fit(self, inputs, labels, seed=0):
        with seeded(seed):  # deterministic init even when retrains run in parallel threads
            self.net = SoftplusNet(self.n_features, self.n_classes).eval()
            self.net.mean.copy_(inputs.mean(0))
            self.net.std.copy_(inputs.std(0).clamp_min(1e-6))
            train(self, inputs, labels, TrainSettings(optimizer="adam", epochs=40, lr=3e-3, seed=seed))
        return self


def make_model(info: DataInfo) -> SoftplusAdapter:
    if info.modality != "tabular":
        raise ValueError(f"this example model takes numeric feature columns, not {info.modality} inputs")
    return SoftplusAdapter(info.input_shape[0], info.n_classes)
