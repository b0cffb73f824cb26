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

Net harm (``net_harm``) forms every training row's gradient anyway; ``influence_and_net_harm``
scores the errors' candidates in that same pass, so the candidates cost dot products only.
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
    lists = _candidate_lists(candidates, m, n_rows(train_inputs))
    test_pos, train_index = _pairs(lists)
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


def influence_and_net_harm(
    adapter: ModelAdapter,
    train_inputs: Inputs,
    train_labels: torch.Tensor,
    s_tests: Any,
    candidates: np.ndarray | list[np.ndarray],
    fold_vectors: torch.Tensor,
    *,
    rows: np.ndarray | None = None,
    chunk_size: int = 256,
    flat: FlatParams | None = None,
    progress: ProgressFn | None = None,
    max_vectors: int | None = None,
) -> tuple[CandidateInfluence, np.ndarray]:
    """Per-error influence and net harm from one pass over the training rows.

    Net harm (``net_harm``) dots *every* training row's gradient with the fold s_tests; the
    per-error scores need the gradients of the errors' candidates, a subset of those rows. Here
    each row's gradient is formed once and dotted with both: with the ``G`` fold vectors, and,
    where the row is a candidate of some error, with that error's s_test. With ``max_vectors``
    the pass holds the fold vectors and as many errors' vectors as fit beside them (a group of
    errors that share candidates, ``error_groups``); the other errors are scored over their own
    candidates afterwards, in groups (:func:`influence_on_candidates`).

    Args:
        s_tests: ``[m, P]`` s_test vectors of the errors: a tensor, or rows on disk (``store.NpyRows``).
        candidates: as in :func:`influence_on_candidates` (``[m, k]`` or m index arrays).
        fold_vectors: ``[G, P]`` (``net_harm.fold_s_tests``).
        rows: the training rows this call scores (default: all); pairs whose row is elsewhere are
            left to the call that scores that row.
        max_vectors: s_test vectors held at once, the fold vectors included (``None``: all).

    Returns:
        the (error, candidate) pairs among ``rows`` in list order, and ``[len(rows), G]`` per-fold
        net harm in the order of ``rows`` (``NetHarm.per_fold``'s layout).
    """
    n_train = n_rows(train_inputs)
    m = s_tests.shape[0]
    rows = np.arange(n_train) if rows is None else np.asarray(rows, dtype=np.int64)
    mine = np.zeros(n_train, dtype=bool)
    mine[rows] = True
    lists = [c[mine[c]] for c in _candidate_lists(candidates, m, n_train)]
    test_pos, train_index = _pairs(lists)
    room = m if max_vectors is None else max(0, max_vectors - fold_vectors.shape[0])
    in_pass = np.arange(m) if room >= m else (np.sort(error_groups(lists, room)[0]) if room else np.arange(0))
    rest = np.setdiff1d(np.arange(m), in_pass)
    passing = np.isin(test_pos, in_pass)

    position = np.empty(n_train, dtype=np.int64)  # training row → its position in `rows`
    position[rows] = np.arange(len(rows))
    ordered, pair_pos = _by_length(adapter, train_inputs, rows, position[train_index[passing]])
    vectors = s_tests if len(rest) == 0 and isinstance(s_tests, torch.Tensor) else torch.as_tensor(s_tests[in_pass])
    influence = np.empty(len(test_pos), dtype=np.float64)
    influence[passing], per_fold = _gradient_pass(
        adapter, train_inputs, train_labels, ordered, pair_pos, np.searchsorted(in_pass, test_pos[passing]), vectors,
        fold_vectors, chunk_size=chunk_size, flat=flat, progress=progress)
    del vectors
    if len(rest):  # in list order, as these errors' pairs are in `test_pos`
        influence[~passing] = influence_on_candidates(
            adapter, train_inputs, train_labels, _RowsOf(s_tests, rest), [lists[i] for i in rest],
            chunk_size=chunk_size, flat=flat, max_vectors=max_vectors).influence
    out = np.empty_like(per_fold)
    out[position[ordered]] = per_fold  # back to the order of `rows`
    return CandidateInfluence(test_pos, train_index, influence, len(np.unique(train_index))), out


