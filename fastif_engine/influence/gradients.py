"""Per-example loss gradients ∇θ L(z_i, θ̂), batched with ``torch.func`` (vmap over grad).

All vectors in the engine are *flat*: the differentiated parameters concatenated in
:class:`FlatParams` order, so solvers and influence are plain matrix algebra over ``[n, P]``.
Gradients are produced chunk by chunk so that an ``N × P`` matrix is never held at once.
"""
from __future__ import annotations

import threading
from dataclasses import dataclass
from typing import Callable, Iterator

import numpy as np
import torch
from torch.func import functional_call, grad, jvp, vmap

from ..adapter import ModelAdapter
from ..data.batching import Inputs, chunk_slices, n_rows, take, to_device, unsqueeze0
from ..errors import NonFiniteGradientError, SettingsError
from ..store.memory import trimming


@dataclass(frozen=True)
class FlatParams:
    """The differentiated parameters of an adapter, and the map between dict and flat form."""

    names: tuple[str, ...]
    shapes: tuple[torch.Size, ...]
    values: tuple[torch.Tensor, ...]  # detached copies of θ̂
    l2_mask: torch.Tensor  # [P] 1.0 where the L2 penalty applies

    @classmethod
    def of(cls, adapter: ModelAdapter) -> "FlatParams":
        named = dict(adapter.model.named_parameters())
        names = tuple(adapter.parameter_names())
        missing = [n for n in names if n not in named]
        if missing:
            raise SettingsError(f"parameter_names() lists unknown parameters: {missing}")
        if not names:
            raise SettingsError("the adapter differentiates no parameters (parameter_names() is empty)")
        values = tuple(named[n].detach() for n in names)
        mask = torch.cat(
            [torch.full((v.numel(),), float(adapter.regularized(n)), dtype=v.dtype, device=v.device)
             for n, v in zip(names, values)]
        )
        return cls(names, tuple(v.shape for v in values), values, mask)

    @property
    def size(self) -> int:
        return int(self.l2_mask.numel())

    def as_dict(self) -> dict[str, torch.Tensor]:
        return dict(zip(self.names, self.values))

    def unflatten(self, flat: torch.Tensor) -> dict[str, torch.Tensor]:
        out, start = {}, 0
        for name, shape in zip(self.names, self.shapes):
            n = shape.numel()
            out[name] = flat[start:start + n].view(shape)
            start += n
        return out

    def flatten(self, tensors: dict[str, torch.Tensor], batch_dims: int = 0) -> torch.Tensor:
        """Concatenate per-name tensors (with ``batch_dims`` leading dims kept) into ``[..., P]``."""
        parts = [tensors[n].reshape(*tensors[n].shape[:batch_dims], -1) for n in self.names]
        return torch.cat(parts, dim=-1)


def parameter_summary(names: list[str], shown: int = 8) -> str:
    """Differentiated parameter names in a line: grouped by block (``…h.0.*``) or by owning module."""
    groups: dict[str, int] = {}
    for n in names:
        parts = n.split(".")
        numbered = next((i for i, p in enumerate(parts) if p.isdigit()), None)
        key = ".".join(parts[:numbered + 1]) + ".*" if numbered is not None else ".".join(parts[:-1]) + ".*"
        groups[key] = groups.get(key, 0) + 1
    keys = list(groups)
    return ", ".join(keys[:shown]) + (f", … {len(keys) - shown} more" if len(keys) > shown else "")


# torch.func keeps its transform stack in process-global state: two threads inside vmap/grad/jvp
# at once corrupt each other ("level <= current_level INTERNAL ASSERT"). Every transform call in
# the engine holds this lock, so a thread pool is safe; processes run truly in parallel.
TRANSFORM_LOCK = threading.RLock()


def loss_function(adapter: ModelAdapter, logit_offset: torch.Tensor | None = None
                  ) -> Callable[[dict, Inputs, torch.Tensor], torch.Tensor]:
    """``f(params, inputs, labels) -> per-example loss [n]``, functional in the differentiated params.

    Parameters not in ``params`` (frozen layers) enter detached, so no autograd graph is built
    through them; buffers come from the module itself. ``logit_offset`` (``[C]``, a constant) is
    added to the logits before the loss: a shifted class prior (``net_harm.class_offsets``).
    """
    model = adapter.model
    tracked = set(adapter.parameter_names())
    frozen = {n: p.detach() for n, p in model.named_parameters() if n not in tracked}

    def f(params: dict[str, torch.Tensor], inputs: Inputs, labels: torch.Tensor) -> torch.Tensor:
        logits = functional_call(model, (params, frozen), (inputs,), strict=False)
        if logit_offset is not None:
            logits = logits + logit_offset.to(logits.device, logits.dtype)
        return adapter.loss(logits, labels)

    return f


