"""One Prefect task per pipeline stage, each a thin wrapper over fastif_engine functions.

Tasks hand each other paths, never arrays. Every stage writes its output to the run's stage
cache under a name that contains a content key (file fingerprints + the settings that matter),
atomically; a stage whose output already exists is not recomputed (see ``StageCache``).
"""
from __future__ import annotations

import copy
import dataclasses
import json
import os
import threading
import time
from functools import lru_cache
from pathlib import Path

import numpy as np
import pandas as pd
import torch
from prefect import get_run_logger, task
from prefect.cache_policies import NO_CACHE

from fastif_engine.api import extract_features
from fastif_engine.batching import take
from fastif_engine.data import Columns, Dataset, dataset_arrays, dataset_from_arrays, load_dataset
from fastif_engine.gradients import FlatParams, chunk_rows, gradient_matrix
from fastif_engine.errors import LissaDivergenceError, SolverSetupError
from fastif_engine.influence import influence_on_candidates, self_influence
from fastif_engine.knn import FaissIndex
from fastif_engine.net_harm import net_harm
from fastif_engine.models import DataInfo, create_model
from fastif_engine.retrain import retrain_and_evaluate
from fastif_engine.solvers import (EXACT_MAX_PARAMS, LOW_RANK, LissaSettings, LissaSolver, LowRankSolver,
                                   auto_scale, choose_solver, make_solver)
from fastif_engine.store import (atomic_path, load_arrays, load_tensors, save_arrays, save_tensors, write_json,
                                 write_npy, write_parquet)
from fastif_engine.training import evaluate

from .config import CleanConfig
from .runtime import set_worker_threads, worker_device

_LOCK = threading.Lock()
# Self-influence needs (H + λI)⁻¹ for every training row: with an explicit Hessian that is one
# factorisation, cheap up to a few thousand parameters; "auto" computes it only then.
SELF_INFLUENCE_AUTO_LIMIT = 4096


class StageCache:
    """``<out>/.fastif-cache/<stage>-<key>.<ext>``: present means done (files land by rename)."""

    def __init__(self, root: str | Path):
        self.root = Path(root)

    def path(self, stage: str, key: str, ext: str) -> Path:
        return self.root / f"{stage}-{key}.{ext}"


def _reused(path: Path, stage: str) -> bool:
    if path.exists():
        get_run_logger().info("%s: inputs unchanged, reusing %s", stage, path.name)
        return True
    return False


def _fault_point(stage: str) -> None:
    """Fault injection for the reliability tests: ``FASTIF_KILL_ONCE=<stage>:<marker file>``
    kills the worker process the first time ``stage`` runs (the marker file records it)."""
    spec = os.environ.get("FASTIF_KILL_ONCE", "")
    name, _, marker = spec.partition(":")
    if name == stage and marker and not os.path.exists(marker):
        Path(marker).write_text(f"killed in {stage}\n")
        os._exit(137)


def _stage_task(name: str, **options):
    return task(name=name, cache_policy=NO_CACHE, **options)


# ---- loading shared state inside a worker (threads share these; processes load once each) ----

@lru_cache(maxsize=4)
def load_cached_dataset(path: str) -> Dataset:
    """The validated dataset a ``load + validate`` stage wrote (plain arrays; no pickle is loaded)."""
    return dataset_from_arrays(load_arrays(path))


@lru_cache(maxsize=4)
def _inputs(path: str) -> dict:
    """``{split: tensor or {name: tensor}, "labels": {split: int64 array}}`` from safetensors."""
    blob: dict = {"labels": {}}
    for name, tensor in load_tensors(path).items():
        split, _, part = name.partition("/")
        if split == "labels":
            blob["labels"][part] = tensor.numpy()
        elif part:
            blob.setdefault(split, {})[part] = tensor
        else:
            blob[split] = tensor
    return blob


def _save_inputs(path: Path, blob: dict) -> None:
    tensors = {f"labels/{split}": torch.as_tensor(np.asarray(labels)) for split, labels in blob["labels"].items()}
    for split, value in blob.items():
        if split != "labels":
            tensors.update({f"{split}/{k}": v for k, v in value.items()} if isinstance(value, dict) else {split: value})
    save_tensors(path, tensors)


@lru_cache(maxsize=2)
def _base_model(model: str, options_json: str, info: DataInfo):
    return create_model(model, info, **json.loads(options_json))


