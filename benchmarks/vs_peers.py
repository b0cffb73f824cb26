"""fastif's default solver beside dattri's and pyDVL's exact-quality solvers on digits, every training row scored.

    pip install --no-deps --target benchmarks/.peers dattri==0.3.0 pydvl==0.10.0 zarr==3.1.6 \
        numcodecs==0.15.1 donfig google-crc32c pyDeprecate more-itertools Deprecated
    TQDM_DISABLE=1 PYTHONPATH=benchmarks/.peers python benchmarks/vs_peers.py [--repeats 3] [--ridges 0.3*max,0.05]

The peers are never fastif dependencies: they install beside the benchmark with ``--no-deps``
(pyDVL pins numpy < 2; its torch influence code runs on today's numpy).

Digits (sklearn's copy): the first 1,257 rows train the built-in ``tabular-logreg`` (650
parameters) and ``tabular-mlp`` (4,810) with fastif's own recipes, in float64 (conjugate
gradient run to convergence divides by ~0 in float32: dattri's does, giving NaN); the next 30
rows are the test rows. Every method computes I = −∇L(test)ᵀ (H + λI)⁻¹ ∇L(train) for all
30 × 1,257 pairs on one thread, with H the Hessian of the training objective (mean
cross-entropy + (l2/2)‖W‖² over the weights) and one ridge λ per ``--ridges`` entry: ``F*max`` is
F × the Hessian's sampled top eigenvalue (``hessian.spectrum``; 0.3*max is ``fastif clean``'s default,
0.03*max 10× less; the estimate's time is reported on its own), a plain number d is λ = d × scale
(the scale estimated once as fastif does; 0.05 was the default up to 0.3.3). The peers see the L2 term the
same way: a flag carried with the data puts it into the Hessian's rows and never into a scored
row's gradient. The reference is an explicit float64 Hessian (``torch.autograd.functional.hessian``)
and ``torch.linalg.solve``. Times are medians over ``--repeats`` runs, each from the trained model
to the score matrix (solver set-up included); a method is not run again once its runs add up to
10 s. "gradient dot product" is the no-Hessian baseline −∇L(test)ᵀ∇L(train)/λ: what the Hessian
adds at that ridge.
"""
from __future__ import annotations

import argparse
import json
import statistics
import time

import numpy as np
import torch
from sklearn.datasets import load_digits
from torch import nn
from torch.func import functional_call, grad, vmap
from torch.utils.data import DataLoader, TensorDataset

import fastif_engine
from fastif_engine.influence.api import FastIF
from fastif_engine.influence.gradients import FlatParams
from fastif_engine.influence.hessian import spectrum
from fastif_engine.influence.solvers import DEFAULT_DAMPING, RIDGE_OF_TOP, LissaSettings, with_scale
from fastif_engine.models.tabular import LogisticRegressionAdapter, MLPAdapter
from _shared import results_dir

RESULTS = results_dir() / "vs_peers.json"
N_TRAIN, N_TEST = 1257, 30
SLOW_SECONDS = 10.0  # a method whose runs add up to this is not repeated further


def digits():
    x, y = load_digits(return_X_y=True)
    x, y = torch.tensor(x, dtype=torch.float64), torch.tensor(y)
    return x[:N_TRAIN], y[:N_TRAIN], x[N_TRAIN:N_TRAIN + N_TEST], y[N_TRAIN:N_TRAIN + N_TEST]


def reference(adapter, x, y, xt, yt, ridge: float) -> np.ndarray:
    """float64 explicit Hessian of the training objective, solved exactly."""
    model = adapter.model
    named = {n: p.detach() for n, p in model.named_parameters()}
    buffers = dict(model.named_buffers())
    names, shapes = list(named), [p.shape for p in named.values()]
    sizes = [p.numel() for p in named.values()]
    theta = torch.cat([p.reshape(-1) for p in named.values()])
    mask = torch.cat([torch.full((s,), float(adapter.regularized(n)), dtype=torch.float64)
                      for n, s in zip(names, sizes)])

    def params(t):
        return {**{n: c.view(s) for n, c, s in zip(names, torch.split(t, sizes), shapes)}, **buffers}

    def row_loss(t, xi, yi):
        out = functional_call(model, params(t), (xi[None],))
        return nn.functional.cross_entropy(out, yi[None])

    def objective(t):
        out = functional_call(model, params(t), (x,))
        return nn.functional.cross_entropy(out, y) + 0.5 * adapter.l2 * (mask * t * t).sum()

    hessian = torch.autograd.functional.hessian(objective, theta)
    rows = vmap(grad(row_loss), in_dims=(None, 0, 0))
    g_train, g_test = rows(theta, x, y), rows(theta, xt, yt)
    s = torch.linalg.solve(hessian + ridge * torch.eye(len(theta), dtype=torch.float64), g_test.T).T
    return -(s @ g_train.T).numpy(), -(g_test @ g_train.T).numpy() / ridge


