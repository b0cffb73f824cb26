"""Where tasks run: the task runner for ``--runner``, threads per worker, one shared API server."""
from __future__ import annotations

import contextlib
import logging
import os

import torch

log = logging.getLogger("fastif")


def threads_per_worker(runner: str, workers: int) -> int:
    """Torch threads per task. Thread-runner tasks take turns inside torch.func (see
    ``fastif_engine.gradients.TRANSFORM_LOCK``), so each may use every core; process and Dask
    workers run at once and split the cores."""
    cores = os.cpu_count() or 1
    return cores if runner == "thread" else max(1, cores // max(1, workers))


def set_worker_threads(n: int) -> None:
    """Torch intra-op threads in this process (Dask nannies and pools start with 1 or all)."""
    if torch.get_num_threads() != n:
        torch.set_num_threads(n)


def task_runner(runner: str, workers: int, dask_address: str | None = None):
    if runner == "thread":
        from prefect.task_runners import ThreadPoolTaskRunner

        return ThreadPoolTaskRunner(max_workers=workers)
    if runner == "process":
        from prefect.task_runners import ProcessPoolTaskRunner

        return ProcessPoolTaskRunner(max_workers=workers)
    if runner == "dask":
        try:
            from prefect_dask import DaskTaskRunner
        except ImportError:
            from fastif_engine.errors import FastIFError

            raise FastIFError("--runner dask needs prefect-dask: pip install 'fastif[dask]'") from None
        if dask_address:
            return DaskTaskRunner(address=dask_address)
        return DaskTaskRunner(cluster_kwargs={"n_workers": workers, "threads_per_worker": 1,
                                              "processes": True, "dashboard_address": None})
    raise ValueError(f"unknown runner {runner!r}")


@contextlib.contextmanager
def api_server_for(runner: str):
    """Process and Dask workers must share one API server, started before they spawn.

    Without it every worker process boots its own temporary server on the same SQLite file.
    Nothing to do when ``PREFECT_API_URL`` already points at a server, or for threads.
    """
    from prefect.settings import PREFECT_API_URL

    if runner == "thread" or PREFECT_API_URL.value():
        yield
        return
    from prefect.server.api.server import SubprocessASGIServer

    server = SubprocessASGIServer()
    server.start(timeout=int(os.environ.get("PREFECT_SERVER_EPHEMERAL_STARTUP_TIMEOUT_SECONDS", "60")))
    os.environ["PREFECT_API_URL"] = server.api_url
    log.info("started a local Prefect API server for the %s workers at %s", runner, server.api_url)
    try:
        from prefect.settings import temporary_settings

        with temporary_settings(updates={PREFECT_API_URL: server.api_url}):
            yield
    finally:
        from prefect.logging.handlers import APILogHandler

        APILogHandler.flush()  # send the run's last logs while the server is still up
        os.environ.pop("PREFECT_API_URL", None)
        server.stop()
