"""The cleaning pipeline, defined once: which training rows cause the model's validation errors?

load + validate → prepare inputs → train → features → FAISS index → find errors → resolve
solver → s_test (batches × repeats) → kNN candidates → influence + net harm (one s_test per
validation fold, then one pass over the training rows in parts, each row's gradient dotted with the
folds' and its errors' s_tests; without errors, net harm alone) → self-influence (optional) → rank + flag by ``flag_by``
(default ``combined``), only rows whose net harm clears ``flag_evidence`` → relabel targets
(``fix: relabel``) → retrain + verdict (optional) → outputs.

:func:`run_pipeline` runs the stages of :mod:`fastif_engine.cleaning.stages` through a :class:`Runner`:
:class:`LocalRunner` calls them in this process, one after the other (``fastif_engine.clean``);
the Prefect flow (``flows/clean.py``) passes a runner that makes each call a Prefect task and
spreads the parallel stages over its task runner. Scoring, flagging and every record live here,
so both give the same flags for the same inputs.
"""
from __future__ import annotations

import json
import logging
import math
import resource
import time
from contextlib import contextmanager
from pathlib import Path

import numpy as np
import pandas as pd

from ..config import CleanConfig
from ..errors import FastIFError
from ..influence.net_harm import DEFAULT_FOLDS, NetHarm
from ..influence.solvers import lissa_block
from ..report.outputs import (OUTPUTS, flagging_counts, flags_table, history_record,
    influence_table, metrics_record, retrain_summary, write_outputs)
from ..store.files import fingerprint, write_npy, write_npy_rows
from ..store.memory import return_freed_memory
from . import history, stage_cache, stages, worker_state
from .flagging import FLAG_SCORES, harm_scores, rank_and_flag, rank_fusion
from .retrain import VARIANTS, fits_per_task

CACHE_DIR = ".fastif-cache"
log = logging.getLogger("fastif_engine")


class Runner:
    """How the pipeline's stages run. This base runs them here, in order (see :class:`LocalRunner`).

    ``call`` runs one stage; ``map`` runs the independent parts of a parallel stage and returns
    their results in order; ``stage`` times a stage; ``publish`` receives the finished report.
    """

    threads: int | None = None  # torch threads per stage call (None: leave as is)

    def call(self, fn, **kwargs):
        return fn(**kwargs)

    def map(self, fn, calls: list[dict], description: str) -> list:
        results = []
        for done, kwargs in enumerate(calls, start=1):
            results.append(fn(**kwargs))
            log.info("%s: %d/%d done", description, done, len(calls))
        return results

    @contextmanager
    def stage(self, name: str):
        yield

    def stage_done(self, name: str, seconds: float) -> None:
        """Called as each stage ends (the command line prints a line)."""

    def publish(self, cfg: CleanConfig, markdown: str, flags: pd.DataFrame, metrics: dict) -> None:
        """Called once the outputs are written (Prefect: the run's artifacts)."""


class LocalRunner(Runner):
    """Every stage in this process, one after the other, each using all of its cores."""


def _peak_rss_mb() -> float:
    """This process's peak resident memory so far (MB); in-process stages all run in it."""
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024.0


class _Timer:
    """Seconds per stage, and the process's peak RSS when each stage ended (which stage raised it)."""

    def __init__(self, runner: Runner):
        self.runner = runner
        self.timings: dict[str, float] = {}
        self.peak_rss_mb: dict[str, float] = {}

    @contextmanager
    def stage(self, name: str):
        t0 = time.perf_counter()
        with self.runner.stage(name):
            yield
        seconds = time.perf_counter() - t0
        return_freed_memory()
        self.timings[name] = self.timings.get(name, 0.0) + seconds
        self.peak_rss_mb[name] = round(_peak_rss_mb(), 1)
        self.runner.stage_done(name, seconds)


