"""Where a stage's work runs: torch threads per worker and the worker's device."""
from __future__ import annotations

import os

import torch


def threads_per_worker(runner: str, workers: int) -> int:
    """Torch threads per task. Thread-runner tasks take turns inside torch.func (see
    ``fastif_engine.influence.gradients.TRANSFORM_LOCK``), so each may use every core; process and Dask
    workers run at once and split the cores."""
    cores = os.cpu_count() or 1
    return cores if runner == "thread" else max(1, cores // max(1, workers))


def set_worker_threads(n: int) -> None:
    """Torch intra-op threads in this process (Dask nannies and pools start with 1 or all)."""
    if torch.get_num_threads() != n:
        torch.set_num_threads(n)


def worker_device(requested: str) -> torch.device:
    """The torch device for this worker: ``cpu``, ``cuda`` (an error without a GPU) or ``auto``.

    With several GPUs visible, a Dask worker takes GPU (worker number mod count) so that
    LocalCluster workers spread over the GPUs; Ray and dask-cuda already restrict each worker
    to one GPU via ``CUDA_VISIBLE_DEVICES``.
    """
    if requested == "cpu" or (requested == "auto" and not torch.cuda.is_available()):
        return torch.device("cpu")
    if not torch.cuda.is_available():
        from ..errors import FastIFError

        raise FastIFError("--device cuda, but torch sees no GPU on this worker (CUDA build and driver needed)")
    count = torch.cuda.device_count()
    try:
        from distributed import get_worker

        name = get_worker().name
        number = int(name) if str(name).isdigit() else sum(map(ord, str(name)))
    except (ImportError, ValueError):
        number = 0  # not inside a Dask worker
    return torch.device("cuda", number % count)


