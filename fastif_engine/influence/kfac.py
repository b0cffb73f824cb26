"""EK-FAC: (H + λI)⁻¹ from Kronecker-factored, eigenvalue-corrected curvature blocks.

The curvature is the Gauss–Newton matrix of the training objective, G = (1/N) Σ_n E_{c~p_n}[g g ᵀ]
with g = ∇θ L(z_n with label c) and p_n the model's predicted class probabilities (for the
cross-entropy of a softmax this *is* the Hessian's positive semi-definite part; for logistic
regression it is the Hessian). It is approximated block-diagonally, one block per parameter:

* the weight ``W [out, in]`` of every differentiated ``nn.Linear``: its per-row gradient is
  ``Σ_t g_t a_tᵀ`` (output gradients × inputs, summed over tokens). K-FAC's eigenbases are those
  of ``A = Σ a aᵀ`` and ``S = Σ g gᵀ``; EK-FAC (George et al. 2018) keeps the bases and refits
  the eigenvalues: ``Λ[i, j] = (1/N) Σ_n E_c[(q_S,iᵀ G_n q_A,j)²]``, the exact diagonal of G
  in that basis. Solving is then two small rotations per block: ``Q_S (Q_Sᵀ V Q_A / (Λ + λ)) Q_Aᵀ``.
* every other differentiated parameter (biases, norms, convolutions): G's diagonal.

The L2 penalty of the objective (``adapter.l2`` on regularised parameters) adds to either.
Building it costs two passes over the training rows (one forward and C backward passes per
chunk, C = classes); every solve after that costs a few matrix products, however many vectors.
"""
from __future__ import annotations

import logging

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn

from ..adapter import ModelAdapter
from ..data.batching import Inputs, chunk_slices, n_rows, take, to_device
from ..errors import SolverSetupError
from ..store.memory import trimming
from .capture import _Block, _Capture, _row_sums, _join, _offsets, _sub_flat, _tracking
from .gradients import TRANSFORM_LOCK, FlatParams, per_sample_gradients
from .solvers import InverseHVPSolver

log = logging.getLogger("fastif")


