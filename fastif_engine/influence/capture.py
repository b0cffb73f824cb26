"""What EK-FAC reads from a model: each tracked ``nn.Linear``'s inputs and output gradients
(:class:`_Capture`, by forward hooks), the parameter layout of its Kronecker blocks, and the
sub-parameter views of the tensors it treats diagonally."""
from __future__ import annotations

import contextlib
from dataclasses import dataclass

import torch
from torch import nn

from ..adapter import ModelAdapter
from .gradients import FlatParams


@dataclass
class _Block:
    """One ``nn.Linear`` weight: where it sits in the flat vector and its eigen-factors."""

    name: str  # flat parameter name of the weight
    module: nn.Linear
    start: int
    out_features: int
    in_features: int
    l2: float  # the objective's penalty on this weight (0 where not regularised)
    a_cov: torch.Tensor | None = None
    s_cov: torch.Tensor | None = None
    q_a: torch.Tensor | None = None
    q_s: torch.Tensor | None = None
    lam: torch.Tensor | None = None  # [out, in] corrected eigenvalues

    @property
    def stop(self) -> int:
        return self.start + self.out_features * self.in_features


class _Capture:
    """Forward hooks that keep the inputs and outputs of some modules for one forward pass."""

    def __init__(self, modules: list[nn.Module]):
        self.modules = modules
        self.inputs: list[list[torch.Tensor]] = []
        self.outputs: list[list[torch.Tensor]] = []

    @contextlib.contextmanager
    def hooked(self):
        self.inputs = [[] for _ in self.modules]
        self.outputs = [[] for _ in self.modules]
        handles = [m.register_forward_hook(self._hook(i)) for i, m in enumerate(self.modules)]
        try:
            yield self
        finally:
            for h in handles:
                h.remove()

    def _hook(self, i: int):
        def hook(module, args, output):
            self.inputs[i].append(args[0].detach())
            self.outputs[i].append(output)
        return hook

    def flat_outputs(self) -> list[torch.Tensor]:
        return [o for calls in self.outputs for o in calls]

    def calls(self, out_grads) -> list[list[tuple[torch.Tensor, torch.Tensor]]]:
        """Per module, ``(input, output gradient)`` of each of its calls (``out_grads`` in
        :meth:`flat_outputs` order)."""
        pairs, k = [], 0
        for inputs in self.inputs:
            pairs.append([(a, out_grads[k + j]) for j, a in enumerate(inputs)])
            k += len(inputs)
        return pairs

    def row_leading(self, n: int) -> bool:
        """Whether every hooked input has the chunk's rows as its first dimension (so per-row sums
        over the other dimensions are per-row gradients); packed token layouts are not."""
        return all(a.dim() >= 2 and a.shape[0] == n for calls in self.inputs for a in calls)


def _row_sums(t: torch.Tensor, n: int, width: int) -> torch.Tensor:
    """``[n, width]``: a row-leading activation's values summed over each row's other positions."""
    return t.reshape(n, -1, width).sum(1)


def _join(module: str, attr: str) -> str:
    return f"{module}.{attr}" if module else attr


def _offsets(flat: FlatParams) -> dict[str, int]:
    """Where each differentiated tensor starts in the flat vector."""
    out, pos = {}, 0
    for name, shape in zip(flat.names, flat.shapes):
        out[name] = pos
        pos += shape.numel()
    return out


def _sub_flat(flat: FlatParams, names: list[str]) -> FlatParams | None:
    """The part of ``flat`` made of ``names`` (same order), or None when empty."""
    if not names:
        return None
    pos, keep, mask = 0, [], []
    wanted = set(names)
    for name, shape, value in zip(flat.names, flat.shapes, flat.values):
        size = shape.numel()
        if name in wanted:
            keep.append((name, shape, value))
            mask.append(flat.l2_mask[pos:pos + size])
        pos += size
    return FlatParams(tuple(k[0] for k in keep), tuple(k[1] for k in keep), tuple(k[2] for k in keep),
                      torch.cat(mask))


@contextlib.contextmanager
def _tracking(adapter: ModelAdapter, flat: FlatParams):
    """The differentiated parameters require grad while the factors are built (restored after)."""
    params = [p for n, p in adapter.model.named_parameters() if n in set(flat.names)]
    before = [p.requires_grad for p in params]
    for p in params:
        p.requires_grad_(True)
    try:
        yield
    finally:
        for p, rg in zip(params, before):
            p.requires_grad_(rg)
