"""The ``clean_dataset`` flow: which training rows cause the model's validation errors?

load + validate → prepare inputs → train → features → FAISS index → find errors → resolve
solver → s_test (batches × repeats, in parallel) → kNN candidates → influence (candidate parts,
in parallel) → net harm (one s_test per validation fold) → self-influence (optional) → rank +
flag by ``flag_by`` (default ``combined``), only rows whose net harm clears ``flag_evidence``
→ relabel targets (``fix: relabel``) → retrain + verdict (optional) → report.
"""
from __future__ import annotations

import json
import math
import time
from contextlib import contextmanager
from pathlib import Path

import numpy as np
import pandas as pd
from prefect import flow, get_run_logger
from prefect.artifacts import create_progress_artifact, update_progress_artifact
from prefect.futures import as_completed

import fastif_engine
from fastif_engine import history
from fastif_engine.memory import return_freed_memory
from fastif_engine.net_harm import DEFAULT_FOLDS, NetHarm
from fastif_engine.ranking import FLAG_SCORES, harm_scores, rank_and_flag, rank_fusion
from fastif_engine.retrain import VARIANTS
from fastif_engine.solvers import lissa_block
from fastif_engine.store import file_fingerprint, fingerprint, write_npy, write_npy_rows

from . import console, tasks
from .config import THREAD_WORKERS, CleanConfig
from .outputs import (OUTPUTS, flagging_counts, flags_table, history_record, influence_table, metrics_record,
                      retrain_summary, write_outputs)
from .runtime import gpus_for, task_runner, threads_per_worker

CACHE_DIR = ".fastif-cache"


def stage_keys(cfg: CleanConfig, solver: str | None = None) -> dict[str, str]:
    """Cache key per stage: the input files' contents, fastif's version, the model's recipe, and the
    settings each stage's output depends on (each key extends the one of the stage it reads).

    ``solver``: the resolved solver, once known; LiSSA's settings then key the solving stages only
    when it is ``lissa`` (``auto`` → exact does not solve again for a new ``--depth``)."""
    from fastif_engine.models import model_recipe

    files = [_safe_fingerprint(p) for p in (cfg.train, cfg.valid, cfg.test)]
    k = {"data": fingerprint("data", fastif_engine.__version__, files, cfg.label_column, cfg.id_column,
                             cfg.text_column, cfg.feature_columns, cfg.image_column)}
    k["prep"] = fingerprint("prep", k["data"], cfg.model, cfg.model_options, model_recipe(cfg.model))
    k["model"] = fingerprint("model", k["prep"], cfg.seed)
    k["index"] = fingerprint("index", k["model"], cfg.index)
    k["candidates"] = fingerprint("cand", k["index"], cfg.k)
    k["solver"] = fingerprint("solver", k["model"], cfg.solver, cfg.damping, cfg.scale, cfg.seed,
                              cfg.scale_sweep and cfg.depth)
    is_lissa = solver in (None, "lissa")
    lissa = (cfg.depth, cfg.batch_size, cfg.tolerance) if is_lissa else ()
    repeats = cfg.repeats if is_lissa else 1  # s_test files are per repeat: more repeats reuse the first
    k["stest"] = fingerprint("stest", k["solver"], *lissa, cfg.tests_per_batch)
    k["influence"] = fingerprint("influence", k["stest"], repeats, k["candidates"])
    prior_gate = cfg.flag_evidence if cfg.net_harm_prior == "auto" else None
    k["net harm"] = fingerprint("netharm", k["solver"], *lissa, repeats, DEFAULT_FOLDS, cfg.net_harm_prior, prior_gate)
    k["self-influence"] = fingerprint("selfinf", k["solver"])
    return k


def _safe_fingerprint(location: str | None) -> str | None:
    """Content hash, or a marker for a file that cannot be read (validation then says why)."""
    if location is None:
        return None
    try:
        return file_fingerprint(location)
    except Exception:
        return f"unreadable:{location}"


