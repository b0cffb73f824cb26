"""The façade a notebook user touches: :class:`FastIF`.

    fi = FastIF(adapter, train_x, train_y, k=100)
    table = fi.influence(test_x, test_y)        # one row per (test example, candidate)

Scores follow Koh & Liang: I(z, z_test) = −∇L(z_test)ᵀ (H + λI)⁻¹ ∇L(z);
**positive = harmful** (removing z should lower the test loss), negative = helpful.
"""
from __future__ import annotations

import numpy as np
import pandas as pd
import torch

from ..adapter import ModelAdapter
from ..data.batching import INFERENCE_ROWS, Inputs, chunk_slices, n_rows, take, to_device
from ..store.memory import TRIM_EVERY_INFERENCE, trimming
from .gradients import FlatParams, chunk_rows, gradient_matrix
from .knn import FaissIndex
from .planning import make_solver
from .scores import influence_on_candidates, self_influence
from .solvers import InverseHVPSolver, LissaSettings, ProgressFn


def extract_features(adapter: ModelAdapter, inputs: Inputs, *, chunk_size: int = INFERENCE_ROWS) -> np.ndarray:
    """``adapter.features`` for every row, as float32 ``[n, d]``, in chunks."""
    parts = []
    with torch.no_grad():
        for rows in trimming(chunk_slices(n_rows(inputs), chunk_size), every=TRIM_EVERY_INFERENCE):
            parts.append(adapter.features(adapter.trim_batch(to_device(take(inputs, rows), adapter.device))).float().cpu())
    return torch.cat(parts).numpy()


class FastIF:
    """Influence of training rows on test examples, restricted to each one's k nearest neighbours.

    Args:
        adapter: the model (see :class:`~fastif_engine.adapter.ModelAdapter`), already trained.
        train_inputs, train_labels: the training set the model was fit on.
        solver: ``"auto"`` (default: by predicted cost, see :func:`~fastif_engine.influence.planning.plan_solver`),
            ``"ekfac"`` (Kronecker-factored Gauss-Newton), ``"cg"`` (EK-FAC-preconditioned conjugate
            gradient), ``"exact"``, ``"lissa"``, ``"lowrank"`` (rank-32 Lanczos), or a ready solver object.
        lissa: LiSSA settings; damping × scale is the ridge λ for every solver.
        chunk_size: rows per per-sample-gradient chunk; ``None`` = what 0.5 GB allows for P.
        k: candidates per test example; ``None`` scores every training row (no kNN).
        index: the kNN index (exact FAISS ``flat`` by default).
    """

    def __init__(self, adapter: ModelAdapter, train_inputs: Inputs, train_labels: torch.Tensor, *,
                 solver: str | InverseHVPSolver = "auto", lissa: LissaSettings = LissaSettings(),
                 k: int | None = 1000, index: FaissIndex | None = None, chunk_size: int | None = None):
        self.adapter, self.train_inputs, self.train_labels = adapter, train_inputs, train_labels
        self.flat = FlatParams.of(adapter)
        self.k, self.chunk_size = k, chunk_size or chunk_rows(self.flat.size)
        self.solver = (solver if isinstance(solver, InverseHVPSolver)
                       else make_solver(solver, adapter, train_inputs, train_labels, lissa, flat=self.flat))
        self.index = index or FaissIndex("flat")
        if k is not None and self.index.ntotal == 0:
            self.index.build(extract_features(adapter, train_inputs))

    def s_test(self, test_inputs: Inputs, test_labels: torch.Tensor,
               progress: ProgressFn | None = None) -> torch.Tensor:
        """``[m, P]``: (H + λI)⁻¹ ∇L(z_test) for each test row, all solved together."""
        v = gradient_matrix(self.adapter, test_inputs, test_labels, chunk_size=self.chunk_size, flat=self.flat)
        return self.solver.solve(v, progress)

    def neighbours(self, test_inputs: Inputs) -> list[np.ndarray] | None:
        """Candidate training rows per test row (nearest first), or None when ``k`` is None.

        An approximate index may find fewer than k (FAISS pads with −1): those are dropped.
        """
        if self.k is None:
            return None
        _, idx = self.index.search(extract_features(self.adapter, test_inputs), self.k)
        return [row[row >= 0] for row in idx]

    def influence(self, test_inputs: Inputs, test_labels: torch.Tensor,
                  progress: ProgressFn | None = None) -> pd.DataFrame:
        """Long table ``test_pos, train_index, influence, rank`` (rank 1 = most harmful per test)."""
        s = self.s_test(test_inputs, test_labels)
        res = influence_on_candidates(self.adapter, self.train_inputs, self.train_labels, s,
                                      self.neighbours(test_inputs), chunk_size=self.chunk_size,
                                      flat=self.flat, progress=progress)
        table = pd.DataFrame({"test_pos": res.test_pos, "train_index": res.train_index,
                              "influence": res.influence})
        table["rank"] = (table.groupby("test_pos")["influence"]
                         .rank(ascending=False, method="first").astype(np.int64))
        return table

    def self_influence(self, progress: ProgressFn | None = None) -> np.ndarray:
        """∇L(z)ᵀ(H + λI)⁻¹∇L(z) for every training row (≥ 0; high = suspicious)."""
        return self_influence(self.adapter, self.train_inputs, self.train_labels, self.solver,
                              chunk_size=self.chunk_size, flat=self.flat, progress=progress)