def data_info(ds: Dataset) -> DataInfo:
    return DataInfo(ds.modality, ds.n_classes, ds.input_shape)


def load_adapter(cfg: CleanConfig, dataset_path: str, state_path: str | None):
    """A private copy of the model per task: functional_call swaps parameters in place, so
    threads must never share one module."""
    info = data_info(load_cached_dataset(dataset_path))
    with _LOCK:
        base = _base_model(cfg.model, json.dumps(cfg.model_options, sort_keys=True), info)
        adapter = copy.deepcopy(base)
    adapter.to(worker_device(cfg.device))
    if state_path:
        adapter.model.load_state_dict(torch.load(state_path, weights_only=True, map_location=adapter.placement))
        adapter.model.eval()
    return adapter


def lissa_settings(cfg: CleanConfig, scale: float | None, repeats: int | None = None) -> LissaSettings:
    return LissaSettings(depth=cfg.depth, repeats=repeats or cfg.repeats, batch_size=cfg.batch_size,
                         damping=cfg.damping, scale=scale, tolerance=cfg.tolerance, seed=cfg.seed)


def chunk_size(cfg: CleanConfig, flat: FlatParams) -> int:
    """Rows per per-sample-gradient chunk: ``cfg.chunk_size``, or what ``cfg.memory_budget`` allows for P."""
    return cfg.chunk_size or chunk_rows(flat.size, cfg.memory_budget)


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
    return make_solver(name, adapter, x, y, lissa_settings(cfg, info["scale"]), rank=LOW_RANK, flat=flat)


def _split_tensors(inputs_path: str, split: str):
    blob = _inputs(inputs_path)
    return blob[split], torch.as_tensor(blob["labels"][split])


# ---- stages ----

@_stage_task("load + validate")
def load_and_validate(cfg: CleanConfig, cache: str, key: str) -> str:
    """Read and check every split; nothing else runs if this fails."""
    path = StageCache(cache).path("dataset", key, "npz")
    if _reused(path, "load + validate"):
        return str(path)
    columns = Columns(label=cfg.label_column, id=cfg.id_column, text=cfg.text_column,
                      features=tuple(cfg.feature_columns) if cfg.feature_columns else None,
                      image=cfg.image_column)
    ds = load_dataset({"train": cfg.train, "valid": cfg.valid, "test": cfg.test}, columns)
    info = data_info(ds)
    if ":" in cfg.model:  # a user model that cannot be built fails here, before any other work
        create_model(cfg.model, info, **cfg.model_options)
    save_arrays(path, dataset_arrays(ds))
    get_run_logger().info("load + validate: %s", ", ".join(f"{k} {len(s)} rows" for k, s in ds.splits.items()))
    return str(path)


@_stage_task("prepare inputs")
def prepare_inputs(cfg: CleanConfig, cache: str, key: str, dataset_path: str) -> str:
    """Model-specific inputs for every split (for text-minilm: the frozen layers' output, once)."""
    path = StageCache(cache).path("inputs", key, "safetensors")
    if _reused(path, "prepare inputs"):
        return str(path)
    ds = load_cached_dataset(dataset_path)
    adapter = load_adapter(cfg, dataset_path, None)
    blob = {"labels": {}}
    for name, split in ds.splits.items():
        blob[name] = adapter.prepare(split.values)
        blob["labels"][name] = split.labels
    _save_inputs(path, blob)
    return str(path)


@_stage_task("train model")
def train_model(cfg: CleanConfig, cache: str, key: str, dataset_path: str, inputs_path: str) -> str:
    path = StageCache(cache).path("model", key, "pt")
    if _reused(path, "train model"):
        return str(path)
    adapter = load_adapter(cfg, dataset_path, None)
    x, y = _split_tensors(inputs_path, "train")
    t0 = time.perf_counter()
    adapter.fit(x, y, seed=cfg.seed)
    with atomic_path(path) as tmp:
        torch.save(adapter.model.state_dict(), tmp)
    get_run_logger().info("train model: %s fitted on %d rows in %.1f s", cfg.model, len(y), time.perf_counter() - t0)
    return str(path)


@_stage_task("extract features")
def features_stage(cfg: CleanConfig, cache: str, key: str, dataset_path: str, inputs_path: str,
                   model_path: str) -> str:
    path = StageCache(cache).path("features", key, "npz")
    if _reused(path, "extract features"):
        return str(path)
    adapter = load_adapter(cfg, dataset_path, model_path)
    blob = _inputs(inputs_path)
    save_arrays(path, {"train": extract_features(adapter, blob["train"]), "valid": extract_features(adapter, blob["valid"])})
    return str(path)


