"""The cleaning pipeline's stages, as plain functions (``fastif_engine.cleaning.pipeline`` runs them in order;
``flows/`` runs the same functions as Prefect tasks).

Stages hand each other paths, never arrays. Every stage writes its output to the run's stage
cache under a name that contains a content key (file fingerprints + the settings that matter),
atomically; a stage whose output already exists is not recomputed (``stage_cache.StageCache``);
what a stage loads in its worker is in ``worker_state``.
"""
from __future__ import annotations

import contextlib
import json
import logging
import time
from pathlib import Path

import numpy as np
import pandas as pd
import torch

from ..config import CleanConfig
from ..data.batching import chunk_slices, select, take
from ..data.tables import dataset_arrays, load_dataset
from ..errors import LissaDivergenceError, SolverSetupError
from ..influence.api import extract_features
from ..influence.gradients import fit_check, fit_message, gradient_matrix, parameter_summary
from ..influence.hessian import spectrum
from ..influence.knn import FaissIndex
from ..influence.krylov import CG_MAX_ITERATIONS, CG_TOLERANCE, LOW_RANK
from ..influence.net_harm import fold_s_tests
from ..influence.planning import choose_solver, make_solver, plan_solver
from ..influence.scores import influence_and_net_harm, self_influence
from ..influence.solvers import EXACT_MAX_PARAMS, RIDGE_OF_TOP, LissaSolver, auto_scale, sweep_scale
from ..models import create_model, data_info
from ..models.training import evaluate
from ..store.files import (NpyRows, atomic_path, npy_writer, save_arrays, save_tensors, write_json, write_npy,
                           write_parquet)
from .retrain import fit_all, retrain_and_evaluate
from .stage_cache import _cached, _fault_point, log, part_net_harm_path, prior_path, stage
from .workers import worker_device
from .worker_state import (_Work, _inputs, base_adapter, lissa_settings, load_adapter, load_cached_dataset, run_damping,
                           s_test_rows)

# Self-influence needs (H + λI)⁻¹ for every training row: with an explicit Hessian that is one
# factorisation, cheap up to a few thousand parameters; "auto" computes it only then.
SELF_INFLUENCE_AUTO_LIMIT = 4096


# ---- stages ----

@stage("load + validate")
def load_and_validate(cfg: CleanConfig, cache: str, key: str) -> str:
    """Read and check every split; nothing else runs if this fails."""
    path, done = _cached(cache, "dataset", key, "npz", log_as="load + validate")
    if done:
        return str(path)
    ds = load_dataset({"train": cfg.train, "valid": cfg.valid, "test": cfg.test}, cfg.columns())
    info = data_info(ds)
    if ":" in cfg.model:  # a user model that cannot be built fails here, before any other work
        create_model(cfg.model, info, **cfg.model_options)
    save_arrays(path, dataset_arrays(ds))
    log.info("load + validate: %s", ", ".join(f"{k} {len(s)} rows" for k, s in ds.splits.items()))
    return str(path)


@stage("prepare inputs")
def prepare_inputs(cfg: CleanConfig, cache: str, key: str, dataset_path: str) -> str:
    """Model-specific inputs for every split (for text-minilm: the frozen layers' output, once)."""
    path, done = _cached(cache, "inputs", key, "safetensors", log_as="prepare inputs")
    if done:
        return str(path)
    ds = load_cached_dataset(dataset_path)
    adapter = load_adapter(cfg, dataset_path, None)
    on_disk: dict[str, str] = {}
    blob = {name: _prepare_split(adapter, split.values, path, name, on_disk) for name, split in ds.splits.items()}
    # written last: its presence marks the stage done, the row files beside it already complete
    save_tensors(path, {**blob, "labels": {name: split.labels for name, split in ds.splits.items()}},
                 metadata={"rows_on_disk": json.dumps(on_disk)})
    return str(path)


PREPARE_ROWS = 1024  # rows prepared at a time where some input leaves go to disk


