"""Inputs are pytrees of tensors (a tensor, or a dict of tensors) whose leading dim is the row.

Text models pass ``{"hidden": ..., "mask": ...}``, image and tabular models a single tensor;
the engine only ever slices rows, so it never needs to know which. A leaf may also be a
:class:`RowFile`, rows kept on disk (the flow's prepared text hidden states): slicing reads them.
"""
from __future__ import annotations

from typing import Any, Iterator

import numpy as np
import torch
from torch.utils._pytree import tree_flatten, tree_map

from ..errors import SettingsError
from ..store.files import NpyRows

Inputs = Any  # a torch.Tensor or a (nested) dict/tuple of tensors sharing dim 0


def n_rows(inputs: Inputs) -> int:
    leaves, _ = tree_flatten(inputs)
    if not leaves:
        raise SettingsError("inputs hold no tensors")
    n = leaves[0].shape[0]
    if any(leaf.shape[0] != n for leaf in leaves):
        raise SettingsError("every tensor in inputs must have the same number of rows")
    return int(n)


class RowFile:
    """An inputs leaf whose rows stay in an ``.npy`` file: ``leaf[index]`` reads those rows into a
    tensor, so a process holds what it works on (a chunk, a minibatch), not the split.

    ``select`` gives a view of some rows, still on disk (a retrain's kept rows). ``.to("cpu")``
    is the leaf itself; any other device reads every row (a GPU holds the split)."""

    def __init__(self, path, rows: np.ndarray | None = None, *, _file: NpyRows | None = None):
        self.file = _file or NpyRows(path)
        self.rows = None if rows is None else np.asarray(rows, dtype=np.int64)
        self.dtype = torch.from_numpy(np.zeros(0, dtype=self.file.dtype)).dtype

    @property
    def shape(self) -> torch.Size:
        return torch.Size((len(self.rows) if self.rows is not None else self.file.shape[0], *self.file.shape[1:]))

    def __len__(self) -> int:
        return self.shape[0]

    def _positions(self, index) -> np.ndarray:
        """File rows of ``index`` (slice, int, int or bool array, tensor) into this leaf's rows."""
        if isinstance(index, torch.Tensor):
            index = index.cpu().numpy()
        if isinstance(index, slice):
            index = np.arange(len(self))[index]
        index = np.asarray(index)
        if index.dtype == bool:
            index = np.flatnonzero(index)
        index = np.where(index < 0, index + len(self), index).astype(np.int64)
        if index.size and (index.min() < 0 or index.max() >= len(self)):
            raise IndexError(f"row index outside 0..{len(self) - 1} of {self.file.path}")
        return index if self.rows is None else self.rows[index]

    def __getitem__(self, index) -> torch.Tensor:
        if np.ndim(index) == 0 and not isinstance(index, slice):
            return self[np.asarray([index])][0]
        return torch.from_numpy(self.file[self._positions(index)])

    def select(self, index) -> "RowFile":
        return RowFile(self.file.path, self._positions(index), _file=self.file)

    def to(self, device=None, dtype=None):
        if (device is None or torch.device(device).type == "cpu") and dtype in (None, self.dtype):
            return self
        return self[:].to(device=device, dtype=dtype)

    def __repr__(self) -> str:
        return f"RowFile({str(self.file.path)!r}, shape={tuple(self.shape)})"


def take(inputs: Inputs, index) -> Inputs:
    """Rows ``index`` (slice, int array or tensor) of every tensor in ``inputs``, in memory."""
    if isinstance(index, np.ndarray):
        index = torch.as_tensor(index, dtype=torch.long)
    return tree_map(lambda t: t[index], inputs)


def select(inputs: Inputs, index) -> Inputs:
    """Rows ``index`` of ``inputs`` as inputs again: :class:`RowFile` leaves stay on disk (a view)."""
    if isinstance(index, np.ndarray):
        index = torch.as_tensor(index, dtype=torch.long)
    return tree_map(lambda t: t.select(index) if isinstance(t, RowFile) else t[index], inputs)


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
        raise SettingsError(f"chunk size must be >= 1, got {size}")
    for start in range(0, n, size):
        yield slice(start, min(start + size, n))