def fastif_scores(solver: str):
    def run(adapter, x, y, xt, yt, ridge):
        fi = FastIF(adapter, x, y, k=None, solver=solver, lissa=LissaSettings(damping=DEFAULT_DAMPING, scale=ridge / DEFAULT_DAMPING))
        table = fi.influence(xt, yt)
        out = np.zeros((len(yt), len(y)))
        out[table["test_pos"], table["train_index"]] = table["influence"]
        run.chosen = type(fi.solver).__name__
        return out
    return run


def dattri_cg(max_iter: int):
    def run(adapter, x, y, xt, yt, ridge):
        from dattri.algorithm.influence_function import IFAttributorCG
        from dattri.task import AttributionTask
        model = adapter.model

        def loss(params, data):  # one function for the Hessian (flag 1) and the scored rows (flag 0)
            xb, yb, flag = data
            ce = nn.functional.cross_entropy(functional_call(model, params, (xb,)), yb)
            reg = sum((p ** 2).sum() for n, p in params.items() if adapter.regularized(n))
            return ce + flag.mean() * 0.5 * adapter.l2 * reg

        def target(params, data):
            xb, yb, _ = data
            return nn.functional.cross_entropy(functional_call(model, params, (xb,)), yb)

        n = len(y)
        # one batch each: dattri sums per-batch inverse-HVPs, and recomputes the test side per training batch
        hessian_rows = DataLoader(TensorDataset(x, y, torch.ones(n)), batch_size=n)
        scored = DataLoader(TensorDataset(x, y, torch.zeros(n)), batch_size=n)
        tests = DataLoader(TensorDataset(xt, yt, torch.zeros(len(yt))), batch_size=len(yt))
        task = AttributionTask(loss_func=loss, model=model, target_func=target, checkpoints=model.state_dict())
        attributor = IFAttributorCG(task=task, device="cpu", max_iter=max_iter, regularization=ridge)
        attributor.cache(hessian_rows)
        return -attributor.attribute(scored, tests).T.detach().numpy()
    return run


class _PenaltyColumn(nn.Module):
    """pyDVL's loss sees (outputs, targets) only: one extra output column carries (l2/2)‖W‖²."""

    def __init__(self, adapter):
        super().__init__()
        self.model, self.l2 = adapter.model, adapter.l2
        self.names = [n for n, _ in adapter.model.named_parameters() if adapter.regularized(n)]

    def forward(self, x):
        out = self.model(x)
        reg = sum((getattr(self.model.get_submodule(module), attr) ** 2).sum()  # what functional_call swapped in
                  for module, _, attr in (n.rpartition(".") for n in self.names))
        return torch.cat([out, (0.5 * self.l2 * reg).expand(len(out), 1)], dim=1)


def _flagged_loss(outputs, targets):  # targets[:, 1]: 1 on the Hessian's rows, 0 on scored rows
    return nn.functional.cross_entropy(outputs[:, :-1], targets[:, 0]) + (targets[:, 1] * outputs[:, -1]).mean()


def pydvl(kind: str):
    def run(adapter, x, y, xt, yt, ridge):
        from pydvl.influence.torch import CgInfluence, DirectInfluence
        wrapped = _PenaltyColumn(adapter)
        if kind == "cg":  # block CG over all test rows at once: pyDVL's fastest exact-quality setting here
            influence = CgInfluence(wrapped, _flagged_loss, regularization=float(ridge), solve_simultaneously=True)
        else:
            influence = DirectInfluence(wrapped, _flagged_loss, regularization=float(ridge))

        def flagged(labels, flag):
            return torch.stack([labels, torch.full_like(labels, flag)], dim=1)

        influence.fit(DataLoader(TensorDataset(x, flagged(y, 1)), batch_size=len(y)))
        return -influence.influences(xt, flagged(yt, 0), x, flagged(y, 0)).detach().numpy()
    return run