def _prepare_split(adapter, values, path: Path, split: str, on_disk: dict[str, str]):
    """A split's inputs; the leaves in ``adapter.rows_on_disk`` are written to an ``.npy`` of their
    own, ``PREPARE_ROWS`` rows at a time (``on_disk`` records the file), the others returned."""
    if not adapter.rows_on_disk or not len(values):
        return adapter.prepare(values)
    kept: dict[str, list] = {}
    with contextlib.ExitStack() as files:
        writers = {}
        for rows in chunk_slices(len(values), PREPARE_ROWS):
            for leaf, tensor in adapter.prepare(values[rows]).items():
                if leaf not in adapter.rows_on_disk:
                    kept.setdefault(leaf, []).append(tensor)
                    continue
                if leaf not in writers:
                    file = path.with_name(f"{path.stem}.{split}.{leaf}.npy")
                    writers[leaf] = files.enter_context(npy_writer(file, len(values), tensor.shape[1:],
                                                                   tensor.numpy().dtype))
                    on_disk[f"{split}/{leaf}"] = file.name
                writers[leaf](tensor.numpy())
    return {leaf: torch.cat(parts) for leaf, parts in kept.items()}


@stage("train model")
def train_model(cfg: CleanConfig, cache: str, key: str, dataset_path: str, inputs_path: str) -> str:
    path, done = _cached(cache, "model", key, "pt", log_as="train model")
    if done:
        return str(path)
    w = _Work.load(cfg, dataset_path, inputs_path, None)
    t0 = time.perf_counter()
    if cfg.weights == "given":  # explain the model as it came; retrains still fit copies
        log.info("train model: %s used with its weights as given (not trained)", cfg.model)
    else:
        w.adapter.fit(w.x, w.y, seed=cfg.seed)
        log.info("train model: %s fitted on %d rows in %.1f s", cfg.model, len(w.y), time.perf_counter() - t0)
    with atomic_path(path) as tmp:
        torch.save(w.adapter.model.state_dict(), tmp)
    return str(path)


@stage("extract features")
def features_stage(cfg: CleanConfig, cache: str, key: str, dataset_path: str, inputs_path: str,
                   model_path: str) -> str:
    path, done = _cached(cache, "features", key, "npz", log_as="extract features")
    if done:
        return str(path)
    adapter = load_adapter(cfg, dataset_path, model_path)
    blob = _inputs(inputs_path)
    save_arrays(path, {split: extract_features(adapter, blob[split]) for split in ("train", "valid")})
    return str(path)


@stage("build index")
def build_index(cfg: CleanConfig, cache: str, key: str, features_path: str) -> str:
    path, done = _cached(cache, "index", key, "faiss", log_as="build index")
    if done:
        return str(path)
    feats = np.load(features_path)["train"]
    FaissIndex(cfg.index, seed=cfg.seed).build(feats).save(path)
    return str(path)


@stage("kNN candidates")
def search_neighbours(cfg: CleanConfig, cache: str, key: str, features_path: str, index_path: str,
                      errors_path: str) -> str:
    """The k nearest training rows (feature space) of every misclassified validation row."""
    path, done = _cached(cache, "candidates", key, "npy", log_as="kNN candidates")
    if done:
        return str(path)
    errors = np.asarray(json.loads(Path(errors_path).read_text())["errors"], dtype=np.int64)
    _, cand = FaissIndex.load(index_path).search(np.load(features_path)["valid"][errors], cfg.k)
    write_npy(path, cand)
    return str(path)


@stage("find errors")
def find_errors(cfg: CleanConfig, cache: str, key: str, dataset_path: str, inputs_path: str,
                model_path: str) -> str:
    """Predict on validation (and test); the misclassified validation rows are the errors.

    Training rows also keep their own loss under the fitted model (``flag_by: loss``)."""
    path, done = _cached(cache, "predictions", key, "json", log_as="find errors")
    if done:
        return str(path)
    w = _Work.load(cfg, dataset_path, inputs_path, model_path)
    blob = _inputs(inputs_path)
    out = {}
    for split in [s for s in ("valid", "test", "train") if s in blob]:
        ev = evaluate(w.adapter, blob[split], torch.as_tensor(blob["labels"][split]))
        out[split] = {**ev.summary(), "predictions": ev.predictions.tolist()}
        if split == "train":
            out[split]["losses"] = ev.losses.tolist()
    fit = out["train"]["fit"] = fit_check(w.adapter, w.x, w.y, flat=w.flat, chunk_size=w.chunk, seed=cfg.seed)
    wrong = np.flatnonzero(np.asarray(out["valid"]["predictions"]) != blob["labels"]["valid"])
    out["errors"] = wrong.tolist()
    write_json(path, out)
    log.info("find errors: %d of %d validation rows misclassified (accuracy %.4f)",
             len(wrong), len(blob["labels"]["valid"]), out["valid"]["accuracy"])
    log.log(logging.INFO if fit["stationary"] else logging.WARNING, "%s", fit_message(fit))
    return str(path)