class _RowsOf:
    """Rows ``index`` of an s_test block (tensor or ``NpyRows``), indexed as a block of their own."""

    def __init__(self, block: Any, index: np.ndarray):
        self.block, self.index = block, index
        self.shape = (len(index), *block.shape[1:])

    def __getitem__(self, rows):
        return self.block[self.index[rows]]


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
    test_pos, train_index = _pairs(lists)
    union = np.unique(train_index)
    if len(train_index) <= FORWARD_MODE_PAIRS_PER_ROW * len(union):  # candidates hardly shared
        influence = np.empty(len(train_index), dtype=np.float64)
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
    influence, _ = _gradient_pass(adapter, train_inputs, train_labels, union, union_pos, test_pos, s_tests, None,
                                  chunk_size=chunk_size, flat=flat, progress=progress)
    return influence


def _gradient_pass(adapter: ModelAdapter, inputs: Inputs, labels: torch.Tensor, rows: np.ndarray,
                   pair_pos: np.ndarray, pair_test: np.ndarray, s_tests: torch.Tensor,
                   fold_vectors: torch.Tensor | None, *, chunk_size: int, flat: FlatParams | None,
                   progress: ProgressFn | None) -> tuple[np.ndarray, np.ndarray | None]:
    """One pass of per-sample gradients over ``rows``: ``−s_tests[pair_test[i]]·∇L(rows[pair_pos[i]])``
    for every pair i and, given ``fold_vectors`` ``[G, P]``, ``[len(rows), G]`` of ``−fold·∇L``."""
    influence = np.empty(len(pair_pos), dtype=np.float64)
    order = np.argsort(pair_pos, kind="stable")
    sorted_pos = pair_pos[order]
    is_candidate = np.zeros(len(rows), dtype=bool)
    is_candidate[pair_pos] = True
    # [P, m] as a transposed view, not a copy: m s_test vectors of P values can be the largest
    # array of the stage (74 errors × 1.78M parameters = 0.5 GB for the text model)
    s_t = s_tests.to(device=adapter.device, dtype=adapter.dtype).T  # the gradients' device and dtype
    f_t = None if fold_vectors is None else fold_vectors.to(device=adapter.device, dtype=adapter.dtype).T
    per_fold = None if f_t is None else np.empty((len(rows), f_t.shape[1]), dtype=np.float64)
    total = -(-len(rows) // chunk_size)
    for done, (part, grads) in enumerate(
            per_sample_gradients(adapter, inputs, labels, chunk_size=chunk_size, flat=flat, index=rows), start=1):
        if f_t is not None:
            per_fold[part] = -(grads @ f_t).double().cpu().numpy()
        lo, hi = np.searchsorted(sorted_pos, [part.start, part.stop])
        pairs = order[lo:hi]
        if len(pairs):
            local = np.flatnonzero(is_candidate[part])
            if 2 * len(local) >= len(grads):  # mostly candidates: every row × every test
                dots = (grads @ s_t).cpu().numpy()
                at = pair_pos[pairs] - part.start
            else:  # few candidates (net harm's pass over every row): theirs alone, a few at a time
                step = max(1, len(grads) // 8)
                dots = np.concatenate([(grads[torch.as_tensor(local[i:i + step], device=grads.device)] @ s_t)
                                       .cpu().numpy() for i in range(0, len(local), step)])
                at = np.searchsorted(local, pair_pos[pairs] - part.start)
            influence[pairs] = -dots[at, pair_test[pairs]]
        if progress:
            progress(done, total)
    return influence, per_fold


def _candidate_lists(candidates, m: int, n_train: int) -> list[np.ndarray]:
    """Each test example's candidate rows as an int64 array (``None``: every training row), checked."""
    if candidates is None:
        candidates = [np.arange(n_train)] * m
    lists = [np.asarray(c, dtype=np.int64).ravel() for c in candidates]
    if len(lists) != m:
        raise SettingsError(f"{len(lists)} candidate lists for {m} s_test vectors")
    flat_index = np.concatenate(lists) if lists else np.zeros(0, dtype=np.int64)
    if len(flat_index) and (flat_index.min() < 0 or flat_index.max() >= n_train):
        raise IndexError("candidate index outside the training set (a -1 from a short kNN result?)")
    return lists


def _pairs(lists: list[np.ndarray]) -> tuple[np.ndarray, np.ndarray]:
    """(test position, training row) of every pair, in list order."""
    if not lists:
        return np.zeros(0, dtype=np.int64), np.zeros(0, dtype=np.int64)
    return (np.concatenate([np.full(len(c), i, dtype=np.int64) for i, c in enumerate(lists)]),
            np.concatenate(lists))


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
