"""Your own torch classifier, already trained, explained by fastif.

A small network over the breast-cancer features, trained in plain torch as you would train yours;
``TorchClassifier`` tells fastif which parameters to take influence over (the head) and how to
retrain a copy; ``weights="given"`` explains the trained network itself.

    python examples/torch_module.py
"""
from __future__ import annotations

import numpy as np
import torch
from sklearn.datasets import load_breast_cancer
from torch import nn

import fastif_engine
from fastif_engine.data.datasets import add_label_noise


class Net(nn.Module):
    def __init__(self, n_features: int, mean: torch.Tensor, std: torch.Tensor):
        super().__init__()
        self.register_buffer("mean", mean)
        self.register_buffer("std", std)
        self.body = nn.Sequential(nn.Linear(n_features, 32), nn.Tanh())
        self.head = nn.Linear(32, 2)

    def forward(self, x):
        return self.head(self.body((x - self.mean) / self.std))


def fit(net: nn.Module, x: torch.Tensor, y: torch.Tensor, seed: int = 0) -> None:
    """Full-batch L-BFGS to convergence (influence assumes a minimum), L2 on the weights."""
    torch.manual_seed(seed)
    opt = torch.optim.LBFGS(net.parameters(), max_iter=500, tolerance_grad=1e-9, line_search_fn="strong_wolfe")

    def closure():
        opt.zero_grad()
        loss = nn.functional.cross_entropy(net(x), y) + 0.5 * 1e-2 * sum((p ** 2).sum() for n, p in
                                                                           net.named_parameters() if "weight" in n)
        loss.backward()
        return loss

    net.train()
    opt.step(closure)
    net.eval()


def main(seed: int = 0, out: str | None = None) -> fastif_engine.CleanResult:
    x, y = load_breast_cancer(return_X_y=True, as_frame=True)
    frame = x.rename(columns=lambda c: c.replace(" ", "_")).assign(label=np.where(y == 1, "benign", "malignant"))
    order = np.random.default_rng(seed).permutation(len(frame))
    train = add_label_noise(frame.iloc[order[:340]].reset_index(drop=True), 0.1, np.random.default_rng(seed + 1))
    valid, test = frame.iloc[order[340:455]], frame.iloc[order[455:]]

    features = [c for c in frame.columns if c != "label"]
    xt = torch.tensor(train[features].to_numpy(), dtype=torch.float32)
    yt = torch.tensor((train["label"] == "malignant").to_numpy(), dtype=torch.long)  # classes in sorted order
    net = Net(len(features), xt.mean(0), xt.std(0))
    fit(net, xt, yt, seed)  # the model you already have

    # l2: the penalty fit() trains with (on weights, not biases): it is part of the Hessian
    model = fastif_engine.TorchClassifier(net, differentiate=["head.*"], fit=fit, l2=1e-2)
    result = fastif_engine.clean(train, valid, test, model=model, weights="given", retrain=True, k=100, out=out,
                                 progress=False)
    flipped = train["noisy"].to_numpy()[result.flags["flagged"].to_numpy()]
    print(f"{len(flipped)} rows flagged, {int(flipped.sum())} of them mislabelled; verdict: {result.verdict}; "
          f"gradient at the given weights {result.metrics['model_fit']['ratio']:.2g} × a row's")
    return result


if __name__ == "__main__":
    main()
