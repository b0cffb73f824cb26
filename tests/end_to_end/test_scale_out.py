"""Every runner gives the thread runner's flags: process pool, Dask (its own LocalCluster or an
existing one by address), Ray; and the command line starts its own API server for them."""
import os
import subprocess
import sys
from pathlib import Path

import pandas as pd
import pytest
import torch

from flows.cli import main
from fastif_engine.cleaning.workers import worker_device
from tests.end_to_end.runs import FAST, clean

pytestmark = pytest.mark.slow  # real flow runs: the end-to-end tier (pytest -m "not slow" skips it)


@pytest.fixture(scope="module")
def reference(tabular, tmp_path_factory):
    out = tmp_path_factory.mktemp("thread") / "out"  # two thread workers taking turns inside torch
    assert clean(tabular, out, "--runner", "thread", "--workers", "2") == 0
    return pd.read_parquet(out / "flags.parquet")


def same_flags(out: Path, reference: pd.DataFrame) -> None:
    pd.testing.assert_frame_equal(pd.read_parquet(out / "flags.parquet"), reference)


def test_process_runner(tabular, reference, tmp_path):
    assert clean(tabular, tmp_path, "--runner", "process") == 0
    same_flags(tmp_path, reference)


def test_dask_local_cluster(tabular, reference, tmp_path):
    """fastif starts a real Dask LocalCluster (2 worker processes) for the s_test, influence and retrain tasks."""
    pytest.importorskip("prefect_dask")
    assert clean(tabular, tmp_path, "--runner", "dask", "--workers", "2") == 0
    same_flags(tmp_path, reference)


def test_existing_dask_cluster_by_address(tabular, reference, tmp_path, monkeypatch):
    """An operator's cluster: scheduler and 2 workers started first, fastif given only its address."""
    pytest.importorskip("prefect_dask")
    from distributed import LocalCluster
    from prefect.settings import PREFECT_API_URL

    monkeypatch.setenv("PREFECT_API_URL", PREFECT_API_URL.value())  # what an operator exports on workers
    with LocalCluster(n_workers=2, threads_per_worker=1, processes=True, dashboard_address=None) as cluster:
        assert clean(tabular, tmp_path, "--runner", "dask", "--dask-address", cluster.scheduler_address) == 0
    same_flags(tmp_path, reference)


def test_ray_runner(tabular, reference, tmp_path):
    pytest.importorskip("prefect_ray")
    assert clean(tabular, tmp_path, "--runner", "ray", "--workers", "2") == 0
    same_flags(tmp_path, reference)


def test_command_line_starts_one_api_server_for_process_workers(tabular, reference, tmp_path):
    """Outside any test harness: `fastif clean --runner process` starts, uses and stops its own server."""
    env = {k: v for k, v in os.environ.items() if not k.startswith("PREFECT_")}
    env["PREFECT_HOME"] = str(tmp_path / "prefect-home")
    fastif = Path(sys.executable).parent / "fastif"
    cmd = [str(fastif), "--verbose", "clean", "--train", str(tabular["train"]), "--valid", str(tabular["valid"]),
           "--test", str(tabular["test"]), "--out", str(tmp_path / "out"), "--model", "tabular-mlp", *FAST,
           "--runner", "process"]  # --verbose: Prefect's INFO lines (the server's start) on the console
    proc = subprocess.run(cmd, env=env, capture_output=True, text=True, timeout=600)
    assert proc.returncode == 0, proc.stdout[-2000:] + proc.stderr[-3000:]
    log = proc.stderr + proc.stdout
    assert log.count("Starting temporary server") == 1, log  # one server, not one per worker process
    assert "Error logging to API" not in log
    same_flags(tmp_path / "out", reference)


@pytest.mark.skipif(torch.cuda.is_available(), reason="checks the no-GPU message")
def test_cuda_without_a_gpu_is_a_clear_error(tabular, tmp_path, capsys):
    assert worker_device("auto") == torch.device("cpu")
    assert clean(tabular, tmp_path / "out", "--device", "cuda") == 2
    err = capsys.readouterr().err
    assert "--device cuda" in err and "no GPU" in err and "Traceback" not in err
    assert not (tmp_path / "out").exists()


def test_missing_runner_extra_is_named(tabular, tmp_path, capsys, monkeypatch):
    monkeypatch.setitem(sys.modules, "prefect_ray", None)  # as if the ray extra were not installed
    assert main(["clean", "--train", str(tabular["train"]), "--valid", str(tabular["valid"]), "--out",
                 str(tmp_path / "out"), "--model", "tabular-mlp", "--runner", "ray"]) == 2
    assert "pip install 'fastif[ray]'" in capsys.readouterr().err
