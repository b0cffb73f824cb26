"""The ``clean_dataset`` flow: fastif's pipeline (``fastif_engine.cleaning.pipeline``) run by Prefect.

Every stage is a Prefect task (``flows/tasks.py``); the parallel ones (s_test batches × repeats,
influence + net harm parts, retrain variants × seeds) are submitted to the flow's task runner at once.
What this module adds is orchestration only: the task runner, progress artifacts, the report
and flags as Prefect artifacts, and the engine's log lines in the run's log.
"""
from __future__ import annotations

import json

from prefect import flow, get_run_logger
from prefect.artifacts import create_markdown_artifact, create_progress_artifact, create_table_artifact, \
    update_progress_artifact
from prefect.futures import as_completed

from fastif_engine.cleaning.pipeline import Runner, run_pipeline
from fastif_engine.cleaning.workers import threads_per_worker
from fastif_engine.config import THREAD_WORKERS, CleanConfig

from . import console
from .runtime import gpus_for, task_runner
from .tasks import TASKS


class PrefectRunner(Runner):
    """Each stage call is a Prefect task; parallel stages are submitted together and awaited with a
    progress artifact and bar."""

    def __init__(self, cfg: CleanConfig):
        self.cfg = cfg
        self.threads = threads_per_worker(cfg.runner, cfg.workers)

    def call(self, fn, **kwargs):
        return TASKS[fn.__name__](**kwargs)

    def map(self, fn, calls: list[dict], description: str) -> list:
        with gpus_for(self.cfg.runner):
            futures = [TASKS[fn.__name__].submit(**kwargs) for kwargs in calls]
        logger = get_run_logger()
        artifact = create_progress_artifact(progress=0.0, description=description)
        results = {}
        with console.progress_bar(description, len(futures)) as advance:
            for done, fut in enumerate(as_completed(futures), start=1):
                results[fut] = fut.result()
                update_progress_artifact(artifact_id=artifact, progress=100.0 * done / len(futures))
                logger.info("%s: %d/%d done", description, done, len(futures))
                advance()
        return [results[f] for f in futures]

    def stage_done(self, name: str, seconds: float) -> None:
        console.stage_done(name, seconds)

    def publish(self, cfg: CleanConfig, markdown: str, flags, metrics: dict) -> None:
        # Prefect's UI cannot see local PNGs: the artifact copy drops image references
        text = "\n".join(line for line in markdown.splitlines() if not line.startswith("!["))
        create_markdown_artifact(markdown=text, key="fastif-report", description=f"fastif cleaning report for {cfg.train}")
        top = flags[flags["flagged"]].sort_values("rank").head(50)
        create_table_artifact(table=json.loads(top.dropna(axis="columns", how="all").to_json(orient="records")),
                              key="fastif-flags", description=f"top flagged training rows, by {metrics['flag_by']} "
                                                              "(positive harm = harmful)")
        create_table_artifact(table=metrics["history"]["trend"], key="fastif-history",
                              description="cleaning runs recorded in " + metrics["history"]["path"] + " (latest last)")


# A deployment calls the flow itself, with this runner (``run_clean`` replaces it with ``--runner``'s):
# the thread runner's default workers, as each task's budget assumes (worker_state.task_budget), where
# Prefect's default thread pool, unbounded, would run every s_test batch at once.
@flow(name="clean_dataset", task_runner=task_runner("thread", THREAD_WORKERS))
def clean_dataset(config: CleanConfig) -> dict:
    """Flag the training rows that harm the model's validation errors (see fastif_engine.cleaning.pipeline)."""
    _warn_if_runner_ignored(config.runner)
    return run_pipeline(config, PrefectRunner(config))


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
