"""What a stage loads inside a worker (threads share it; each process loads it once): the
dataset, the prepared inputs, the trained adapter and its solver, and the per-task budgets.
"""
from __future__ import annotations

import copy
import dataclasses
import json
from functools import lru_cache
from pathlib import Path

import torch

from ..data.batching import RowFile
from ..data.tables import Dataset, dataset_from_arrays
from ..influence.gradients import FlatParams, chunk_rows
from ..influence.hessian import Spectrum
from ..influence.kfac import EkfacSolver
from ..influence.krylov import CG_MAX_ITERATIONS, CG_TOLERANCE, LOW_RANK, CgSolver, LowRankSolver
from ..influence.planning import SolverPlan, make_solver
from ..influence.solvers import LissaSettings, default_damping
from ..models import DataInfo, create_model, data_info
from ..store.files import (load_arrays, load_tensors,
    tensors_metadata)

from ..config import CleanConfig
from .workers import set_worker_threads, worker_device

from .stage_cache import _LOCK

# ---- loading shared state inside a worker (threads share these; processes load once each) ----

@lru_cache(maxsize=4)
def load_cached_dataset(path: str) -> Dataset:
    """The validated dataset a ``load + validate`` stage wrote (plain arrays; no pickle is loaded)."""
    return dataset_from_arrays(load_arrays(path))


@lru_cache(maxsize=4)
def _inputs(path: str) -> dict:
    """``{split: tensor or {name: tensor}, "labels": {split: int64 array}}`` (safetensors, no pickle);
    the leaves ``prepare_inputs`` wrote to disk come back as ``RowFile``s, read by rows when used."""
    blob = load_tensors(path)
    blob["labels"] = {split: labels.numpy() for split, labels in blob["labels"].items()}
    for name, file_name in json.loads(tensors_metadata(path).get("rows_on_disk", "{}")).items():
        split, leaf = name.split("/")
        blob.setdefault(split, {})[leaf] = RowFile(Path(path).with_name(file_name))
    return blob


@lru_cache(maxsize=2)
def _base_model(model: str, options_json: str, info: DataInfo):
    return create_model(model, info, **json.loads(options_json))


def base_adapter(cfg: CleanConfig, dataset_path: str):
    """The run's untrained model as first built in this worker (shared: read it, never train or swap it)."""
    info = data_info(load_cached_dataset(dataset_path))
    with _LOCK:
        return _base_model(cfg.model, json.dumps(cfg.model_options, sort_keys=True), info)


def load_adapter(cfg: CleanConfig, dataset_path: str, state_path: str | None):
    """A private copy of the model per task: functional_call swaps parameters in place, so
    threads must never share one module."""
    base = base_adapter(cfg, dataset_path)
    with _LOCK:
        adapter = copy.deepcopy(base)
    adapter.to(worker_device(cfg.device))
    if state_path:
        adapter.model.load_state_dict(torch.load(state_path, weights_only=True, map_location=adapter.placement))
        adapter.model.eval()
    return adapter


def lissa_settings(cfg: CleanConfig, scale: float, damping: float) -> LissaSettings:
    return LissaSettings(depth=cfg.depth, repeats=cfg.repeats, batch_size=cfg.batch_size,
                         damping=damping, scale=scale, tolerance=cfg.tolerance, seed=cfg.seed)


def run_damping(cfg: CleanConfig, scale: float, spec: Spectrum | None) -> float:
    """d in λ = d × scale: ``--damping`` as given, else the default ridge λ = RIDGE_OF_TOP × the
    Hessian's (sampled) top eigenvalue, ``spec.largest``."""
    return cfg.damping if cfg.damping is not None else default_damping(spec.largest, scale)


def task_budget(cfg: CleanConfig) -> float:
    """GB one task's gradient chunks and LiSSA blocks may take: ``--memory-budget`` is per process,
    so the thread runner's workers, which run at once in the flow's process, share it."""
    return cfg.memory_budget / (cfg.workers if cfg.runner == "thread" else 1)