METHODS = {
    "fastif default (auto)": fastif_scores("auto"),
    "fastif exact": fastif_scores("exact"),
    "dattri IFAttributorCG (max_iter 10, its default)": dattri_cg(10),
    "dattri IFAttributorCG (max_iter 30)": dattri_cg(30),
    "pyDVL CgInfluence (block)": pydvl("cg"),
    "pyDVL DirectInfluence": pydvl("direct"),
}


def agreement(got: np.ndarray, ref: np.ndarray) -> dict:
    return {"pearson": float(np.corrcoef(got.ravel(), ref.ravel())[0, 1]),
            "min_row_pearson": float(min(np.corrcoef(a, b)[0, 1] for a, b in zip(got, ref)))}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--ridges", default=f"{RIDGE_OF_TOP:g}*max,{RIDGE_OF_TOP / 10:g}*max,{DEFAULT_DAMPING:g}",
                        help="ridge rules: F*max (λ = F × the top eigenvalue; the default's is %s*max) or d "
                             "(λ = d × scale)" % f"{RIDGE_OF_TOP:g}")
    args = parser.parse_args()
    torch.set_num_threads(1)
    x, y, xt, yt = digits()
    rows = []
    for name, model in (("tabular-logreg", LogisticRegressionAdapter), ("tabular-mlp", MLPAdapter)):
        adapter = model(64, 10, dtype=torch.float64)  # float64: CG run to convergence divides by ~0 in float32
        adapter.fit(x, y)
        flat = FlatParams.of(adapter)
        scale = with_scale(adapter, x, y, LissaSettings(damping=DEFAULT_DAMPING), flat).scale
        t = time.perf_counter()
        top = spectrum(adapter, flat, x, y).largest
        spectrum_seconds = time.perf_counter() - t
        for rule in args.ridges.split(","):
            ridge = float(rule.split("*")[0]) * top if rule.endswith("*max") else float(rule) * scale
            exact, dot = reference(adapter, x, y, xt, yt, ridge)
            common = {"model": name, "parameters": flat.size, "rule": rule, "damping": ridge / scale, "ridge": ridge,
                      "ridge_over_largest": ridge / top, "spectrum_seconds": spectrum_seconds}
            rows.append({**common, "method": "gradient dot product (no Hessian)", "seconds": None,
                         **agreement(dot, exact)})
            print(f"{name}: {flat.size:,} parameters, ridge {rule} (λ = {ridge:.4g}, {ridge / top:.3g} × the top "
                  f"eigenvalue {top:.4g}, estimated in {spectrum_seconds:.2f} s); no-Hessian baseline "
                  f"Pearson {rows[-1]['pearson']:.4f}", flush=True)
            for method, fn in METHODS.items():
                times = []
                while len(times) < args.repeats and sum(times) < SLOW_SECONDS:
                    t = time.perf_counter()
                    got = fn(adapter, x, y, xt, yt, ridge)
                    times.append(time.perf_counter() - t)
                chosen = getattr(fn, "chosen", None)
                rows.append({**common, "method": method, "solver": chosen, "seconds": statistics.median(times),
                             "runs": len(times), **agreement(got, exact)})
                print(f"  {method:<48} {rows[-1]['seconds']:7.2f} s  Pearson {rows[-1]['pearson']:.6f} "
                      f"(min per test row {rows[-1]['min_row_pearson']:.6f}){'  [' + chosen + ']' if chosen else ''}",
                      flush=True)
    RESULTS.parent.mkdir(parents=True, exist_ok=True)
    RESULTS.write_text(json.dumps({"version": fastif_engine.__version__, "train_rows": N_TRAIN, "test_rows": N_TEST,
                                   "threads": 1, "repeats": args.repeats, "rows": rows}, indent=1))
    print("\n| model | ridge | method | median s | Pearson vs exact (min per test row) |\n|---|---|---|---|---|")
    for r in rows:
        secs = "–" if r["seconds"] is None else f"{r['seconds']:.2f}" + (" (1 run)" if r["runs"] == 1 else "")
        print(f"| {r['model']} | {r['rule']} | {r['method']} | {secs} | {r['pearson']:.6f} "
              f"({r['min_row_pearson']:.6f}) |")


if __name__ == "__main__":
    main()
