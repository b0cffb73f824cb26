"""Inputs are pytrees of tensors (a tensor, or a dict of tensors) whose leading dim is the row.

Text models pass ``{"hidden": ..., "mask": ...}``, image and tabular models a single tensor;
the engine only ever slices rows, so it never needs to know which.
"""
from __future__ import annotations

from typing import Any, Iterator

import numpy as np
import torch
from torch.utils._pytree import tree_flatten, tree_map

Inputs = Any  # a torch.Tensor or a (nested) dict/tuple of tensors sharing dim 0


def n_rows(inputs: Inputs) -> int:
    leaves, _ = tree_flatten(inputs)
    if not leaves:
        raise ValueError("inputs hold no tensors")
    n = leaves[0].shape[0]
    if any(leaf.shape[0] != n for leaf in leaves):
        raise ValueError("every tensor in inputs must have the same number of rows")
    return int(n)


def take(inputs: Inputs, index) -> Inputs:
    """Rows ``index`` (slice, int array or tensor) of every tensor in ``inputs``."""
    if isinstance(index, np.ndarray):
        index = torch.as_tensor(index, dtype=torch.long)
    return tree_map(lambda t: t[index], inputs)


def to_device(inputs: Inputs, device: torch.device | str) -> Inputs:
    return tree_map(lambda t: t.to(device), inputs)


def unsqueeze0(inputs: Inputs) -> Inputs:
    return tree_map(lambda t: t.unsqueeze(0), inputs)


# Rows per forward pass when only predictions or features are needed. A transformer layer's
# activations for 1,024 text rows of 64 tokens are ~1 GB; 128 rows keep them near 0.1 GB.
INFERENCE_ROWS = 128


def chunk_slices(n: int, size: int) -> Iterator[slice]:
    """Consecutive slices of at most ``size`` rows covering ``range(n)``."""
    if size < 1:
        raise ValueError(f"chunk size must be >= 1, got {size}")
    for start in range(0, n, size):
        yield slice(start, min(start + size, n))
