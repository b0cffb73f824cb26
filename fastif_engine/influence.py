"""Influence of training rows on test losses, and self-influence.

    I(z, z_test) = −∇θL(z_test)ᵀ (H + λI)⁻¹ ∇θL(z) = −s_test · ∇θL(z)        (Koh & Liang, eq. 2)

Sign convention: **positive = harmful** (up-weighting z raises the test loss, so removing it
should lower it); **negative = helpful**.

Each candidate's gradient is computed once and dotted with the s_test of every test example
that has it as a neighbour: cost grows with the number of *distinct* candidates, not with
errors × k. Where candidates are hardly shared (one test example, as in ``explain``), forward-mode
directional derivatives along each s_test give the same dot products without any gradient block.
"""
from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import torch

from .adapter import ModelAdapter
from .batching import Inputs, n_rows
from .gradients import FlatParams, directional_derivatives, per_sample_gradients
from .solvers import InverseHVPSolver, ProgressFn


# Forward mode (one jvp per test example over its candidates) when the (test, candidate) pairs are
# at most this many per distinct candidate. One vector's jvp costs a sixth (image-cnn) to a quarter
# (text-minilm) of the per-sample gradient it replaces; 2 keeps a wide margin.
FORWARD_MODE_PAIRS_PER_ROW = 2


@dataclass
class CandidateInfluence:
    """Long-format scores: pair ``i`` is (``test_pos[i]``, ``train_index[i]``) → ``influence[i]``."""

    test_pos: np.ndarray  # position of the test example in the s_test block
    train_index: np.ndarray  # training row
    influence: np.ndarray  # positive = harmful
    n_distinct_candidates: int

    def as_matrix(self, n_tests: int, n_train: int) -> np.ndarray:
        """Dense ``[n_tests, n_train]`` with NaN where a pair was not scored (small problems only)."""
        out = np.full((n_tests, n_train), np.nan)
        out[self.test_pos, self.train_index] = self.influence
        return out


def influence_on_candidates(
    adapter: ModelAdapter,
    train_inputs: Inputs,
    train_labels: torch.Tensor,
    s_tests: torch.Tensor,
    candidates: np.ndarray | list[np.ndarray] | None = None,
    *,
    chunk_size: int = 256,
    flat: FlatParams | None = None,
    progress: ProgressFn | None = None,
) -> CandidateInfluence:
    """Score ``I(z, z_test)`` for each test example's candidate training rows.

    Args:
        s_tests: ``[m, P]`` inverse-HVPs, one per test example.
        candidates: ``[m, k]`` array (kNN result) or a list of m index arrays; ``None`` scores
            every training row for every test example (the "no kNN" original algorithm).
    """
    m = s_tests.shape[0]
    n_train = n_rows(train_inputs)
    if candidates is None:
        candidates = [np.arange(n_train)] * m
    lists = [np.asarray(c, dtype=np.int64).ravel() for c in candidates]
    if len(lists) != m:
        raise ValueError(f"{len(lists)} candidate lists for {m} s_test vectors")
    test_pos = np.concatenate([np.full(len(c), i, dtype=np.int64) for i, c in enumerate(lists)])
    train_index = np.concatenate(lists)
    if len(train_index) and (train_index.min() < 0 or train_index.max() >= n_train):
        raise IndexError("candidate index outside the training set (a -1 from a short kNN result?)")
    union = np.unique(train_index)
    influence = np.empty(len(train_index), dtype=np.float64)
    if len(train_index) <= FORWARD_MODE_PAIRS_PER_ROW * len(union):  # candidates hardly shared
        start = 0
        for i, rows in enumerate(lists):
            influence[start:start + len(rows)] = -directional_derivatives(
                adapter, train_inputs, train_labels, s_tests[i], index=rows, chunk_size=chunk_size, flat=flat)
            start += len(rows)
            if progress:
                progress(i + 1, m)
        return CandidateInfluence(test_pos, train_index, influence, len(union))
    union_pos = np.searchsorted(union, train_index)
    union, union_pos = _by_length(adapter, train_inputs, union, union_pos)
    order = np.argsort(union_pos, kind="stable")
    sorted_pos = union_pos[order]

    # [P, m] as a transposed view, not a copy: m s_test vectors of P values can be the largest
    # array of the stage (74 errors × 1.78M parameters = 0.5 GB for the text model)
    s_t = s_tests.to(device=adapter.device, dtype=adapter.dtype).T  # the gradients' device and dtype
    total = -(-len(union) // chunk_size)
    for done, (part, grads) in enumerate(
            per_sample_gradients(adapter, train_inputs, train_labels, chunk_size=chunk_size,
                                 flat=flat, index=union), start=1):
        dots = (grads @ s_t).cpu().numpy()  # [c, m]: every candidate × every test
        lo, hi = np.searchsorted(sorted_pos, [part.start, part.stop])
        pairs = order[lo:hi]
        influence[pairs] = -dots[union_pos[pairs] - part.start, test_pos[pairs]]
        if progress:
            progress(done, total)
    return CandidateInfluence(test_pos, train_index, influence, len(union))


def _by_length(adapter: ModelAdapter, inputs: Inputs, rows: np.ndarray, positions: np.ndarray):
    """Reorder ``rows`` by the adapter's row lengths (if it has them) and remap ``positions`` into it."""
    lengths = adapter.row_lengths(inputs)
    if lengths is None:
        return rows, positions
    order = np.argsort(np.asarray(lengths)[rows], kind="stable")
    where = np.empty_like(order)
    where[order] = np.arange(len(order))
    return rows[order], where[positions]


def self_influence(
    adapter: ModelAdapter,
    inputs: Inputs,
    labels: torch.Tensor,
    solver: InverseHVPSolver,
    *,
    chunk_size: int = 256,
    flat: FlatParams | None = None,
    progress: ProgressFn | None = None,
) -> np.ndarray:
    """``∇L(z)ᵀ (H + λI)⁻¹ ∇L(z)`` for every row: ≥ 0, large for rows the model finds unusual.

    This is minus the influence of z on its own loss, so that high = suspicious (likely
    mislabelled or atypical), the convention of Kronfluence and TracIn's self-influence.
    """
    out = np.empty(n_rows(inputs), dtype=np.float64)
    rows, _ = _by_length(adapter, inputs, np.arange(len(out)), np.arange(0))
    total = -(-len(out) // chunk_size)
    for done, (part, grads) in enumerate(
            per_sample_gradients(adapter, inputs, labels, chunk_size=chunk_size, flat=flat, index=rows), start=1):
        out[rows[part]] = (grads * solver.solve(grads).to(grads.dtype)).sum(dim=1).cpu().numpy()
        if progress:
            progress(done, total)
    return out