@stage("resolve solver")
def resolve_solver(cfg: CleanConfig, cache: str, key: str, dataset_path: str, inputs_path: str,
                   model_path: str, n_vectors: int = 16) -> str:
    """Fix the scale and the ridge λ once so every worker uses the same (λ = damping × scale, or by default
    RIDGE_OF_TOP × the top eigenvalue: the spectrum comes first), and pick the solver for ``n_vectors`` vectors
    (``auto``: by predicted cost, see influence.planning.plan_solver). Factors that every solve reuses
    (EK-FAC's, the low-rank eigenpairs) are computed here once and saved beside it."""
    path, done = _cached(cache, "solver", key, "json", log_as="resolve solver")
    if done:
        return str(path)
    w = _Work.load(cfg, dataset_path, inputs_path, model_path)
    choose_solver(cfg.solver)  # checks the name
    scale, estimated = cfg.scale, False
    if scale is None:
        scale, estimated = auto_scale(w.adapter, w.flat, w.x, w.y, cfg.seed), True
    spec = None if cfg.damping is not None else spectrum(w.adapter, w.flat, w.x, w.y, seed=cfg.seed)
    settings, sweep = lissa_settings(cfg, scale, run_damping(cfg, scale, spec)), []
    if cfg.scale_sweep and cfg.solver == "lissa":
        scale, sweep = sweep_scale(w.adapter, w.x, w.y, settings, flat=w.flat)
        for t in sweep:
            log.log(logging.WARNING if t["diverged"] else logging.INFO, "scale sweep: LiSSA %s at "
                    "scale %.4g", "diverged" if t["diverged"] else "stays bounded", t["scale"])
        settings = lissa_settings(cfg, scale, run_damping(cfg, scale, spec))  # the default λ is kept
    plan = plan_solver(cfg.solver, w.adapter, w.x, w.y, ridge=settings.ridge, n_vectors=n_vectors, flat=w.flat,
                       seed=cfg.seed, block=cfg.tests_per_batch)
    name = plan.name
    info = {"name": name, "requested": cfg.solver, "scale": scale, "scale_estimated": estimated,
            "damping": settings.damping, "ridge_rule": "damping × scale" if spec is None else
            f"{RIDGE_OF_TOP:g} × top eigenvalue", "ridge": settings.ridge, "parameters": w.flat.size,
            "differentiated": parameter_summary(list(w.flat.names)), "scale_sweep": sweep, "vectors": n_vectors,
            "plan": plan.as_dict()}
    if name == "lissa":
        info.update(depth=cfg.depth, repeats=cfg.repeats, batch_size=cfg.batch_size, tolerance=cfg.tolerance)
    if name == "lowrank":
        low = make_solver("lowrank", w.adapter, w.x, w.y, settings, rank=LOW_RANK, flat=w.flat, plan=plan)
        save_arrays(path.with_suffix(".npz"), {"values": low.eigenvalues.cpu().numpy(),
                                               "vectors": low.eigenvectors.cpu().numpy()})
        info["rank"] = len(low.eigenvalues)
    if plan.ekfac is not None:
        save_arrays(path.with_suffix(".ekfac.npz"), {k: v.cpu().numpy() for k, v in plan.ekfac.state().items()})
    if name == "cg":
        info.update(tolerance=CG_TOLERANCE, max_iterations=CG_MAX_ITERATIONS)
    if spec is None:
        top = plan.lowrank.eigenvalues[0] if plan.lowrank is not None and len(plan.lowrank.eigenvalues) else None
        spec = spectrum(w.adapter, w.flat, w.x, w.y, seed=cfg.seed, largest=None if top is None else float(top))
    info["spectrum"] = {k: round(v, 6) if isinstance(v, float) else v for k, v in spec.relative(settings.ridge).items()}
    write_json(path, info)
    log.info("resolve solver: %s, scale %.4g%s, ridge λ = %.4g (%s)", plan.reason if cfg.solver == "auto"
             else name, scale, " (estimated)" if estimated else "", info["ridge"], info["ridge_rule"])
    log.info("ridge in the Hessian's spectrum: λ = %.3g × its top eigenvalue (%.4g), %.3g × its mean "
             "(%.4g; trace estimated on %d sampled rows)", info["spectrum"]["ridge_over_largest"], spec.largest,
             info["spectrum"]["ridge_over_mean"], spec.mean, spec.rows)
    if plan.ekfac is not None:
        e = plan.ekfac.describe()
        log.info("EK-FAC: %d Linear weights Kronecker-factored (%.1f%% of the parameters), %d other "
                 "tensors diagonal", len(e["kronecker"]), 100 * e["kronecker_share"], len(e["diagonal"]))
    return str(path)