def run_pipeline(cfg: CleanConfig, runner: Runner | None = None) -> dict:
    """Run every stage for ``cfg`` (cached stages are reused), write the outputs into ``cfg.out``
    and return the run's metrics (what ``metrics.json`` holds)."""
    runner = runner or LocalRunner()
    timer = _Timer(runner)
    out = Path(cfg.out)
    cache = str(out / CACHE_DIR)
    threads = runner.threads
    key = stage_cache.stage_keys(cfg)
    common = dict(cfg=cfg, cache=cache)
    call = runner.call

    with timer.stage("load + validate"):
        dataset_path = call(stages.load_and_validate, key=key["data"], **common)
    with timer.stage("prepare inputs"):
        inputs_path = call(stages.prepare_inputs, key=key["prep"], dataset_path=dataset_path, **common)
    with timer.stage("train model"):
        model_path = call(stages.train_model, key=key["model"], dataset_path=dataset_path, inputs_path=inputs_path,
                          **common)
    loaded = dict(dataset_path=dataset_path, inputs_path=inputs_path, model_path=model_path)
    with timer.stage("extract features"):
        features_path = call(stages.features_stage, key=key["model"], **loaded, **common)
    with timer.stage("build index"):
        index_path = call(stages.build_index, key=key["index"], features_path=features_path, **common)
    with timer.stage("find errors"):
        errors_path = call(stages.find_errors, key=key["model"], **loaded, **common)
    predictions = json.loads(Path(errors_path).read_text())
    errors = np.asarray(predictions["errors"], dtype=np.int64)
    ds = worker_state.load_cached_dataset(dataset_path)
    n_train = len(ds.splits["train"])

    with timer.stage("resolve solver"):
        solver_path = call(stages.resolve_solver, key=key["solver"], **loaded, n_vectors=len(errors) + DEFAULT_FOLDS,
                           **common)
    solver_info = json.loads(Path(solver_path).read_text())
    key = stage_cache.stage_keys(cfg, solver_info["name"])
    # not in the cached solver file: the memory budget may change between runs that share it
    solver_info["chunk_size"] = worker_state.chunk_size(cfg, solver_info["parameters"])
    solver_info["s_test_rows_held"] = worker_state.s_test_rows(cfg, solver_info["parameters"])
    if solver_info["name"] == "lissa":
        solver_info["lissa_block"] = lissa_block(solver_info["parameters"], worker_state.task_budget(cfg), cfg.batch_size)
    if len(errors):
        repeats = cfg.repeats if solver_info["name"] == "lissa" else 1
        batches = math.ceil(len(errors) / cfg.tests_per_batch)
        with timer.stage("s_test"):
            paths = runner.map(stages.s_test_batch, [
                dict(key=key["stest"], **loaded, errors_path=errors_path, solver_path=solver_path, batch=b, repeat=r,
                     threads=threads, **common) for b in range(batches) for r in range(repeats)],
                f"s_test for {len(errors)} errors ({batches} batches × {repeats} repeats)")
            stest_path = stage_cache.StageCache(cache).path("stest", f"{key['stest']}-x{repeats}", "npy")
            if not stest_path.exists():  # one block in memory at a time: m × P floats can be GBs
                blocks = (np.mean([np.load(paths[b * repeats + r]) for r in range(repeats)], axis=0)
                          for b in range(batches))
                write_npy_rows(stest_path, blocks, len(errors), solver_info["parameters"])
        with timer.stage("kNN candidates"):
            cand_path = call(stages.search_neighbours, key=key["candidates"], features_path=features_path,
                             index_path=index_path, errors_path=errors_path, **common)
    else:
        stest_path = cand_path = None
        log.info("no misclassified validation examples: nothing to explain%s",
                 ", nothing flagged" if cfg.flag_by in ("combined", "net-harm", "harm") else "")
    with timer.stage("influence + net harm" if len(errors) else "net harm"):
        influence, net, class_prior = _influence_and_net_harm(runner, common, key, loaded, solver_path, stest_path,
                                                              cand_path, n_train)
    n_candidates = int(influence["train_index"].nunique())
    class_prior["classes"] = [str(c) for c in ds.classes]

    with timer.stage("rank + flag"):
        self_inf = None
        if wants_self_influence(cfg, solver_info.get("parameters", 1e9)):
            si_path = call(stages.self_influence_stage, key=key["self-influence"], **loaded, solver_path=solver_path,
                           threads=threads, **common)
            self_inf = np.load(si_path) if si_path else None
        scores = flag_scores(cfg, influence, n_train, net, self_inf, predictions, has_errors=bool(len(errors)))
        by = FLAG_SCORES[cfg.flag_by]
        flagging = {**flagging_counts(cfg, scores, by, net.per_fold.shape[1]), "class_prior": class_prior}
    flagged = scores["flagged"].to_numpy()
    flag_key = fingerprint("retrain", key["prep"], np.flatnonzero(flagged).tolist())
    flagged_path = stage_cache.StageCache(cache).path("flagged", flag_key, "npy")
    if not flagged_path.exists():
        write_npy(flagged_path, flagged)
    targets_path = None
    if cfg.fix == "relabel" and flagged.any():
        with timer.stage("relabel targets"):
            targets_path = call(stages.relabel_targets, key=fingerprint("targets", flag_key, cfg.seed),
                                dataset_path=dataset_path, inputs_path=inputs_path, flagged_path=str(flagged_path),
                                threads=threads, **common)
    flags = flags_table(ds, scores, predictions, np.load(targets_path) if targets_path else None)
    per_error = influence_table(ds, influence, errors)

    retrain = None
    if cfg.retrain:
        with timer.stage("retrain"):
            retrain_key = fingerprint(flag_key, cfg.fix)
            fits = [(v, cfg.seed + s) for s in range(cfg.seeds) for v in VARIANTS]
            per_task = fits_per_task(lambda: worker_state.base_adapter(cfg, dataset_path).concurrent_fits, threads,
                                     len(fits))
            result_paths = runner.map(stages.retrain_fits, [
                dict(key=retrain_key, dataset_path=dataset_path, inputs_path=inputs_path,
                     flagged_path=str(flagged_path), fits=fits[i:i + per_task], threads=threads,
                     targets_path=targets_path, model_path=model_path, **common)
                for i in range(0, len(fits), per_task)], f"retrain {len(VARIANTS)} variants × {cfg.seeds} seeds")
            retrain = retrain_summary(cfg, ds, [json.loads(Path(p).read_text()) for part in result_paths
                                                for p in part])

    metrics = metrics_record(cfg, ds, predictions, errors, flags, n_candidates, solver_info, retrain,
                             timer.timings, flagging)
    metrics["memory"] = {"peak_rss_mb_after_stage": timer.peak_rss_mb,
                         "note": "peak RSS of the pipeline's process when each stage ended; process and Dask/Ray "
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
        markdown = write_outputs(out, cfg, ds, flags, per_error, metrics, predictions)
    history.append(history_path, past, record)  # after the outputs: a failed write records no run
    runner.publish(cfg, markdown, flags, metrics)
    log.info("wrote %s to %s; run recorded in %s", ", ".join(OUTPUTS), out, history_path)
    return metrics


def _influence_and_net_harm(runner: Runner, common: dict, key: dict, loaded: dict, solver_path: str,
                            stest_path: Path | None, cand_path: str | None,
                            n_train: int) -> tuple[pd.DataFrame, NetHarm, dict]:
    """Per-error influence and net harm in one pass over the training rows (split over the workers):
    net harm forms every row's gradient, so the errors' candidates cost dot products only. No
    errors (``stest_path`` None): net harm alone."""
    folds_path = runner.call(stages.fold_s_test_stage, key=key["net harm"], **loaded, solver_path=solver_path,
                             threads=runner.threads, **common)
    parts = max(1, min(common["cfg"].workers, n_train))
    part_paths = runner.map(stages.scores_part, [
        dict(key=key["scores"], **loaded, stest_path=stest_path and str(stest_path), candidates_path=cand_path,
             folds_path=folds_path, part=p, parts=parts, threads=runner.threads, **common) for p in range(parts)],
        f"influence and net harm over {n_train} training rows")
    per_fold = np.empty((n_train, np.load(folds_path, mmap_mode="r").shape[0]))
    for p, path in enumerate(part_paths):
        per_fold[p::parts] = np.load(stage_cache.part_net_harm_path(path))
    return _pairs_table(part_paths), NetHarm(per_fold), json.loads(stage_cache.prior_path(folds_path).read_text())


def _pairs_table(paths: list[str]) -> pd.DataFrame:
    """The parts' (test_pos, train_index, influence) pairs as one table, in (test, row) order."""
    influence = pd.concat([pd.read_parquet(p) for p in paths], ignore_index=True)
    return influence.sort_values(["test_pos", "train_index"], kind="stable").reset_index(drop=True)


def wants_self_influence(cfg: CleanConfig, n_params: int) -> bool:
    """Self-influence is computed when asked for, when it flags, or (``auto``) on small models."""
    return (cfg.self_influence == "on" or cfg.flag_by == "self-influence"
            or (cfg.self_influence == "auto" and n_params <= stages.SELF_INFLUENCE_AUTO_LIMIT))


def flag_scores(cfg: CleanConfig, influence: pd.DataFrame, n_train: int, net: NetHarm,
                self_inf: np.ndarray | None, predictions: dict, *, has_errors: bool) -> pd.DataFrame:
    """Every training row's scores (harm, net harm and its t, loss, self-influence, combined), its
    rank by ``flag_by`` and whether it is flagged (the budget, score > 0, the evidence floor)."""
    scores = harm_scores(influence, n_train)
    scores["self_influence"] = self_inf if self_inf is not None else np.full(n_train, np.nan)
    scores["train_loss"] = np.asarray(predictions["train"]["losses"], dtype=np.float64)
    scores["net_harm"], scores["net_harm_t"] = net.score, net.t
    scores["combined_score"] = rank_fusion(net.score, scores["train_loss"].to_numpy())
    scores = rank_and_flag(scores, cfg.flag_rule(), by=FLAG_SCORES[cfg.flag_by],
                           evidence="net_harm_t" if cfg.flag_evidence > 0 else None, min_evidence=cfg.flag_evidence)
    if not has_errors and cfg.flag_by in ("combined", "net-harm", "harm"):
        scores["flagged"] = False  # no validation error to fix: influence-based scores flag nothing
    return scores


def check_inputs(cfg: CleanConfig) -> None:
    """Validate data, model, device and output folder before any stage runs: bad input fails fast,
    naming what is wrong, and nothing is written."""
    from ..data.tables import load_dataset
    from ..models import BUILTIN_MODELS, ModelLoadError, builtin_options, create_model, data_info
    from .workers import worker_device

    if cfg.runner in ("thread", "process"):
        worker_device(cfg.device)  # local workers: a --device this machine cannot give fails here, before any work
    ds = load_dataset({"train": cfg.train, "valid": cfg.valid, "test": cfg.test}, cfg.columns())
    if len(ds.splits["valid"]) < 2:
        raise FastIFError(f"valid file {cfg.valid}: {len(ds.splits['valid'])} row; net harm (the default flag "
                          "score's evidence) needs at least 2 validation rows")
    info = data_info(ds)
    if cfg.model in BUILTIN_MODELS:
        if cfg.weights == "given":
            raise FastIFError(f"--weights given: model {cfg.model} is built untrained; give a model that comes with "
                              "weights (hf:PATH, module:factory) or let fastif train it (--weights train)")
        if BUILTIN_MODELS[cfg.model] != ds.modality:
            raise ModelLoadError(f"model {cfg.model} needs {BUILTIN_MODELS[cfg.model]} inputs, but the data has "
                                 f"{ds.modality} inputs")
        builtin_options(cfg.model, cfg.model_options)
    if cfg.solver == "exact" or cfg.model not in BUILTIN_MODELS:
        from ..influence.gradients import FlatParams
        from ..influence.solvers import EXACT_MAX_PARAMS

        model = create_model(cfg.model, info, **cfg.model_options)
        n_params = FlatParams.of(model).size
        if cfg.solver == "exact" and n_params > EXACT_MAX_PARAMS:
            raise FastIFError(f"--solver exact: model {cfg.model} differentiates {n_params:,} parameters, more than "
                              f"the exact solver's {EXACT_MAX_PARAMS:,}; use --solver lissa")
    out = Path(cfg.out)
    if out.exists() and not out.is_dir():
        raise FastIFError(f"--out {cfg.out}: exists and is not a folder")
    from .history import load as load_history

    load_history(cfg.history or out / "history.parquet")  # a history that cannot be appended to fails now
