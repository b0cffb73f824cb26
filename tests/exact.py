"""Exact answers the numerics are tested against: the explicit Hessian by autograd, per-example
gradients by a loop, and leave-one-out retraining."""
from __future__ import annotations

import copy

import torch
from torch.autograd.functional import hessian as autograd_hessian

from fastif_engine.data.batching import take
from fastif_engine.influence.gradients import FlatParams
from fastif_engine.models.training import train


def reference_hessian(adapter, x, y):
    """∇² of the training objective by torch.autograd.functional.hessian on a flat vector."""
    flat = FlatParams.of(adapter)
    theta = torch.cat([v.reshape(-1) for v in flat.values])
    module = adapter.model

    def r(t):
        params = flat.unflatten(t)
        logits = torch.func.functional_call(module, params, (x,), strict=False)
        loss = adapter.loss(logits, y).mean()
        reg = sum((params[n] ** 2).sum() for n in flat.names if adapter.regularized(n))
        return loss + 0.5 * adapter.l2 * reg

    return autograd_hessian(r, theta)


def loop_gradients(adapter, x, y):
    """Reference: one autograd.grad call per example on the module itself."""
    names = adapter.parameter_names()
    params = dict(adapter.model.named_parameters())
    rows = []
    for i in range(len(y)):
        loss = adapter.loss(adapter.model(take(x, slice(i, i + 1))), y[i:i + 1]).sum()
        g = torch.autograd.grad(loss, [params[n] for n in names])
        rows.append(torch.cat([t.reshape(-1) for t in g]))
    return torch.stack(rows)


def leave_one_out_changes(model, x, y, rows, recipe, measure) -> list[float]:
    """``measure(model without row i) − measure(model)`` for each row i, each refit to convergence
    from θ̂ (a copy keeps the model's standardisation)."""
    base = measure(model)
    out = []
    for i in rows:
        keep = torch.ones(len(y), dtype=torch.bool)
        keep[i] = False
        loo = copy.deepcopy(model)
        train(loo, x[keep], y[keep], recipe)
        out.append(measure(loo) - base)
    return out
