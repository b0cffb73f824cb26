"""Where tasks run: the task runner for ``--runner``, threads per worker, one shared API server."""
from __future__ import annotations

import contextlib
import logging
import os

log = logging.getLogger("fastif")


class _RunLog(logging.Handler):
    """The engine's log records (logger ``fastif_engine``) into the Prefect run's log when in a run;
    outside one (``fastif_engine.clean`` in a process that imported the flows) to the root logger."""

    def emit(self, record: logging.LogRecord) -> None:
        from prefect import get_run_logger
        from prefect.exceptions import MissingContextError

        try:
            logger = get_run_logger()
        except MissingContextError:
            logging.getLogger().handle(record)
            return
        logger.log(record.levelno, record.getMessage())


def route_engine_log() -> None:
    """Send the engine's log lines to the run's log; every process that runs tasks calls this on import."""
    engine = logging.getLogger("fastif_engine")
    if not any(isinstance(h, _RunLog) for h in engine.handlers):
        engine.addHandler(_RunLog())
        engine.setLevel(logging.INFO)
        engine.propagate = False  # Prefect's own handlers print it (once), like any run log line


def task_runner(runner: str, workers: int, address: str | None = None):
    """The Prefect task runner for ``--runner``; ``address`` joins an existing Dask or Ray cluster."""
    if runner == "thread":
        from prefect.task_runners import ThreadPoolTaskRunner

        return ThreadPoolTaskRunner(max_workers=workers)
    if runner == "process":
        from prefect.task_runners import ProcessPoolTaskRunner

        return ProcessPoolTaskRunner(max_workers=workers)
    if runner == "dask":
        from prefect_dask import DaskTaskRunner

        if address:
            return DaskTaskRunner(address=address)
        return DaskTaskRunner(cluster_kwargs={"n_workers": workers, "threads_per_worker": 1,
                                              "processes": True, "dashboard_address": None})
    if runner == "ray":
        from prefect_ray import RayTaskRunner

        # Cluster workers do not inherit this process's environment: hand them the API URL.
        from prefect.settings import PREFECT_API_URL

        url = PREFECT_API_URL.value()
        init = {"runtime_env": {"env_vars": {"PREFECT_API_URL": url}}} if url else {}
        if not address:
            init.update(num_cpus=workers, include_dashboard=False)
        return RayTaskRunner(address=address, init_kwargs=init)
    raise ValueError(f"unknown runner {runner!r}")


RUNNER_EXTRAS = {"dask": ("prefect_dask", "dask"), "ray": ("prefect_ray", "ray")}


def check_runner_installed(runner: str) -> None:
    """A clear error before any work when the runner's optional extra is missing."""
    if runner in RUNNER_EXTRAS:
        module, extra = RUNNER_EXTRAS[runner]
        try:
            __import__(module)
        except ImportError:
            from fastif_engine.errors import FastIFError

            raise FastIFError(f"--runner {runner} needs {module}: pip install 'fastif[{extra}]'") from None


def gpus_for(runner: str):
    """Per-task GPU request while submitting work: one GPU per Ray task when the cluster has GPUs.

    Never requested on a cluster without GPUs (the task would wait forever). Dask workers are
    pinned to a GPU by :func:`worker_device` instead of by resource annotations, which hang on
    clusters whose workers declare no GPU resource.
    """
    if runner == "ray":
        import ray

        if ray.is_initialized() and ray.cluster_resources().get("GPU", 0) > 0:
            from prefect_ray.context import remote_options

            return remote_options(num_gpus=1)
    return contextlib.nullcontext()


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
        from prefect.logging.handlers import APILogWorker

        APILogWorker.drain_all(timeout=5)  # send the run's last logs while the server is still up
        os.environ.pop("PREFECT_API_URL", None)
        server.stop()
