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


def worker_device(requested: str) -> torch.device:
    """The torch device for this worker: ``cpu``, ``cuda`` (an error without a GPU) or ``auto``.

    With several GPUs visible, a Dask worker takes GPU (worker number mod count) so that
    LocalCluster workers spread over the GPUs; Ray and dask-cuda already restrict each worker
    to one GPU via ``CUDA_VISIBLE_DEVICES``.
    """
    if requested == "cpu" or (requested == "auto" and not torch.cuda.is_available()):
        return torch.device("cpu")
    if not torch.cuda.is_available():
        from fastif_engine.errors import FastIFError

        raise FastIFError("--device cuda, but torch sees no GPU on this worker (CUDA build and driver needed)")
    count = torch.cuda.device_count()
    try:
        from distributed import get_worker

        name = get_worker().name
        number = int(name) if str(name).isdigit() else sum(map(ord, str(name)))
    except (ImportError, ValueError):
        number = 0  # not inside a Dask worker
    return torch.device("cuda", number % count)


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