def _peak_rss_mb() -> float:
    """This process's peak resident memory so far (MB); thread-runner stages all run in it."""
    import resource

    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024.0


class _Timer:
    """Seconds per stage, and the process's peak RSS when each stage ended (which stage raised it)."""

    def __init__(self):
        self.timings: dict[str, float] = {}
        self.peak_rss_mb: dict[str, float] = {}

    @contextmanager
    def stage(self, name: str):
        t0 = time.perf_counter()
        yield
        seconds = time.perf_counter() - t0
        return_freed_memory()
        self.timings[name] = self.timings.get(name, 0.0) + seconds
        self.peak_rss_mb[name] = round(_peak_rss_mb(), 1)
        console.stage_done(name, seconds)


def _progress(futures, description: str):
    """Wait for ``futures``, logging and updating a Prefect progress artifact as each finishes."""
    logger = get_run_logger()
    total = len(futures)
    artifact = create_progress_artifact(progress=0.0, description=description)
    results = {}
    with console.progress_bar(description, total) as advance:
        for done, fut in enumerate(as_completed(futures), start=1):
            results[fut] = fut.result()
            update_progress_artifact(artifact_id=artifact, progress=100.0 * done / total)
            logger.info("%s: %d/%d done", description, done, total)
            advance()
    return [results[f] for f in futures]


