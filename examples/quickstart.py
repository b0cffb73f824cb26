"""fastif_engine in a notebook: which training rows cause a digits classifier's mistakes?

Flips 10% of the training labels of scikit-learn's digits, trains a small MLP, then scores the
k nearest training rows of every misclassified validation example with FastIF influence
(positive = harmful) and checks how many flipped rows rank among the most harmful; then the
same with net harm (influence on the whole validation loss), the score fastif flags by.

    python examples/quickstart.py
"""
import numpy as np
import torch
from sklearn.datasets import load_digits

from fastif_engine import FastIF, net_harm
from fastif_engine.models import MLPAdapter


def main(noise: float = 0.1, k: int = 100, seed: int = 0) -> dict:
    x, y = load_digits(return_X_y=True)
    rng = np.random.default_rng(seed)
    order = rng.permutation(len(y))
    train, valid = order[:1200], order[1200:]
    y_noisy = y.copy()
    flipped = rng.choice(train, int(noise * len(train)), replace=False)
    y_noisy[flipped] = (y[flipped] + rng.integers(1, 10, len(flipped))) % 10  # always a wrong class

    xt, yt = torch.tensor(x[train], dtype=torch.float32), torch.tensor(y_noisy[train])
    xv, yv = torch.tensor(x[valid], dtype=torch.float32), torch.tensor(y[valid])
    model = MLPAdapter(64, 10).fit(xt, yt, seed=seed)
    wrong = (model.predict(xv) != yv).nonzero().ravel()
    print(f"validation accuracy {1 - len(wrong) / len(yv):.3f}; {len(wrong)} errors to explain")

    fi = FastIF(model, xt, yt, k=k)  # solver "auto": this MLP's Hessian is small enough to invert exactly
    table = fi.influence(xv[wrong], yv[wrong])  # test_pos, train_index, influence (+ = harmful), rank
    harm = table.groupby("train_index")["influence"].sum().reindex(range(len(train)), fill_value=0.0)
    top = harm.sort_values(ascending=False).index[: len(train) // 10]
    is_flipped = np.isin(train, flipped)
    recall = is_flipped[top].mean() * len(top) / is_flipped.sum()
    print(f"ridge λ = {fi.solver.ridge:.3g}; {table.train_index.nunique()} distinct candidates scored")
    print(f"flipped labels among the top 10% most harmful rows: {recall:.0%} of all flipped "
          f"(random would find 10%)")
    net = net_harm(model, xt, yt, xv, yv, fi.solver, seed=seed)  # 10 validation folds, one solve
    top_net = np.argsort(-net.score)[: len(train) // 10]
    recall_net = is_flipped[top_net].sum() / is_flipped.sum()
    print(f"... and among the top 10% by net harm on the whole validation loss: {recall_net:.0%}")
    return {"recall_top10": float(recall), "recall_top10_net_harm": float(recall_net), "n_errors": int(len(wrong))}


if __name__ == "__main__":
    main()