@stage("s_test")
def s_test_batch(cfg: CleanConfig, cache: str, key: str, dataset_path: str, inputs_path: str,
                 model_path: str, errors_path: str, solver_path: str, batch: int, repeat: int,
                 threads: int) -> str:
    """s_test for one batch of errors and one LiSSA repeat (other solvers: repeat 0 only)."""
    path, done = _cached(cache, "stest", f"{key}-b{batch}-r{repeat}", "npy")
    if done:
        return str(path)
    _fault_point("s_test")
    w = _Work.load(cfg, dataset_path, inputs_path, model_path, threads)
    errors = np.asarray(json.loads(Path(errors_path).read_text())["errors"])
    rows = errors[batch * cfg.tests_per_batch:(batch + 1) * cfg.tests_per_batch]
    xv, yv = w.split("valid")
    v = gradient_matrix(w.adapter, take(xv, torch.as_tensor(rows)), yv[rows], chunk_size=w.chunk, flat=w.flat)
    solver = w.solver(solver_path)
    s = solver.solve_repeat(v, repeat) if isinstance(solver, LissaSolver) else solver.solve(v)
    write_npy(path, s.float().cpu().numpy())
    return str(path)


@stage("net harm s_test")
def fold_s_test_stage(cfg: CleanConfig, cache: str, key: str, dataset_path: str, inputs_path: str,
                      model_path: str, solver_path: str, threads: int) -> str:
    """``[folds, P]``: net harm's s_test of each validation fold, for :func:`scores_part`; the
    class-prior check beside it (``prior_path``)."""
    path, done = _cached(cache, "foldstest", key, "npy", log_as="net harm s_test")
    if done:
        return str(path)
    w = _Work.load(cfg, dataset_path, inputs_path, model_path, threads)
    solved = fold_s_tests(w.adapter, *w.split("valid"), w.solver(solver_path), seed=cfg.seed, chunk_size=w.chunk,
                          flat=w.flat, prior=cfg.net_harm_prior, evidence=cfg.flag_evidence)
    check = solved.prior
    if check is not None:
        log.info("net harm: validation's class mix vs the model's predictions z = %.2f: %s", check.z,
                 "class prior refitted to validation" if solved.refitted else "model's class prior kept")
    write_json(prior_path(path), {"setting": cfg.net_harm_prior, "refitted": solved.refitted,
                                  **(check.as_dict() if check is not None else {})})
    write_npy(path, solved.vectors.float().cpu().numpy())  # last: this file's presence marks the stage done
    return str(path)


@stage("influence + net harm")
def scores_part(cfg: CleanConfig, cache: str, key: str, dataset_path: str, inputs_path: str, model_path: str,
                stest_path: str | None, candidates_path: str | None, folds_path: str, part: int, parts: int,
                threads: int) -> str:
    """Per-error influence and per-fold net harm for this part of the training rows (every
    ``parts``-th row), each row's gradient formed once for both (``scores.influence_and_net_harm``;
    errors beyond the s_test vectors the budget holds beside the folds' are scored after the pass;
    no errors, ``stest_path`` None: net harm alone). The pairs go to the parquet returned; the
    ``[rows, folds]`` net harm beside it (``part_net_harm_path``)."""
    path, done = _cached(cache, "scores", f"{key}-p{part}of{parts}", "parquet")
    if done:
        return str(path)
    w = _Work.load(cfg, dataset_path, inputs_path, model_path, threads)
    if stest_path is None:
        s, lists = torch.zeros(0, w.flat.size), []
    else:  # an approximate index pads short results with -1; the errors' s_tests are read as the pass needs them
        s, lists = NpyRows(stest_path), [row[row >= 0] for row in np.load(candidates_path)]
    res, per_fold = influence_and_net_harm(w.adapter, w.x, w.y, s, lists, torch.as_tensor(np.load(folds_path)),
                                           rows=np.arange(len(w.y))[part::parts], chunk_size=w.chunk, flat=w.flat,
                                           max_vectors=s_test_rows(cfg, w.flat.size))
    write_npy(part_net_harm_path(path), per_fold)  # before the pairs: their file marks the part done
    write_parquet(path, pd.DataFrame({"test_pos": res.test_pos, "train_index": res.train_index,
                                      "influence": res.influence}))
    return str(path)