# A deployment calls the flow itself, with this runner (``run_clean`` replaces it with ``--runner``'s):
# the thread runner's default workers, as each task's budget assumes (tasks.task_budget), where
# Prefect's default thread pool, unbounded, would run every s_test batch at once.
@flow(name="clean_dataset", task_runner=task_runner("thread", THREAD_WORKERS))
def clean_dataset(config: CleanConfig) -> dict:
    """Flag the training rows that harm the model's validation errors; see DESIGN.md's contract."""
    cfg = config
    logger = get_run_logger()
    timer = _Timer()
    out = Path(cfg.out)
    cache = str(out / CACHE_DIR)
    threads = threads_per_worker(cfg.runner, cfg.workers)
    _warn_if_runner_ignored(cfg.runner)

    key = stage_keys(cfg)
    common = dict(cfg=cfg, cache=cache)

    with timer.stage("load + validate"):
        dataset_path = tasks.load_and_validate(key=key["data"], **common)
    with timer.stage("prepare inputs"):
        inputs_path = tasks.prepare_inputs(key=key["prep"], dataset_path=dataset_path, **common)
    with timer.stage("train model"):
        model_path = tasks.train_model(key=key["model"], dataset_path=dataset_path, inputs_path=inputs_path, **common)
    loaded = dict(dataset_path=dataset_path, inputs_path=inputs_path, model_path=model_path)
    with timer.stage("extract features"):
        features_path = tasks.features_stage(key=key["model"], **loaded, **common)
    with timer.stage("build index"):
        index_path = tasks.build_index(key=key["index"], features_path=features_path, **common)
    with timer.stage("find errors"):
        errors_path = tasks.find_errors(key=key["model"], **loaded, **common)
    predictions = json.loads(Path(errors_path).read_text())
    errors = np.asarray(predictions["errors"], dtype=np.int64)
    ds = tasks.load_cached_dataset(dataset_path)
    n_train = len(ds.splits["train"])

    influence = pd.DataFrame({"test_pos": np.zeros(0, np.int64), "train_index": np.zeros(0, np.int64),
                              "influence": np.zeros(0)})
    n_candidates = 0
    with timer.stage("resolve solver"):
        solver_path = tasks.resolve_solver(key=key["solver"], **loaded, n_vectors=len(errors) + DEFAULT_FOLDS,
                                           **common)
    solver_info = json.loads(Path(solver_path).read_text())
    key = stage_keys(cfg, solver_info["name"])
    # not in the cached solver file: the memory budget may change between runs that share it
    solver_info["chunk_size"] = tasks.chunk_size(cfg, solver_info["parameters"])
    solver_info["s_test_rows_held"] = tasks.s_test_rows(cfg, solver_info["parameters"])
    if solver_info["name"] == "lissa":
        solver_info["lissa_block"] = lissa_block(solver_info["parameters"], tasks.task_budget(cfg), cfg.batch_size)
    if len(errors):
        repeats = cfg.repeats if solver_info["name"] == "lissa" else 1
        batches = math.ceil(len(errors) / cfg.tests_per_batch)
        with timer.stage("s_test"):
            with gpus_for(cfg.runner):
                futures = [tasks.s_test_batch.submit(key=key["stest"], **loaded, errors_path=errors_path,
                                                     solver_path=solver_path, batch=b, repeat=r, threads=threads,
                                                     **common)
                           for b in range(batches) for r in range(repeats)]
            paths = _progress(futures, f"s_test for {len(errors)} errors ({batches} batches × {repeats} repeats)")
            stest_path = tasks.StageCache(cache).path("stest", f"{key['stest']}-x{repeats}", "npy")
            if not stest_path.exists():  # one block in memory at a time: m × P floats can be GBs
                blocks = (np.mean([np.load(paths[b * repeats + r]) for r in range(repeats)], axis=0)
                          for b in range(batches))
                write_npy_rows(stest_path, blocks, len(errors), solver_info["parameters"])
        with timer.stage("kNN candidates"):
            cand_path = tasks.search_neighbours(key=key["candidates"], features_path=features_path,
                                                index_path=index_path, errors_path=errors_path, **common)
            cand = np.load(cand_path)
        with timer.stage("influence"):
            n_distinct = len(np.unique(cand[cand >= 0]))
            parts = max(1, min(cfg.workers, n_distinct))
            with gpus_for(cfg.runner):
                futures = [tasks.influence_part.submit(key=key["influence"], **loaded, stest_path=str(stest_path),
                                                       candidates_path=str(cand_path), part=p, parts=parts,
                                                       threads=threads, **common) for p in range(parts)]
            part_paths = _progress(futures, f"influence over {n_distinct} distinct candidates")
            influence = pd.concat([pd.read_parquet(p) for p in part_paths], ignore_index=True)
            influence = influence.sort_values(["test_pos", "train_index"], kind="stable").reset_index(drop=True)
            n_candidates = int(influence["train_index"].nunique())
    else:
        logger.info("no misclassified validation examples: nothing to explain%s",
                    ", nothing flagged" if cfg.flag_by in ("combined", "net-harm", "harm") else "")
    with timer.stage("net harm"):
        net_path = tasks.net_harm_stage(key=key["net harm"], **loaded, solver_path=solver_path, threads=threads,
                                        **common)
        net = NetHarm(np.load(net_path))
        class_prior = {**json.loads(tasks.prior_path(net_path).read_text()), "classes": [str(c) for c in ds.classes]}

    with timer.stage("rank + flag"):
        self_inf = None
        want_self = (cfg.self_influence == "on" or cfg.flag_by == "self-influence"
                     or (cfg.self_influence == "auto"
                         and solver_info.get("parameters", 1e9) <= tasks.SELF_INFLUENCE_AUTO_LIMIT))
        if want_self:
            si_path = tasks.self_influence_stage(key=key["self-influence"], **loaded, solver_path=solver_path,
                                                 threads=threads, **common)
            self_inf = np.load(si_path) if si_path else None
        scores = harm_scores(influence, n_train)
        scores["self_influence"] = self_inf if self_inf is not None else np.full(n_train, np.nan)
        scores["train_loss"] = np.asarray(predictions["train"]["losses"], dtype=np.float64)
        scores["net_harm"], scores["net_harm_t"] = net.score, net.t
        scores["combined_score"] = rank_fusion(net.score, scores["train_loss"].to_numpy())
        by = FLAG_SCORES[cfg.flag_by]
        scores = rank_and_flag(scores, cfg.flag_rule(), by=by, evidence="net_harm_t" if cfg.flag_evidence > 0 else None,
                               min_evidence=cfg.flag_evidence)
        if not len(errors) and cfg.flag_by in ("combined", "net-harm", "harm"):
            scores["flagged"] = False  # no validation error to fix: influence-based scores flag nothing
        flagging = {**flagging_counts(cfg, scores, by, net.per_fold.shape[1]), "class_prior": class_prior}
    flagged = scores["flagged"].to_numpy()
    flag_key = fingerprint("retrain", key["prep"], np.flatnonzero(flagged).tolist())
    flagged_path = tasks.StageCache(cache).path("flagged", flag_key, "npy")
    if not flagged_path.exists():
        write_npy(flagged_path, flagged)
    targets_path = None
    if cfg.fix == "relabel" and flagged.any():
        with timer.stage("relabel targets"):
            targets_path = tasks.relabel_targets(key=fingerprint("targets", flag_key, cfg.seed),
                                                 dataset_path=dataset_path, inputs_path=inputs_path,
                                                 flagged_path=str(flagged_path), threads=threads, **common)
    flags = flags_table(ds, scores, predictions, np.load(targets_path) if targets_path else None)
    per_error = influence_table(ds, influence, errors)

    retrain = None
    if cfg.retrain:
        with timer.stage("retrain"):
            retrain_key = fingerprint(flag_key, cfg.fix)
            with gpus_for(cfg.runner):
                futures = [tasks.retrain_one.submit(key=retrain_key, dataset_path=dataset_path,
                                                    inputs_path=inputs_path, flagged_path=str(flagged_path),
                                                    variant=v, seed=cfg.seed + s, threads=threads,
                                                    targets_path=targets_path, model_path=model_path, **common)
                           for s in range(cfg.seeds) for v in VARIANTS]
            results = [json.loads(Path(p).read_text())
                       for p in _progress(futures, f"retrain {len(VARIANTS)} variants × {cfg.seeds} seeds")]
            retrain = retrain_summary(cfg, ds, results)

    metrics = metrics_record(cfg, ds, predictions, errors, flags, n_candidates, solver_info, retrain,
                             timer.timings, flagging)
    metrics["memory"] = {"peak_rss_mb_after_stage": timer.peak_rss_mb,
                         "note": "peak RSS of the flow's process when each stage ended; process and Dask/Ray "
                                 "workers are not counted"}
    history_path = Path(cfg.history) if cfg.history else out / "history.parquet"
    past = history.load(history_path)
    record = history_record(cfg, key["data"], metrics, flags)
    metrics["history"] = {"path": str(history_path), "runs_before": len(past),
                          "changes": history.changes(past, record["flagged_ids"]),
                          "trend": [{k: (None if isinstance(v, float) and math.isnan(v) else v)
                                     for k, v in r.items() if k != "flagged_ids"}
                                    for r in past.tail(9).to_dict("records") + [record]]}
    with timer.stage("report"):
        write_outputs(out, cfg, ds, flags, per_error, metrics, predictions)
    history.append(history_path, past, record)  # after the outputs: a failed write records no run
    logger.info("wrote %s to %s; run recorded in %s", ", ".join(OUTPUTS), out, history_path)
    return metrics


def _warn_if_runner_ignored(runner: str) -> None:
    """A deployment calls the flow directly, with its default (one-thread) runner: say so."""
    from prefect.context import FlowRunContext

    ctx = FlowRunContext.get()
    active = type(ctx.task_runner).__name__ if ctx and ctx.task_runner else ""
    expected = {"thread": "ThreadPool", "process": "ProcessPool", "dask": "Dask", "ray": "Ray"}[runner]
    if expected not in active:
        get_run_logger().warning("config asks for runner %r but this run uses %s (a deployment runs the flow "
                                 "directly); use `fastif clean --runner %s` to get it", runner, active, runner)


def run_clean(cfg: CleanConfig) -> dict:
    """Run the flow with the task runner ``cfg.runner`` asks for."""
    runner = task_runner(cfg.runner, cfg.workers, cfg.dask_address or cfg.ray_address)
    return clean_dataset.with_options(task_runner=runner)(cfg)
