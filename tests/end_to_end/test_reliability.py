"""Faults and edge cases through the real flow: crashes while writing, no errors to explain,
a diverging training run."""
import pandas as pd
import pytest
from sklearn.datasets import load_iris

import fastif_engine.report.outputs
from flows.cli import main
from tests.end_to_end.runs import FAST, clean

pytestmark = pytest.mark.slow  # real flow runs: the end-to-end tier (pytest -m "not slow" skips it)


def test_crash_while_writing_keeps_the_previous_outputs(tabular, tmp_path, monkeypatch, capsys):
    out = tmp_path / "out"
    assert clean(tabular, out) == 0
    before = {name: (out / name).read_bytes() for name in fastif_engine.report.outputs.OUTPUTS}

    def disk_full(path, text):
        if str(path).endswith("report.html"):
            raise OSError(28, "No space left on device")
        return original(path, text)

    original = fastif_engine.report.outputs.write_text
    monkeypatch.setattr(fastif_engine.report.outputs, "write_text", disk_full)
    assert clean(tabular, out, "--flag-top", "3") == 1  # other settings: new outputs would differ
    assert "No space left on device" in capsys.readouterr().err
    assert {name: (out / name).read_bytes() for name in fastif_engine.report.outputs.OUTPUTS} == before
    assert not list(out.glob(".fastif-staging-*"))


def test_no_misclassified_validation_rows(tmp_path, capsys):
    """Setosa vs versicolor is separable: nothing to explain, exit 0, and the report says so."""
    x, y = load_iris(return_X_y=True, as_frame=True)
    frame = x.rename(columns=lambda c: c.replace(" ", "_").strip("()")).assign(label=y.values)
    frame = frame[frame["label"] < 2].sample(frac=1.0, random_state=0).reset_index(drop=True)
    frame.iloc[:70].to_parquet(tmp_path / "train.parquet")
    frame.iloc[70:].to_parquet(tmp_path / "valid.parquet")
    out = tmp_path / "out"
    assert main(["clean", "--train", str(tmp_path / "train.parquet"), "--valid", str(tmp_path / "valid.parquet"),
                 "--out", str(out), "--model", "tabular-logreg", "--retrain", "--seeds", "1"]) == 0
    assert "0 of 30 validation rows misclassified" in capsys.readouterr().out
    flags = pd.read_parquet(out / "flags.parquet")
    assert len(flags) == 70 and not flags["flagged"].any() and (flags["harm_score"] == 0).all()
    assert len(pd.read_parquet(out / "influence.parquet")) == 0
    assert "made no mistakes on the validation set" in (out / "report.md").read_text()


def test_diverging_training_is_reported(tabular, tmp_path, capsys):
    assert clean(tabular, tmp_path / "out", "--model-option", "lr=1e30") == 2
    err = capsys.readouterr().err
    assert "training loss became" in err and "lower the learning rate" in err
    assert not (tmp_path / "out" / "flags.parquet").exists()


def test_killed_worker_fails_cleanly_and_the_rerun_resumes(tabular, tmp_path, monkeypatch, capsys):
    """A process-pool worker dies inside s_test: the run fails with one message, and the next
    run reuses every stage before s_test and gives the flags of an uninterrupted run."""
    reference = tmp_path / "reference"
    assert clean(tabular, reference, "--runner", "process") == 0
    out = tmp_path / "out"
    monkeypatch.setenv("FASTIF_KILL_ONCE", f"s_test:{tmp_path / 'killed'}")
    assert clean(tabular, out, "--runner", "process") == 1
    assert "fastif: failed:" in capsys.readouterr().err
    assert (tmp_path / "killed").exists() and not (out / "flags.parquet").exists()
    model = next((out / ".fastif-cache").glob("model-*.pt"))
    trained_at = model.stat().st_mtime_ns
    assert clean(tabular, out, "--runner", "process") == 0
    assert model.stat().st_mtime_ns == trained_at  # resumed: the model was not trained again
    pd.testing.assert_frame_equal(pd.read_parquet(out / "flags.parquet"),
                                  pd.read_parquet(reference / "flags.parquet"))


def test_two_runs_at_once_do_not_interfere(tabular, tmp_path):
    """Two CLI processes at the same time, each with its own embedded Prefect server (random
    ports) and output folder, sharing one PREFECT_HOME as two runs on one machine would."""
    import os
    import subprocess
    import sys

    env = {k: v for k, v in os.environ.items() if not k.startswith("PREFECT_API")}
    env["PREFECT_HOME"] = str(tmp_path / "prefect-home")
    cmd = [sys.executable, "-m", "flows.cli", "clean", "--train", str(tabular["train"]), "--valid",
           str(tabular["valid"]), "--model", "tabular-mlp", *FAST]
    procs = [subprocess.Popen(cmd + ["--out", str(tmp_path / name)], env=env, stdout=subprocess.PIPE,
                              stderr=subprocess.STDOUT, text=True) for name in ("a", "b")]
    outputs = [p.communicate(timeout=600)[0] for p in procs]
    assert [p.returncode for p in procs] == [0, 0], "\n".join(o[-2000:] for o in outputs)
    pd.testing.assert_frame_equal(pd.read_parquet(tmp_path / "a" / "flags.parquet"),
                                  pd.read_parquet(tmp_path / "b" / "flags.parquet"))


def test_killed_dask_worker_is_replaced_and_the_task_rerun(tabular, tmp_path, monkeypatch):
    """On a Dask LocalCluster the nanny restarts a killed worker and the scheduler reruns its task."""
    pytest.importorskip("prefect_dask")
    reference = tmp_path / "reference"
    assert clean(tabular, reference, "--runner", "thread") == 0
    monkeypatch.setenv("FASTIF_KILL_ONCE", f"s_test:{tmp_path / 'killed'}")
    out = tmp_path / "out"
    assert clean(tabular, out, "--runner", "dask", "--workers", "2") == 0
    assert (tmp_path / "killed").exists()
    pd.testing.assert_frame_equal(pd.read_parquet(out / "flags.parquet"),
                                  pd.read_parquet(reference / "flags.parquet"),
                                  rtol=1e-4, atol=1e-5)  # 2 workers: rows scored in other float32 chunks