@_stage_task("build index")
def build_index(cfg: CleanConfig, cache: str, key: str, features_path: str) -> str:
    path = StageCache(cache).path("index", key, "faiss")
    if _reused(path, "build index"):
        return str(path)
    feats = np.load(features_path)["train"]
    FaissIndex(cfg.index, seed=cfg.seed).build(feats).save(path)
    return str(path)


@_stage_task("kNN candidates")
def search_neighbours(cfg: CleanConfig, cache: str, key: str, features_path: str, index_path: str,
                      errors_path: str) -> str:
    """The k nearest training rows (feature space) of every misclassified validation row."""
    path = StageCache(cache).path("candidates", key, "npy")
    if _reused(path, "kNN candidates"):
        return str(path)
    errors = np.asarray(json.loads(Path(errors_path).read_text())["errors"], dtype=np.int64)
    _, cand = FaissIndex.load(index_path).search(np.load(features_path)["valid"][errors], cfg.k)
    write_npy(path, cand)
    return str(path)


@_stage_task("find errors")
def find_errors(cfg: CleanConfig, cache: str, key: str, dataset_path: str, inputs_path: str,
                model_path: str) -> str:
    """Predict on validation (and test); the misclassified validation rows are the errors.

    Training rows also keep their own loss under the fitted model (``flag_by: loss``)."""
    path = StageCache(cache).path("predictions", key, "json")
    if _reused(path, "find errors"):
        return str(path)
    adapter = load_adapter(cfg, dataset_path, model_path)
    blob = _inputs(inputs_path)
    out = {}
    for split in [s for s in ("valid", "test", "train") if s in blob]:
        ev = evaluate(adapter, blob[split], torch.as_tensor(blob["labels"][split]))
        out[split] = {**ev.summary(), "predictions": ev.predictions.tolist()}
        if split == "train":
            out[split]["losses"] = ev.losses.tolist()
    wrong = np.flatnonzero(np.asarray(out["valid"]["predictions"]) != blob["labels"]["valid"])
    out["errors"] = wrong.tolist()
    write_json(path, out)
    get_run_logger().info("find errors: %d of %d validation rows misclassified (accuracy %.4f)",
                          len(wrong), len(blob["labels"]["valid"]), out["valid"]["accuracy"])
    return str(path)


@_stage_task("resolve solver")
def resolve_solver(cfg: CleanConfig, cache: str, key: str, dataset_path: str, inputs_path: str,
                   model_path: str) -> str:
    """Pick the solver (``auto``: exact where the Hessian fits) and fix the scale, hence the ridge
    λ, once so every worker uses the same; the low-rank solver's eigenpairs are computed here once."""
    path = StageCache(cache).path("solver", key, "json")
    if _reused(path, "resolve solver"):
        return str(path)
    adapter = load_adapter(cfg, dataset_path, model_path)
    x, y = _split_tensors(inputs_path, "train")
    flat = FlatParams.of(adapter)
    name = choose_solver(cfg.solver, flat.size)
    scale, estimated = cfg.scale, False
    if scale is None:
        scale, estimated = auto_scale(adapter, flat, x, y, cfg.seed), True
    sweep = []
    if cfg.scale_sweep and name == "lissa":
        scale, sweep = _sweep_scale(cfg, adapter, flat, x, y, scale)
    settings = lissa_settings(cfg, scale)
    info = {"name": name, "requested": cfg.solver, "scale": scale, "scale_estimated": estimated,
            "damping": cfg.damping, "ridge": settings.ridge, "parameters": flat.size, "scale_sweep": sweep,
            "chunk_size": chunk_size(cfg, flat)}
    if name == "lissa":
        info.update(depth=cfg.depth, repeats=cfg.repeats, batch_size=cfg.batch_size, tolerance=cfg.tolerance)
    if name == "lowrank":
        low = make_solver("lowrank", adapter, x, y, settings, rank=LOW_RANK, flat=flat)
        save_arrays(path.with_suffix(".npz"), {"values": low.eigenvalues.cpu().numpy(),
                                               "vectors": low.eigenvectors.cpu().numpy()})
        info["rank"] = LOW_RANK
    write_json(path, info)
    why = f" ({cfg.solver}: {flat.size:,} parameters)" if cfg.solver == "auto" else ""
    get_run_logger().info("resolve solver: %s%s, scale %.4g%s, ridge λ = %.4g", name, why, scale,
                          " (estimated)" if estimated else "", info["ridge"])
    return str(path)


