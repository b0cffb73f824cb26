"""Faults and edge cases through the real flow: crashes while writing, no errors to explain,
a diverging training run."""
import numpy as np
import pandas as pd
import pytest
from sklearn.datasets import load_iris

import flows.clean
from flows.cli import main
from tests.test_flow import FAST, clean, prefect_server, tabular  # noqa: F401  (shared fixtures)


def test_crash_while_writing_keeps_the_previous_outputs(tabular, tmp_path, monkeypatch, capsys):
    out = tmp_path / "out"
    assert clean(tabular, out) == 0
    before = {name: (out / name).read_bytes() for name in flows.clean.OUTPUTS}

    def disk_full(path, text):
        if str(path).endswith("report.html"):
            raise OSError(28, "No space left on device")
        return original(path, text)

    original = flows.clean.write_text
    monkeypatch.setattr(flows.clean, "write_text", disk_full)
    assert clean(tabular, out, "--flag-top", "3") == 1  # other settings: new outputs would differ
    assert "No space left on device" in capsys.readouterr().err
    assert {name: (out / name).read_bytes() for name in flows.clean.OUTPUTS} == before
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