MAX_CHUNK_ROWS = 512  # beyond this a chunk's activations, not its gradients, set the memory
MEMORY_BUDGET_GB = 0.5  # default GB for gradient chunks and LiSSA blocks (per process; fastif_engine.cleaning.worker_state.task_budget)


def chunk_rows(n_params: int, budget_gb: float = MEMORY_BUDGET_GB, copies: float = 3, bytes_per_value: int = 4) -> int:
    """Rows per gradient chunk so that one chunk fits ``budget_gb``: vmap's per-parameter gradients,
    their flat ``[rows, P]`` copy and one product with them are ``copies`` × rows × P values."""
    return int(min(MAX_CHUNK_ROWS, max(1, budget_gb * 1e9 // (copies * bytes_per_value * max(n_params, 1)))))


def per_sample_gradients(
    adapter: ModelAdapter,
    inputs: Inputs,
    labels: torch.Tensor,
    *,
    chunk_size: int = 256,
    flat: FlatParams | None = None,
    index: np.ndarray | None = None,
    logit_offset: torch.Tensor | None = None,
) -> Iterator[tuple[slice, torch.Tensor]]:
    """Yield ``(part, G)`` with ``G[i] = ∇θ L(z_j, θ̂)`` as flat ``[len(part), P]`` chunks.

    ``j`` runs over ``index[part]`` (all rows in order when ``index`` is None). One vmapped
    call per chunk (no Python loop over examples); peak memory is ``chunk_size × P``
    gradients plus the model's activations for one chunk. ``logit_offset``: see
    :func:`loss_function`.
    """
    flat = flat or FlatParams.of(adapter)
    f = loss_function(adapter, logit_offset)

    def single(params, x, y):
        return f(params, unsqueeze0(x), y.unsqueeze(0)).squeeze(0)

    batched = vmap(grad(single), in_dims=(None, 0, 0))
    params = flat.as_dict()
    device = adapter.device
    if index is None:
        index = np.arange(n_rows(inputs))
    for part in trimming(chunk_slices(len(index), chunk_size)):
        rows = torch.as_tensor(index[part], dtype=torch.long)
        x = adapter.trim_batch(to_device(take(inputs, rows), device))
        y = labels[rows].to(device)
        with TRANSFORM_LOCK:
            g = flat.flatten(batched(params, x, y), batch_dims=1)
        if not torch.isfinite(g).all():
            bad = int(rows[(~torch.isfinite(g).all(dim=1)).nonzero()[0]])
            raise NonFiniteGradientError(f"the loss gradient of row {bad} is NaN or infinite")
        yield part, g


def directional_derivatives(
    adapter: ModelAdapter,
    inputs: Inputs,
    labels: torch.Tensor,
    direction: torch.Tensor,
    *,
    index: np.ndarray,
    chunk_size: int = 256,
    flat: FlatParams | None = None,
) -> np.ndarray:
    """``∇θ L(z_j, θ̂) · direction`` for each row ``j`` of ``index`` (float64, in ``index`` order).

    Forward mode: one ``jvp`` of the chunk's per-row losses along ``direction [P]``, so no
    ``[rows, P]`` gradient block is formed. Where each row meets one or two vectors this is the
    cheaper way to the same dot products (one vector, 500 image-cnn rows: 84 vs 540 ms; 200
    text-minilm rows: 1.3 vs 5.6 s); :func:`per_sample_gradients` is cheaper where a row's
    gradient serves many vectors. Rows are chunked by length where the adapter has lengths.
    """
    flat = flat or FlatParams.of(adapter)
    f = loss_function(adapter)
    params = flat.as_dict()
    tangent = flat.unflatten(direction.to(device=adapter.device, dtype=adapter.dtype))
    index = np.asarray(index, dtype=np.int64)
    lengths = adapter.row_lengths(inputs)
    order = np.argsort(np.asarray(lengths)[index], kind="stable") if lengths is not None else np.arange(len(index))
    out = np.empty(len(index), dtype=np.float64)
    for part in trimming(chunk_slices(len(index), chunk_size)):
        at = order[part]
        rows = torch.as_tensor(index[at])
        x = adapter.trim_batch(to_device(take(inputs, rows), adapter.device))
        y = labels[rows].to(adapter.device)
        with TRANSFORM_LOCK:
            _, d = jvp(lambda p: f(p, x, y), (params,), (tangent,))
        d = d.double().cpu().numpy()
        if not np.isfinite(d).all():
            raise NonFiniteGradientError(f"the loss gradient of row {int(rows[~np.isfinite(d)][0])} is NaN or infinite")
        out[at] = d
    return out


def gradient_matrix(adapter: ModelAdapter, inputs: Inputs, labels: torch.Tensor, *,
                    chunk_size: int = 256, flat: FlatParams | None = None) -> torch.Tensor:
    """All per-example gradients as one ``[n, P]`` matrix — for a handful of test rows only."""
    parts = [g for _, g in per_sample_gradients(adapter, inputs, labels, chunk_size=chunk_size, flat=flat)]
    return torch.cat(parts)


# ``fit_check``: above this ratio fastif warns. Set by evidence (docs/decisions/fit-check.md): the flags'
# precision and their AUC for flipped labels stayed flat up to 0.32 (logistic regression and MLP on digits
# and breast cancer, from the initial weights on; text-minilm on the demo's data up to 0.197), while
# agreement with a converged model's scores falls smoothly from about 0.02 on, with no break. The line
# sits just above the largest ratio measured without harm to the flags; what a model that fails it
# needs is said by the message. The failures that did hurt (an indefinite H + λI) are the solvers' own
# check. Trained by their recipes the built-ins read 3e-5 to 0.04, text-minilm on the demo 0.124.
STATIONARY_RATIO = 0.35
# What to do about a model that fails the check (the log line and the report say it)
FIT_ADVICE = ("If the weights are yours (--weights given), fine-tune them on these rows first, or leave "
              "--weights at its default so that fastif fine-tunes the differentiated part from them")


def fit_message(fit: dict) -> str:
    """One line on whether the model sits near a minimum of its training loss (:func:`fit_check`)."""
    line = (f"training-loss gradient at the model's weights: ‖∇R‖ = {fit['gradient_norm']:.3g}, "
            f"{fit['ratio']:.3g} × a single row's (RMS {fit['row_gradient_rms']:.3g})")
    if fit["stationary"]:
        return line
    return (line + f"; above {STATIONARY_RATIO}: the model is far from a minimum of its training loss, which "
            f"influence assumes, so the scores may not rank its harmful rows. {FIT_ADVICE}.")



def fit_check(adapter: ModelAdapter, inputs: Inputs, labels: torch.Tensor, *, flat: FlatParams | None = None,
              chunk_size: int = 256, sample: int = 64, rows: int = 1024, seed: int = 0) -> dict:
    """How close θ̂ is to a stationary point of the training objective, in the differentiated parameters.

    Influence functions assume ∇R(θ̂) = 0. ``gradient_norm`` = ‖∇R(θ̂)‖ (mean loss gradient over
    up to ``rows`` sampled rows, all of them on small sets, plus the L2 term; a sample's own noise
    is about RMS/√rows, 0.03 × a row's gradient at 1,024, under the 0.1 warning line); ``row_gradient_rms`` = the root-mean-square ‖∇L(z_i)‖ over
    ``sample`` rows, the scale a single row's gradient has; ``ratio`` = the first over the second:
    about 0 at a minimum, about 1 when every row pulls the same way (an untrained model)."""
    flat = flat or FlatParams.of(adapter)
    f = loss_function(adapter)
    n = n_rows(inputs)
    gen = torch.Generator().manual_seed(seed)
    used = torch.randperm(n, generator=gen)[:min(n, rows)].sort().values
    total = torch.zeros(flat.size, dtype=flat.l2_mask.dtype, device=flat.l2_mask.device)
    params = {name: t.detach().requires_grad_() for name, t in flat.as_dict().items()}
    for part in chunk_slices(len(used), chunk_size):
        chunk = used[part]
        x = adapter.trim_batch(to_device(take(inputs, chunk), adapter.device))
        with TRANSFORM_LOCK, torch.enable_grad():
            loss = f(params, x, labels[chunk].to(adapter.device)).sum() / len(used)
            parts = torch.autograd.grad(loss, list(params.values()), allow_unused=True, materialize_grads=True)
        total += flat.flatten(dict(zip(flat.names, parts)))
    if adapter.l2:
        total += adapter.l2 * flat.l2_mask * torch.cat([v.reshape(-1) for v in flat.values])
    picked = used[torch.randperm(len(used), generator=gen)[:min(len(used), sample)]].sort().values
    squares = [float((g.double() ** 2).sum(dim=1).sum())
               for _, g in per_sample_gradients(adapter, take(inputs, picked), labels[picked], chunk_size=chunk_size,
                                                flat=flat)]
    rms = (sum(squares) / len(picked)) ** 0.5
    norm = float(total.norm())
    return {"gradient_norm": norm, "row_gradient_rms": rms, "ratio": norm / rms if rms > 0 else 0.0,
            "gradient_rows": int(len(used)), "sampled_rows": int(len(picked)),
            "stationary": bool(norm <= STATIONARY_RATIO * rms)}