def _sweep_scale(cfg: CleanConfig, adapter, flat: FlatParams, x, y, scale: float, tries: int = 6):
    """Probe LiSSA (≤ 200 steps, on a few training gradients) at scale, 10×scale, … until it stays
    bounded. Only with ``scale_sweep``: a scale the user gave is otherwise never changed."""
    logger = get_run_logger()
    probe = gradient_matrix(adapter, take(x, torch.arange(min(4, len(y)))), y[:4], flat=flat)
    tried = []
    for _ in range(tries):
        settings = dataclasses.replace(lissa_settings(cfg, scale, repeats=1), depth=min(cfg.depth, 200),
                                       tolerance=None)
        try:
            LissaSolver(adapter, x, y, settings, flat=flat).solve_repeat(probe, 0)
            tried.append({"scale": scale, "diverged": False})
            logger.info("scale sweep: LiSSA stays bounded at scale %.4g", scale)
            return scale, tried
        except LissaDivergenceError:
            tried.append({"scale": scale, "diverged": True})
            logger.warning("scale sweep: LiSSA diverged at scale %.4g; trying %.4g", scale, 10 * scale)
            scale *= 10
    scales = ", ".join(f"{t['scale']:g}" for t in tried)
    raise LissaDivergenceError(f"LiSSA diverged at every scale tried ({scales}); raise --damping or check "
                               "the model for a loss that is not smooth")


@_stage_task("s_test", retries=1, retry_delay_seconds=1)
def s_test_batch(cfg: CleanConfig, cache: str, key: str, dataset_path: str, inputs_path: str,
                 model_path: str, errors_path: str, solver_path: str, batch: int, repeat: int,
                 threads: int) -> str:
    """s_test for one batch of errors and one LiSSA repeat (other solvers: repeat 0 only)."""
    path = StageCache(cache).path("stest", f"{key}-b{batch}-r{repeat}", "npy")
    if path.exists():
        return str(path)
    set_worker_threads(threads)
    _fault_point("s_test")
    adapter = load_adapter(cfg, dataset_path, model_path)
    errors = np.asarray(json.loads(Path(errors_path).read_text())["errors"])
    rows = errors[batch * cfg.tests_per_batch:(batch + 1) * cfg.tests_per_batch]
    xv, yv = _split_tensors(inputs_path, "valid")
    x, y = _split_tensors(inputs_path, "train")
    flat = FlatParams.of(adapter)
    v = gradient_matrix(adapter, take(xv, torch.as_tensor(rows)), yv[rows], chunk_size=chunk_size(cfg, flat),
                        flat=flat)
    solver = stage_solver(cfg, adapter, x, y, solver_path, flat)
    s = solver.solve_repeat(v, repeat) if isinstance(solver, LissaSolver) else solver.solve(v)
    write_npy(path, s.float().cpu().numpy())
    return str(path)


@_stage_task("influence", retries=1, retry_delay_seconds=1)
def influence_part(cfg: CleanConfig, cache: str, key: str, dataset_path: str, inputs_path: str,
                   model_path: str, stest_path: str, candidates_path: str, part: int, parts: int,
                   threads: int) -> str:
    """Scores for the candidates in this part (distinct training rows split across workers)."""
    path = StageCache(cache).path("influence", f"{key}-p{part}of{parts}", "parquet")
    if path.exists():
        return str(path)
    set_worker_threads(threads)
    adapter = load_adapter(cfg, dataset_path, model_path)
    x, y = _split_tensors(inputs_path, "train")
    cand = np.load(candidates_path)
    union = np.unique(cand[cand >= 0])  # an approximate index pads short results with -1
    mine = union[part::parts]
    lists = [row[np.isin(row, mine)] for row in cand]
    s = torch.from_numpy(np.load(stest_path)).to(adapter.dtype)
    res = influence_on_candidates(adapter, x, y, s, lists, chunk_size=chunk_size(cfg, FlatParams.of(adapter)))
    write_parquet(path, pd.DataFrame({"test_pos": res.test_pos, "train_index": res.train_index,
                                      "influence": res.influence}))
    return str(path)