def chunk_size(cfg: CleanConfig, n_params: int) -> int:
    """Rows per per-sample-gradient chunk: ``cfg.chunk_size``, or what the task's budget allows for P."""
    return cfg.chunk_size or chunk_rows(n_params, task_budget(cfg))


def s_test_rows(cfg: CleanConfig, n_params: int) -> int:
    """s_test vectors an influence task holds at once: what the task's budget allows for P, on top
    of its gradient chunks (so the stage takes up to twice the budget, whatever the number of errors)."""
    return max(1, int(task_budget(cfg) * 1e9 // (4 * max(n_params, 1))))  # float32 rows, as the s_test file


def stage_solver(cfg: CleanConfig, adapter, x, y, solver_path: str, flat: FlatParams, name: str | None = None):
    """The run's inverse-HVP solver (or ``name``) with the scale and ridge ``resolve_solver`` fixed once;
    a low-rank solver reuses the eigenpairs saved beside it when there are any."""
    info = json.loads(Path(solver_path).read_text())
    name = name or info["name"]
    eigenpairs = Path(solver_path).with_suffix(".npz")
    if name == "lowrank" and eigenpairs.exists():
        saved = load_arrays(eigenpairs)
        return LowRankSolver.from_eigenpairs(torch.from_numpy(saved["values"]).to(adapter.placement),
                                             torch.from_numpy(saved["vectors"]).to(adapter.placement), info["ridge"])
    factors = Path(solver_path).with_suffix(".ekfac.npz")
    ekfac = None
    if name in ("ekfac", "cg") and factors.exists():
        state = {k: torch.from_numpy(v) for k, v in load_arrays(factors).items()}
        ekfac = EkfacSolver.from_state(adapter, state, ridge=info["ridge"], flat=flat)
        if name == "ekfac":
            return ekfac
    if name == "cg":  # preconditioned by the saved EK-FAC factors where there are any (auto's CG has none)
        return CgSolver(adapter, x, y, ridge=info["ridge"], preconditioner=ekfac, flat=flat,
                        tolerance=info.get("tolerance", CG_TOLERANCE),
                        max_iterations=info.get("max_iterations", CG_MAX_ITERATIONS))
    return make_solver(name, adapter, x, y, lissa_settings(cfg, info["scale"], info["damping"]), rank=LOW_RANK,
                       flat=flat, memory_budget=task_budget(cfg), plan=SolverPlan(name, "cached", {}) if name in
                       ("exact", "lissa", "lowrank") else None)


def _split_tensors(inputs_path: str, split: str):
    blob = _inputs(inputs_path)
    return blob[split], torch.as_tensor(blob["labels"][split])


@dataclasses.dataclass
class _Work:
    """What a stage computes with, loaded inside its worker: a private copy of the model (trained,
    or fresh when ``model_path`` is None), the training split and the differentiated parameters."""

    cfg: CleanConfig
    inputs_path: str
    adapter: object
    x: object
    y: torch.Tensor
    flat: FlatParams

    @classmethod
    def load(cls, cfg: CleanConfig, dataset_path: str, inputs_path: str, model_path: str | None,
             threads: int | None = None) -> "_Work":
        if threads:
            set_worker_threads(threads)
        adapter = load_adapter(cfg, dataset_path, model_path)
        x, y = _split_tensors(inputs_path, "train")
        return cls(cfg, inputs_path, adapter, x, y, FlatParams.of(adapter))

    def split(self, name: str):
        return _split_tensors(self.inputs_path, name)

    @property
    def chunk(self) -> int:
        return chunk_size(self.cfg, self.flat.size)

    def solver(self, solver_path: str, name: str | None = None):
        return stage_solver(self.cfg, self.adapter, self.x, self.y, solver_path, self.flat, name)
