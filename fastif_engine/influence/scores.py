"""Influence of training rows on test losses, and self-influence.

    I(z, z_test) = −∇θL(z_test)ᵀ (H + λI)⁻¹ ∇θL(z) = −s_test · ∇θL(z)        (Koh & Liang, eq. 2)

Sign convention: **positive = harmful** (up-weighting z raises the test loss, so removing it
should lower it); **negative = helpful**.

Each candidate's gradient is computed once and dotted with the s_test of every test example
that has it as a neighbour: cost grows with the number of *distinct* candidates, not with
errors × k. Where candidates are hardly shared (one test example, as in ``explain``), forward-mode
directional derivatives along each s_test give the same dot products without any gradient block.

Memory: the s_test vectors are ``[m, P]`` (356 errors × 1.78M parameters = 2.5 GB for the text
model). With ``max_vectors`` the test examples are scored in groups of at most that many, only
one group's vectors loaded at a time (``s_tests`` may then be rows on disk, ``store.NpyRows``).
Errors whose candidates overlap go in one group (``error_groups``): a candidate shared by two
groups has its gradient formed once per group, so the grouping decides what bounded memory costs.
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import numpy as np
import torch

from ..adapter import ModelAdapter
from ..data.batching import Inputs, n_rows
from ..errors import SettingsError
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
    s_tests: Any,
    candidates: np.ndarray | list[np.ndarray] | None = None,
    *,
    chunk_size: int = 256,
    flat: FlatParams | None = None,
    progress: ProgressFn | None = None,
    max_vectors: int | None = None,
) -> CandidateInfluence:
    """Score ``I(z, z_test)`` for each test example's candidate training rows.

    Args:
        s_tests: ``[m, P]`` inverse-HVPs, one per test example: a tensor, or anything with
            ``.shape`` whose ``[rows]`` gives those rows (``store.NpyRows``: read from disk).
        candidates: ``[m, k]`` array (kNN result) or a list of m index arrays; ``None`` scores
            every training row for every test example (the "no kNN" original algorithm).
        max_vectors: s_test vectors held at once (``None``: all m); see the module docstring.
    """
    m = s_tests.shape[0]
    n_train = n_rows(train_inputs)
    if candidates is None:
        candidates = [np.arange(n_train)] * m
    lists = [np.asarray(c, dtype=np.int64).ravel() for c in candidates]
    if len(lists) != m:
        raise SettingsError(f"{len(lists)} candidate lists for {m} s_test vectors")
    test_pos = np.concatenate([np.full(len(c), i, dtype=np.int64) for i, c in enumerate(lists)])
    train_index = np.concatenate(lists)
    if len(train_index) and (train_index.min() < 0 or train_index.max() >= n_train):
        raise IndexError("candidate index outside the training set (a -1 from a short kNN result?)")
    n_distinct = len(np.unique(train_index))
    groups = error_groups(lists, max_vectors or max(m, 1))
    starts = np.concatenate([[0], np.cumsum([len(c) for c in lists])])
    influence = np.empty(len(train_index), dtype=np.float64)
    for done, group in enumerate(groups, start=1):
        if isinstance(s_tests, torch.Tensor):
            vectors = s_tests if len(groups) == 1 else s_tests[torch.as_tensor(group)]  # one group: no copy
        else:
            vectors = torch.as_tensor(s_tests[group])
        scores = _score_group(adapter, train_inputs, train_labels, vectors, [lists[i] for i in group],
                              chunk_size=chunk_size, flat=flat, progress=progress if len(groups) == 1 else None)
        del vectors
        at = np.concatenate([np.arange(starts[i], starts[i + 1]) for i in group])
        influence[at] = scores
        if progress and len(groups) > 1:
            progress(done, len(groups))
    return CandidateInfluence(test_pos, train_index, influence, n_distinct)


def error_groups(lists: list[np.ndarray], size: int) -> list[np.ndarray]:
    """Test examples in groups of at most ``size``, each grown greedily by the example that adds
    the fewest new candidate rows to the group (the candidates whose gradients it shares)."""
    m = len(lists)
    if m <= size:
        return [np.arange(m)]
    from scipy.sparse import csr_matrix

    rows, col = np.unique(np.concatenate(lists), return_inverse=True)
    owner = np.repeat(np.arange(m), [len(c) for c in lists])
    incidence = csr_matrix((np.ones(len(col)), (owner, col)), shape=(m, len(rows)))
    incidence.data[:] = 1.0  # a row listed twice for one example is one candidate
    by_row = incidence.tocsc()
    n_cands = np.diff(incidence.indptr).astype(np.float64)
    left = np.ones(m, dtype=bool)
    groups = []
    while left.any():
        in_group = np.zeros(len(rows), dtype=bool)
        shared = np.zeros(m)  # each example's candidates already in the group
        group = []
        nxt = int(np.flatnonzero(left)[0])
        while True:
            group.append(nxt)
            left[nxt] = False
            new = incidence.indices[incidence.indptr[nxt]:incidence.indptr[nxt + 1]]
            new = new[~in_group[new]]
            in_group[new] = True
            shared += np.asarray(by_row[:, new].sum(axis=1)).ravel()
            if len(group) == size or not left.any():
                break
            cost = np.where(left, n_cands - shared, np.inf)
            nxt = int(np.argmin(cost))  # ties: the lowest position
        groups.append(np.asarray(group, dtype=np.int64))
    return groups


def _score_group(adapter: ModelAdapter, train_inputs: Inputs, train_labels: torch.Tensor, s_tests: torch.Tensor,
                 lists: list[np.ndarray], *, chunk_size: int, flat: FlatParams | None,
                 progress: ProgressFn | None) -> np.ndarray:
    """−s_i·∇L(z) for every row z of ``lists[i]``, concatenated in list order."""
    m = len(lists)
    test_pos = np.concatenate([np.full(len(c), i, dtype=np.int64) for i, c in enumerate(lists)])
    train_index = np.concatenate(lists)
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
        return influence
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
    return influence


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