@_stage_task("net harm", retries=1, retry_delay_seconds=1)
def net_harm_stage(cfg: CleanConfig, cache: str, key: str, dataset_path: str, inputs_path: str, model_path: str,
                   solver_path: str, threads: int) -> str:
    """``[n_train, folds]``: every training row's influence on each validation fold's summed loss
    (one s_test per fold, all folds solved together; see fastif_engine.net_harm)."""
    path = StageCache(cache).path("netharm", key, "npy")
    if _reused(path, "net harm"):
        return str(path)
    set_worker_threads(threads)
    adapter = load_adapter(cfg, dataset_path, model_path)
    x, y = _split_tensors(inputs_path, "train")
    xv, yv = _split_tensors(inputs_path, "valid")
    flat = FlatParams.of(adapter)
    solver = stage_solver(cfg, adapter, x, y, solver_path, flat)
    result = net_harm(adapter, x, y, xv, yv, solver, seed=cfg.seed, chunk_size=chunk_size(cfg, flat), flat=flat)
    write_npy(path, result.per_fold)
    return str(path)


@_stage_task("relabel targets")
def relabel_targets(cfg: CleanConfig, cache: str, key: str, dataset_path: str, inputs_path: str,
                    flagged_path: str, threads: int) -> str:
    """The class a model trained without the flagged rows (seed ``cfg.seed``) predicts for every training
    row: what ``fix: relabel`` sets a fixed row's label to (the flags' own labels never vote)."""
    path = StageCache(cache).path("targets", key, "npy")
    if _reused(path, "relabel targets"):
        return str(path)
    set_worker_threads(threads)
    adapter = load_adapter(cfg, dataset_path, None)
    x, y = _split_tensors(inputs_path, "train")
    keep = torch.as_tensor(np.flatnonzero(~np.load(flagged_path)))
    adapter.fit(take(x, keep), y[keep], seed=cfg.seed)
    write_npy(path, evaluate(adapter, x, y).predictions.astype(np.int64))
    return str(path)


@_stage_task("self-influence")
def self_influence_stage(cfg: CleanConfig, cache: str, key: str, dataset_path: str, inputs_path: str,
                         model_path: str, solver_path: str, threads: int) -> str | None:
    """∇L(z)ᵀ(H + λI)⁻¹∇L(z) per training row. Under ``auto`` an indefinite Hessian (the model
    is not at a minimum) skips this second score with a warning instead of failing the run,
    unless it is the score that flags rows (``flag_by: self-influence``)."""
    path = StageCache(cache).path("selfinf", key, "npy")
    if _reused(path, "self-influence"):
        return str(path)
    set_worker_threads(threads)
    adapter = load_adapter(cfg, dataset_path, model_path)
    x, y = _split_tensors(inputs_path, "train")
    flat = FlatParams.of(adapter)
    try:  # one factorisation serves every row; a LiSSA chain per row would not scale
        name = "exact" if flat.size <= EXACT_MAX_PARAMS else "lowrank"
        if name == "lowrank":
            get_run_logger().info("self-influence: rank-%d Hessian over %d parameters (Lanczos)", LOW_RANK, flat.size)
        solver = stage_solver(cfg, adapter, x, y, solver_path, flat, name=name)
        scores = self_influence(adapter, x, y, solver, chunk_size=chunk_size(cfg, flat), flat=flat)
    except (SolverSetupError, LissaDivergenceError) as exc:
        if cfg.self_influence == "on" or cfg.flag_by == "self-influence":
            raise
        get_run_logger().warning("self-influence skipped: %s", exc)
        return None
    write_npy(path, scores)
    return str(path)


@_stage_task("retrain", retries=1, retry_delay_seconds=1)
def retrain_one(cfg: CleanConfig, cache: str, key: str, dataset_path: str, inputs_path: str,
                flagged_path: str, variant: str, seed: int, threads: int, targets_path: str | None = None) -> str:
    path = StageCache(cache).path("retrain", f"{key}-{variant}-s{seed}", "json")
    if path.exists():
        return str(path)
    set_worker_threads(threads)
    adapter = load_adapter(cfg, dataset_path, None)
    blob = _inputs(inputs_path)
    eval_split = "test" if "test" in blob else "valid"
    flagged = np.load(flagged_path)
    result = retrain_and_evaluate(adapter, blob["train"], torch.as_tensor(blob["labels"]["train"]),
                                  blob[eval_split], torch.as_tensor(blob["labels"][eval_split]),
                                  flagged, variant, seed, np.load(targets_path) if targets_path else None)
    write_json(path, {**result, "eval_split": eval_split})
    return str(path)
