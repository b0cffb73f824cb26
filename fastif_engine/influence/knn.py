"""Candidate training rows for each test example: k nearest neighbours in feature space (FAISS).

FastIF restricts the influence argmax to the k nearest training rows (L2 on the features the
classifier head sees). ``flat`` is exact; ``ivf``, ``ivfpq`` and ``hnsw`` trade recall for speed
at large N, and ``ivfpq`` stores ``pq_m`` bytes per row instead of 4 × dims (measure recall with
:func:`recall_at_k`; docs/BENCHMARKS.md has figures for 1M rows). When faiss sees GPUs the
index lives there.
"""
from __future__ import annotations

import json
import logging
from pathlib import Path

import faiss
import numpy as np

from ..errors import IndexNotBuiltError, SettingsError
from ..store.files import atomic_path, write_text

log = logging.getLogger("fastif")

KINDS = ("flat", "ivf", "ivfpq", "hnsw")
TRAIN_PER_LIST = 64  # k-means training rows per inverted list (a seeded sample beyond that)


def gpu_count() -> int:
    get = getattr(faiss, "get_num_gpus", None)
    return int(get()) if get else 0


def faiss_build() -> str:
    """Which faiss is installed, for metrics.json: 'faiss-gpu (n GPUs)' or 'faiss-cpu'."""
    has_gpu_api = hasattr(faiss, "StandardGpuResources")
    return f"faiss {faiss.__version__} ({'GPU build, %d GPUs' % gpu_count() if has_gpu_api else 'CPU build'})"


class FaissIndex:
    """A FAISS L2 index over training features.

    Args:
        kind: ``flat`` (exact, default), ``ivf`` (inverted lists; ``nlist`` cells, ``nprobe``
            searched), ``ivfpq`` (the same lists, rows compressed to ``pq_m`` bytes by product
            quantisation; default: dims / 4, rounded down to a divisor) or ``hnsw`` (graph;
            ``hnsw_m`` links per node, ``ef_search``).
        use_gpu: ``None`` = on GPU when faiss sees one; ``False`` forces CPU.
    """

    def __init__(self, kind: str = "flat", *, nlist: int | None = None, nprobe: int = 16,
                 hnsw_m: int = 32, ef_search: int = 128, pq_m: int | None = None,
                 use_gpu: bool | None = None, seed: int = 0):
        if kind not in KINDS:
            raise SettingsError(f"unknown index kind {kind!r}; choose one of {', '.join(KINDS)}")
        self.kind, self.nlist, self.nprobe = kind, nlist, nprobe
        self.hnsw_m, self.ef_search, self.pq_m, self.seed = hnsw_m, ef_search, pq_m, seed
        self.use_gpu = gpu_count() > 0 if use_gpu is None else use_gpu
        self._index = None
        self.dim: int | None = None

    @property
    def ntotal(self) -> int:
        return 0 if self._index is None else int(self._index.ntotal)

    def build(self, features: np.ndarray) -> "FaissIndex":
        x = _as_f32(features)
        n, self.dim = x.shape
        if self.kind == "flat":
            index = faiss.IndexFlatL2(self.dim)
        elif self.kind in ("ivf", "ivfpq"):
            nlist = self.nlist or max(1, min(int(4 * np.sqrt(n)), n // 39))
            quantizer = faiss.IndexFlatL2(self.dim)
            if self.kind == "ivf":
                index = faiss.IndexIVFFlat(quantizer, self.dim, nlist)
            else:
                pq_m = self.pq_m or max(m for m in range(1, max(1, self.dim // 4) + 1) if self.dim % m == 0)
                index = faiss.IndexIVFPQ(quantizer, self.dim, nlist, pq_m, 8)
            index.cp.seed = self.seed
            sample = TRAIN_PER_LIST * max(nlist, 256 if self.kind == "ivfpq" else 1)
            rows = np.random.default_rng(self.seed).choice(n, sample, replace=False) if n > sample else slice(None)
            index.train(x[rows])
            index.nprobe = min(self.nprobe, nlist)
        else:
            index = faiss.IndexHNSWFlat(self.dim, self.hnsw_m)
            index.hnsw.efSearch = self.ef_search
        if self.use_gpu and self.kind != "hnsw":  # faiss has no GPU HNSW
            index = faiss.index_cpu_to_all_gpus(index)
        index.add(x)
        self._index = index
        return self

    def search(self, queries: np.ndarray, k: int) -> tuple[np.ndarray, np.ndarray]:
        """``(distances, indices)``, each ``[q, min(k, ntotal)]``, nearest first (squared L2).

        ``ivf`` and ``hnsw`` may find fewer than k rows: missing slots hold index −1.
        """
        if self._index is None:
            raise IndexNotBuiltError("search() before build() or load()")
        q = _as_f32(queries)
        if q.shape[1] != self.dim:
            raise SettingsError(f"queries have {q.shape[1]} dims, the index {self.dim}")
        k = min(int(k), self.ntotal)
        dist, idx = self._index.search(q, k)
        return dist, idx

    def save(self, path: str | Path) -> None:
        """Write the index (as a CPU index) and its settings to ``path`` and ``path.json``."""
        if self._index is None:
            raise IndexNotBuiltError("save() before build()")
        path = Path(path)
        index = faiss.index_gpu_to_cpu(self._index) if self.use_gpu and self.kind != "hnsw" else self._index
        meta = {"kind": self.kind, "nlist": self.nlist, "nprobe": self.nprobe, "hnsw_m": self.hnsw_m,
                "ef_search": self.ef_search, "pq_m": self.pq_m, "seed": self.seed, "dim": self.dim}
        write_text(path.with_name(path.name + ".json"), json.dumps(meta))  # first: the index file means done
        with atomic_path(path) as tmp:
            faiss.write_index(index, str(tmp))

    @classmethod
    def load(cls, path: str | Path, use_gpu: bool | None = None) -> "FaissIndex":
        path = Path(path)
        meta = json.loads(path.with_name(path.name + ".json").read_text())
        dim = meta.pop("dim")
        self = cls(**meta, use_gpu=use_gpu)
        index = faiss.read_index(str(path))
        if self.use_gpu and self.kind != "hnsw":
            index = faiss.index_cpu_to_all_gpus(index)
        self._index, self.dim = index, dim
        return self


def exact_neighbours(train: np.ndarray, queries: np.ndarray, k: int) -> np.ndarray:
    """Brute-force k nearest rows by squared L2, numpy only (the reference for the tests)."""
    d = (queries ** 2).sum(1)[:, None] - 2 * queries @ train.T + (train ** 2).sum(1)[None, :]
    return np.argsort(d, axis=1, kind="stable")[:, :k]


def recall_at_k(found: np.ndarray, truth: np.ndarray) -> float:
    """Mean share of each query's true neighbours (``truth[i]``) present in ``found[i]``."""
    hits = [len(np.intersect1d(f, t)) / len(t) for f, t in zip(found, truth)]
    return float(np.mean(hits))


def _as_f32(x: np.ndarray) -> np.ndarray:
    x = np.ascontiguousarray(np.asarray(x, dtype=np.float32))
    if x.ndim != 2:
        raise SettingsError(f"features must be 2-D [rows, dims], got shape {x.shape}")
    if not np.isfinite(x).all():
        raise SettingsError("features contain NaN or infinite values")
    return x