class EkfacSolver(InverseHVPSolver):
    """EK-FAC over ``nn.Linear`` weights, G's diagonal elsewhere; see the module docstring.

    ``chunk_size`` rows per forward pass while the factors are built. The per-row gradients of
    Linear biases and LayerNorm affines come from the same hooks as the weights'; any other
    differentiated tensor (a convolution, say) from ``torch.func`` per-row gradients. A model whose
    layers see a packed layout even under :meth:`~ModelAdapter.rows_first` gets its correction
    one row at a time (exact, slower).
    """

    def __init__(self, adapter: ModelAdapter, inputs: Inputs, labels: torch.Tensor | None = None, *,
                 ridge: float, flat: FlatParams | None = None, chunk_size: int = 64):
        if not ridge > 0:
            raise SolverSetupError(f"the EK-FAC solver needs a ridge λ > 0 (got {ridge:g}): raise --damping")
        self.adapter = adapter
        self.flat = flat or FlatParams.of(adapter)
        self._ridge = float(ridge)
        self.n = n_rows(inputs)
        self._offsets = _offsets(self.flat)
        self.blocks, self.diagonal_names = self._layout()
        self._hooked_diagonal = self._diagonal_modules()
        self.kronecker_share = sum(b.stop - b.start for b in self.blocks) / self.flat.size
        self.row_by_row = False
        with TRANSFORM_LOCK, _tracking(adapter, self.flat):
            self._factors(inputs, chunk_size)
            self._correct(inputs, chunk_size)
        self._finish()
        log.info("EK-FAC: %d Linear weight(s) Kronecker-factored (%.1f%% of %s parameters), %d other "
                 "tensor(s) diagonal%s", len(self.blocks), 100 * self.kronecker_share, f"{self.flat.size:,}",
                 len(self.diagonal_names), " (eigenvalues corrected row by row: packed layout)" if self.row_by_row else "")

    @property
    def ridge(self) -> float:
        return self._ridge

    def describe(self) -> dict:
        """What was factored how (for metrics.json)."""
        return {"kronecker": [b.name for b in self.blocks], "diagonal": list(self.diagonal_names),
                "kronecker_share": round(self.kronecker_share, 4), "row_by_row": self.row_by_row}

    # -- building -------------------------------------------------------------------------------

    def _layout(self) -> tuple[list[_Block], list[str]]:
        mask = self.flat.l2_mask
        blocks = []
        for mod_name, module in self.adapter.model.named_modules():
            weight = _join(mod_name, "weight")
            if isinstance(module, nn.Linear) and weight in self._offsets:
                start = self._offsets[weight]
                regularised = bool(mask[start] > 0)
                blocks.append(_Block(weight, module, start, module.out_features, module.in_features,
                                     float(self.adapter.l2) if regularised else 0.0))
        factored = {b.name for b in blocks}
        return blocks, [n for n in self.flat.names if n not in factored]

    def _diagonal_modules(self) -> list[tuple[nn.Module, dict[str, str]]]:
        """Modules whose diagonal tensors' per-row gradients the hooks give: Linear biases and
        LayerNorm affines, as ``(module, {"bias" | "weight": flat name})``."""
        wanted, found = set(self.diagonal_names), []
        for mod_name, module in self.adapter.model.named_modules():
            if isinstance(module, nn.Linear):
                kinds = ("bias",)
            elif isinstance(module, nn.LayerNorm) and len(module.normalized_shape) == 1:
                kinds = ("weight", "bias")
            else:
                continue
            names = {k: _join(mod_name, k) for k in kinds if _join(mod_name, k) in wanted}
            if names:
                found.append((module, names))
        return found

    def _chunks(self, inputs: Inputs, chunk_size: int):
        """``(rows, inputs)`` chunks, rows grouped by length where the adapter has lengths (less padding)."""
        device = self.adapter.device
        lengths = self.adapter.row_lengths(inputs)
        order = torch.as_tensor(np.argsort(np.asarray(lengths), kind="stable")) if lengths is not None else None
        for part in trimming(chunk_slices(self.n, chunk_size)):
            rows = order[part] if order is not None else torch.arange(part.start, part.stop)
            yield rows, self.adapter.trim_batch(to_device(take(inputs, rows), device))

    def _class_passes(self, x: Inputs, capture: _Capture, extra: list[torch.Tensor]):
        """Forward once, then yield the gradients of Σ_n √p_nc · L(z_n, c) for every class c with
        respect to every hooked module's outputs and ``extra`` leaves: squared and summed over
        classes, they give E_c[g gᵀ] row by row."""
        with torch.enable_grad(), capture.hooked():
            logits = self.adapter.model(x)
            probs = F.softmax(logits.detach().double(), dim=-1).to(logits.dtype)
            outs = capture.flat_outputs()
            n_classes = logits.shape[-1]
            if not outs and not extra:  # nothing hooked here (no Linear layer): per-row gradients come by vmap
                yield from (((), ()) for _ in range(n_classes))
                return
            for c in range(n_classes):
                labels = torch.full((logits.shape[0],), c, dtype=torch.long, device=logits.device)
                loss = (self.adapter.loss(logits, labels) * probs[:, c].sqrt()).sum()
                grads = torch.autograd.grad(loss, outs + extra, retain_graph=c < n_classes - 1,
                                            allow_unused=True, materialize_grads=True)
                yield grads[:len(outs)], grads[len(outs):]

    def _factors(self, inputs: Inputs, chunk_size: int) -> None:
        """Pass 1: A = Σ a aᵀ and S = E_c Σ g gᵀ over every token of every row (any layout)."""
        dtype, device = self.flat.l2_mask.dtype, self.flat.l2_mask.device
        a_cov = [torch.zeros(b.in_features, b.in_features, dtype=torch.float64, device=device) for b in self.blocks]
        s_cov = [torch.zeros(b.out_features, b.out_features, dtype=torch.float64, device=device) for b in self.blocks]
        capture = _Capture([b.module for b in self.blocks])
        for _, x in (self._chunks(inputs, chunk_size) if self.blocks else ()):
            for c, (out_grads, _) in enumerate(self._class_passes(x, capture, [])):
                for i, (b, calls) in enumerate(zip(self.blocks, capture.calls(out_grads))):
                    for a, g in calls:
                        if c == 0:  # the inputs do not depend on the class
                            a2 = a.reshape(-1, b.in_features).double()
                            a_cov[i] += a2.T @ a2
                        g2 = g.reshape(-1, b.out_features).double()
                        s_cov[i] += g2.T @ g2
        for b, a, s in zip(self.blocks, a_cov, s_cov):
            b.q_a = torch.linalg.eigh(a)[1].to(dtype)
            b.q_s = torch.linalg.eigh(s)[1].to(dtype)

    def _correct(self, inputs: Inputs, chunk_size: int) -> None:
        """Pass 2: the eigenvalues in each block's basis, and the diagonal of the other tensors,
        from per-row gradients (summed over a row's tokens before squaring)."""
        device = self.flat.l2_mask.device
        for b in self.blocks:
            b.lam = torch.zeros(b.out_features, b.in_features, dtype=torch.float64, device=device)
        self.diagonal = torch.zeros(self.flat.size, dtype=torch.float64, device=device)  # used where diagonal
        hooked = {name for _, names in self._hooked_diagonal for name in names.values()}
        rest = [n for n in self.diagonal_names if n not in hooked]
        rest_flat = _sub_flat(self.flat, rest)
        params = dict(self.adapter.model.named_parameters())
        capture = _Capture([b.module for b in self.blocks] + [m for m, _ in self._hooked_diagonal])
        for rows, x in self._chunks(inputs, 1 if self.row_by_row else chunk_size):
            n = len(rows)
            with self.adapter.rows_first():
                parts = list(self._class_passes(x, capture, [params[r] for r in rest] if n == 1 else []))
            if n > 1 and not capture.row_leading(n):
                self.row_by_row = True  # a packed layout: start again, one row at a time
                return self._correct(inputs, chunk_size)
            for out_grads, rest_grads in parts:
                calls = capture.calls(out_grads)
                for b, block_calls in zip(self.blocks, calls):
                    rotated = sum((g.reshape(n, -1, b.out_features) @ b.q_s).transpose(1, 2)
                                  @ (a.reshape(n, -1, b.in_features) @ b.q_a) for a, g in block_calls)
                    if torch.is_tensor(rotated):  # [n, out, in]: Q_Sᵀ G_n Q_A, squared
                        b.lam += rotated.double().square().sum(0)
                for (module, names), module_calls in zip(self._hooked_diagonal, calls[len(self.blocks):]):
                    self._add_hooked(module, names, module_calls, n)
                for name, g in zip(rest, rest_grads):
                    self._add(name, g.reshape(1, -1))
            if n > 1 and rest_flat is not None:
                self._add_rows(rest_flat, self._rest_of_chunk(take(inputs, rows), rest_flat))

    def _add(self, name: str, per_row: torch.Tensor) -> None:
        """Add Σ_rows g² of one tensor (``per_row [n, size]``) to the diagonal."""
        start = self._offsets[name]
        self.diagonal[start:start + per_row.shape[1]] += per_row.double().square().sum(0)

    def _add_rows(self, sub: FlatParams, total: torch.Tensor) -> None:
        pos = 0
        for name, shape in zip(sub.names, sub.shapes):
            start, size = self._offsets[name], shape.numel()
            self.diagonal[start:start + size] += total[pos:pos + size]
            pos += size

    def _add_hooked(self, module: nn.Module, names: dict[str, str], calls, n: int) -> None:
        width = module.out_features if isinstance(module, nn.Linear) else module.normalized_shape[0]
        bias = weight = 0
        for a, g in calls:
            bias = bias + _row_sums(g, n, width)
            if "weight" in names:  # LayerNorm: ∂L/∂γ = Σ_t g_t ⊙ x̂_t, x̂ the normalised input
                normed = F.layer_norm(a, module.normalized_shape, eps=module.eps)
                weight = weight + _row_sums(g * normed, n, width)
        if "bias" in names:
            self._add(names["bias"], bias)
        if "weight" in names:
            self._add(names["weight"], weight)

    def _rest_of_chunk(self, x: Inputs, sub: FlatParams) -> torch.Tensor:
        """Σ_n E_c[g²] for tensors no hook covers, from ``torch.func`` per-row gradients."""
        with torch.no_grad():
            probs = F.softmax(self.adapter.logits(self.adapter.trim_batch(to_device(x, self.adapter.device))).double(), -1)
        total = torch.zeros(sub.size, dtype=torch.float64, device=probs.device)
        n = n_rows(x)
        for c in range(probs.shape[1]):
            labels = torch.full((n,), c, dtype=torch.long)
            for part, g in per_sample_gradients(self.adapter, x, labels, chunk_size=n, flat=sub):
                total += (probs[part, c, None] * g.detach().double().square()).sum(0)  # weights enter as constants
        return total

    def _finish(self) -> None:
        """Means over the N rows; the diagonal part's index, ridge-free denominator."""
        dtype = self.flat.l2_mask.dtype
        for b in self.blocks:
            b.lam = (b.lam / self.n).to(dtype)
        self._index = self._diagonal_positions()
        if self._index is not None:
            self._diagonal = (self.diagonal[self._index] / self.n).to(dtype)
            self._diagonal += self.adapter.l2 * self.flat.l2_mask[self._index]
        del self.diagonal

    def _diagonal_positions(self) -> torch.Tensor | None:
        """Flat positions of the diagonal part (None when every tensor is Kronecker-factored)."""
        wanted = set(self.diagonal_names)
        index = [torch.arange(self._offsets[n], self._offsets[n] + s.numel())
                 for n, s in zip(self.flat.names, self.flat.shapes) if n in wanted]
        return torch.cat(index).to(self.flat.l2_mask.device) if index else None

    # -- solving ----------------------------------------------------------------------------------

    def solve(self, vectors: torch.Tensor, progress=None) -> torch.Tensor:
        v = vectors.to(device=self.flat.l2_mask.device, dtype=self.flat.l2_mask.dtype)
        m = v.shape[0]
        out = torch.empty_like(v)
        for b in self.blocks:
            w = v[:, b.start:b.stop].reshape(m, b.out_features, b.in_features)
            rotated = (b.q_s.T @ w @ b.q_a) / (b.lam + b.l2 + self._ridge)
            out[:, b.start:b.stop] = (b.q_s @ rotated @ b.q_a.T).reshape(m, -1)
        if self._index is not None:
            out[:, self._index] = v[:, self._index] / (self._diagonal + self._ridge)
        if progress:
            progress(1, 1)
        return out

    # -- saving -----------------------------------------------------------------------------------

    def state(self) -> dict[str, torch.Tensor]:
        """The factors as named tensors (what :meth:`from_state` takes back)."""
        out = {}
        for i, b in enumerate(self.blocks):
            out[f"q_a.{i}"], out[f"q_s.{i}"], out[f"lam.{i}"] = b.q_a, b.q_s, b.lam
        if self._index is not None:
            out["diagonal"] = self._diagonal
        return out

    @classmethod
    def from_state(cls, adapter: ModelAdapter, state: dict[str, torch.Tensor], *, ridge: float,
                   flat: FlatParams | None = None) -> "EkfacSolver":
        """A solver from saved factors, for the same adapter layout (no pass over the data)."""
        solver = cls.__new__(cls)
        solver.adapter, solver.flat, solver._ridge = adapter, flat or FlatParams.of(adapter), float(ridge)
        solver._offsets = _offsets(solver.flat)
        solver.blocks, solver.diagonal_names = solver._layout()
        solver.kronecker_share = sum(b.stop - b.start for b in solver.blocks) / solver.flat.size
        solver.row_by_row = None
        device, dtype = solver.flat.l2_mask.device, solver.flat.l2_mask.dtype
        for i, b in enumerate(solver.blocks):
            b.q_a, b.q_s, b.lam = (state[f"{k}.{i}"].to(device, dtype) for k in ("q_a", "q_s", "lam"))
        solver._index = solver._diagonal_positions()
        solver._diagonal = state["diagonal"].to(device, dtype) if solver._index is not None else None
        return solver
