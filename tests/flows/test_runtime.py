"""Memory hygiene of the flow's process: a shared budget for thread workers, freed memory returned."""
import ctypes
import subprocess
import sys

import pytest

from fastif_engine.cleaning.stages import s_test_rows
from fastif_engine.cleaning.worker_state import chunk_size, task_budget
from fastif_engine.config import POOL_WORKERS, CleanConfig
from fastif_engine.influence.gradients import chunk_rows


def _config(**kw) -> CleanConfig:
    return CleanConfig(train="t.csv", valid="v.csv", out="o", model="tabular-logreg", **kw)


def test_thread_workers_share_the_memory_budget_and_worker_processes_each_have_it():
    assert task_budget(_config(runner="thread", workers=2, memory_budget=1.0)) == 0.5
    assert task_budget(_config(runner="thread", workers=1, memory_budget=1.0)) == 1.0
    assert task_budget(_config(runner="process", workers=2, memory_budget=1.0)) == 1.0
    # the text model's 1.78M parameters: 46 rows per chunk for one worker, 23 each for two threads
    assert chunk_size(_config(runner="thread", workers=2, memory_budget=1.0), 1_775_234) == 23
    assert chunk_size(_config(runner="process", workers=2, memory_budget=1.0), 1_775_234) == 46
    assert chunk_size(_config(runner="thread", workers=2, chunk_size=5), 1_775_234) == 5
    assert chunk_rows(1_775_234, 1.0) == 46
    # the influence stage's s_test vectors held at once, on top of its chunks: 70 for each of two threads
    assert s_test_rows(_config(runner="thread", workers=2, memory_budget=1.0), 1_775_234) == 70
    assert s_test_rows(_config(runner="process", workers=2, memory_budget=1.0), 31) > 10**6


def test_thread_runner_defaults_to_one_worker_with_the_whole_budget():
    # its tasks take turns inside torch, so a second thread worker would only halve the budget
    assert _config().workers == 1 and task_budget(_config(memory_budget=1.0)) == 1.0
    assert _config(runner="process").workers == _config(runner="dask").workers == POOL_WORKERS
    assert _config(workers=2).workers == 2 and task_budget(_config(workers=2, memory_budget=1.0)) == 0.5


def test_a_deployed_run_takes_one_task_at_a_time_as_its_budget_assumes():
    """A deployment calls the flow with its own runner; Prefect's default thread pool is unbounded."""
    from prefect.task_runners import ThreadPoolTaskRunner

    from flows.clean import clean_dataset

    runner = clean_dataset.task_runner
    assert isinstance(runner, ThreadPoolTaskRunner) and runner._max_workers == _config().workers == 1


# Run in a fresh interpreter: where glibc places the blocks depends on the heap's history.
_FREED_THEN_TRIMMED = """
from fastif_engine.store.memory import return_freed_memory

def rss_mb():
    with open("/proc/self/status") as status:
        return next(int(line.split()[1]) for line in status if line.startswith("VmRSS")) / 1024

blocks = [bytearray(64 * 1024) for _ in range(3200)]  # 200 MB in 64 KB blocks, pages touched
pin = bytearray(64 * 1024)  # allocated last: the heap cannot shrink from its top by itself
del blocks
held = rss_mb()
return_freed_memory()
print(held, rss_mb())
"""


def _glibc() -> bool:
    try:
        return sys.platform.startswith("linux") and hasattr(ctypes.CDLL("libc.so.6"), "malloc_trim")
    except OSError:
        return False


@pytest.mark.skipif(not _glibc(), reason="malloc_trim is glibc's")
def test_freed_memory_goes_back_to_the_operating_system():
    """Blocks below glibc's mmap threshold live in its heap; freed under a live block at the heap's
    top, they stay in the process's RSS until trimmed (what a finished stage's arrays did)."""
    out = subprocess.run([sys.executable, "-c", _FREED_THEN_TRIMMED], capture_output=True, text=True, check=True)
    held, after = map(float, out.stdout.split())
    assert held - after > 150, f"malloc_trim returned {held - after:.0f} of the 200 MB freed"


def test_long_loops_trim_every_so_many_steps(monkeypatch):
    from fastif_engine.store import memory

    seen, trims = [], []
    monkeypatch.setattr(memory, "return_freed_memory", lambda: trims.append(len(seen)))
    for step in memory.trimming(range(7), every=3):
        seen.append(step)
    assert seen == list(range(7)) and trims == [3, 6]  # after the 3rd and the 6th step's work
    monkeypatch.setattr(memory, "TRIM_EVERY", 2)  # the default is read when a loop starts
    trims.clear()
    assert list(memory.trimming(iter("abcde"))) == list("abcde") and len(trims) == 2
