"""The pipeline's stages (``fastif_engine.cleaning.stages``) as Prefect tasks: the same functions, with
Prefect's retries where a worker may die mid-stage. Nothing is computed here."""
from __future__ import annotations

from prefect import task
from prefect.cache_policies import NO_CACHE

from fastif_engine.cleaning import stages

from .runtime import route_engine_log

route_engine_log()  # pool and Dask workers import this module: their stages log to the run too

# stages whose parts run on pool, Dask or Ray workers, where a lost worker is retried once
RETRIED = ("s_test", "net harm s_test", "influence + net harm", "retrain")
STAGES = (stages.load_and_validate, stages.prepare_inputs, stages.train_model, stages.features_stage,
          stages.build_index, stages.find_errors, stages.resolve_solver, stages.s_test_batch, stages.search_neighbours,
          stages.fold_s_test_stage, stages.scores_part,
          stages.relabel_targets, stages.self_influence_stage, stages.retrain_fits)


def as_task(fn):
    """``fn`` (a pipeline stage) as a Prefect task named after its stage; the stage cache, not
    Prefect's, decides what is reused."""
    retries = dict(retries=1, retry_delay_seconds=1) if fn.stage_name in RETRIED else {}
    return task(name=fn.stage_name, cache_policy=NO_CACHE, **retries)(fn)


TASKS = {fn.__name__: as_task(fn) for fn in STAGES}