@stage("relabel targets")
def relabel_targets(cfg: CleanConfig, cache: str, key: str, dataset_path: str, inputs_path: str,
                    flagged_path: str, threads: int) -> str:
    """The class a model trained without the flagged rows (seed ``cfg.seed``) predicts for every training
    row: what ``fix: relabel`` sets a fixed row's label to (the flags' own labels never vote)."""
    path, done = _cached(cache, "targets", key, "npy", log_as="relabel targets")
    if done:
        return str(path)
    w = _Work.load(cfg, dataset_path, inputs_path, None, threads)
    keep = torch.as_tensor(np.flatnonzero(~np.load(flagged_path)))
    w.adapter.fit(select(w.x, keep), w.y[keep], seed=cfg.seed)
    write_npy(path, evaluate(w.adapter, w.x, w.y).predictions.astype(np.int64))
    return str(path)


@stage("self-influence")
def self_influence_stage(cfg: CleanConfig, cache: str, key: str, dataset_path: str, inputs_path: str,
                         model_path: str, solver_path: str, threads: int) -> str | None:
    """∇L(z)ᵀ(H + λI)⁻¹∇L(z) per training row. Under ``auto`` an indefinite Hessian (the model
    is not at a minimum) skips this second score with a warning instead of failing the run,
    unless it is the score that flags rows (``flag_by: self-influence``)."""
    path, done = _cached(cache, "selfinf", key, "npy", log_as="self-influence")
    if done:
        return str(path)
    w = _Work.load(cfg, dataset_path, inputs_path, model_path, threads)
    try:  # one factorisation serves every row; a LiSSA chain per row would not scale
        name = "exact" if w.flat.size <= EXACT_MAX_PARAMS else "lowrank"
        if name == "lowrank":
            log.info("self-influence: rank-%d Hessian over %d parameters (Lanczos)", LOW_RANK, w.flat.size)
        scores = self_influence(w.adapter, w.x, w.y, w.solver(solver_path, name), chunk_size=w.chunk, flat=w.flat)
    except (SolverSetupError, LissaDivergenceError) as exc:
        if cfg.self_influence == "on" or cfg.flag_by == "self-influence":
            raise
        log.warning("self-influence skipped: %s", exc)
        return None
    write_npy(path, scores)
    return str(path)


@stage("retrain")
def retrain_fits(cfg: CleanConfig, cache: str, key: str, dataset_path: str, inputs_path: str,
                 flagged_path: str, fits: list[tuple[str, int]], threads: int | None,
                 targets_path: str | None = None, model_path: str | None = None) -> list[str]:
    """``fits``: (variant, seed) pairs of the retrain, a result file each (in their order), several at once
    where the model allows it (``retrain.fit_all``). ``model_path``: the run's trained model, which is the
    original variant's fit for ``cfg.seed`` (same rows, labels, recipe and seed): evaluated, not refitted."""
    def reused(variant: str, seed: int) -> bool:
        # (given weights were not fitted by the recipe the other variants are: the original is refitted too)
        return model_path is not None and variant == "original" and seed == cfg.seed and cfg.weights == "train"

    def one(variant: str, seed: int, fit_threads: int) -> str:
        path, done = _cached(cache, "retrain", f"{key}-{variant}-s{seed}", "json")
        if done:
            return str(path)
        reuse = reused(variant, seed)
        w = _Work.load(cfg, dataset_path, inputs_path, model_path if reuse else None, fit_threads)
        eval_split = "test" if "test" in _inputs(inputs_path) else "valid"
        result = retrain_and_evaluate(w.adapter, w.x, w.y, *w.split(eval_split), np.load(flagged_path), variant,
                                      seed, np.load(targets_path) if targets_path else None, fitted=reuse)
        write_json(path, {**result, "eval_split": eval_split})
        return str(path)

    concurrent = base_adapter(cfg, dataset_path).concurrent_fits and worker_device(cfg.device).type == "cpu"
    return fit_all(one, fits, concurrent=concurrent, threads=threads or torch.get_num_threads(), first=reused)
