"""Bad input through the command line: exit 2, one message naming what is wrong, no traceback,
nothing written. (The loader's messages are checked in detail in test_data.py.)"""
import numpy as np
import pandas as pd
import pytest

from flows.cli import main


def table(n=20, seed=0):
    rng = np.random.default_rng(seed)
    return pd.DataFrame({"id": np.arange(n), "a": rng.normal(size=n), "b": rng.normal(size=n),
                         "label": np.where(np.arange(n) % 2, "yes", "no")})


def images(sizes):
    return pd.DataFrame({"image": [np.zeros(s * s, dtype=np.uint8).tolist() for s in sizes],
                         "label": [i % 2 for i in range(len(sizes))]})


def _corrupt(tmp_path):
    (tmp_path / "train.parquet").write_bytes(b"PAR1 not really parquet")
    table().to_parquet(tmp_path / "valid.parquet")
    return []


def _write(train, valid, extra=()):
    def make(tmp_path):
        train.to_parquet(tmp_path / "train.parquet")
        valid.to_parquet(tmp_path / "valid.parquet")
        return list(extra)
    return make


def _missing_valid(tmp_path):
    table().to_parquet(tmp_path / "train.parquet")
    return []  # valid.parquet never written


def _foreign_history(tmp_path):
    _write(table(), table())(tmp_path)
    return ["--history", str(tmp_path / "valid.parquet")]  # a parquet file, but not a run history


def _mutate(frame, fn):
    frame = frame.copy()
    fn(frame)
    return frame


def _set(col, rows, value):
    def fn(frame):
        if isinstance(value, str):
            frame[col] = frame[col].astype(str)  # a text column, as a spreadsheet export would give
        frame.loc[rows, col] = value
    return fn


CASES = {
    "corrupt file": (_corrupt, ["train file", "train.parquet", "cannot be read"]),
    "missing file": (_missing_valid, ["valid file", "valid.parquet", "not found"]),
    "missing label column": (_write(table().drop(columns="label"), table()), ["missing column 'label'"]),
    "missing feature column": (_write(table(), table().drop(columns="b")), ["valid file", "missing column 'b'"]),
    "text in numeric column": (_write(_mutate(table(), _set("a", [4], "n/a")), table()),
                               ["column 'a'", "not numeric", "rows 4"]),
    "nan and inf": (_write(_mutate(table(), _set("b", [2, 9], np.inf)), table()),
                    ["column 'b'", "NaN or infinite", "rows 2, 9"]),
    "missing labels": (_write(_mutate(table(), _set("label", [7], None)), table()), ["'label' is empty", "rows 7"]),
    "unseen label": (_write(table(), _mutate(table(), _set("label", [3], "maybe"))), ["'maybe'", "rows 3"]),
    "empty split": (_write(table(), table().iloc[:0]), ["valid file", "has no rows"]),
    "one validation row": (_write(table(), table().iloc[:1]), ["valid file", "1 row", "at least 2 validation rows"]),
    "duplicate ids": (_write(_mutate(table(), _set("id", [5], 1)), table()), ["duplicate ids", "rows 1, 5"]),
    "mixed image sizes": (_write(images([8, 8, 6, 8]), images([8, 8])), ["inconsistent size", "rows 2"]),
    "named columns absent": (_write(table(), table(), ["--feature-columns", "a,zz"]), ["missing column 'zz'"]),
    "model not importable": (_write(table(), table(), ["--model", "nowhere.mod:make"]),
                             ["cannot import module 'nowhere.mod'"]),
    "model raises": (_write(images([8, 8]), images([8, 8]), ["--model", "examples.custom_model.softplus_mlp:make_model"]),
                     ["the factory raised ValueError"]),
    "wrong model for the data": (_write(table(), table(), ["--model", "image-cnn"]),
                                 ["image-cnn needs image inputs"]),
    "invalid setting": (_write(table(), table(), ["--k", "0"]), ["'k'", "greater than or equal to 1"]),
    "negative evidence floor": (_write(table(), table(), ["--flag-evidence", "-1"]),
                                ["'flag_evidence'", "greater than or equal to 0"]),
    "not a run history": (_foreign_history, ["history file", "not a fastif run history"]),
    "conflicting settings": (_write(table(), table(), ["--flag-by", "self-influence", "--self-influence", "off"]),
                             ["flag_by: self-influence needs self_influence on or auto"]),
}


@pytest.mark.parametrize("case", list(CASES))
def test_bad_input_exits_2_with_one_clear_message(case, tmp_path, capsys):
    make, fragments = CASES[case]
    extra = make(tmp_path)
    args = ["clean", "--train", str(tmp_path / "train.parquet"), "--valid", str(tmp_path / "valid.parquet"),
            "--out", str(tmp_path / "out")]
    if "--model" not in extra:
        args += ["--model", "tabular-mlp"]
    assert main(args + extra) == 2
    err = capsys.readouterr().err
    for fragment in fragments:
        assert fragment in err, err
    assert err.count("\n") == 1 and "Traceback" not in err
    assert not (tmp_path / "out").exists()


def test_yaml_with_invalid_and_unknown_keys(tmp_path, capsys):
    cfg = tmp_path / "clean.yaml"
    cfg.write_text("train: t.parquet\nvalid: v.parquet\nout: o\nmodel: tabular-mlp\ndamping: 2\nflag_fration: 0.1\n")
    assert main(["clean", "--config", str(cfg)]) == 2
    err = capsys.readouterr().err
    assert str(cfg) in err and "'damping'" in err and "'flag_fration': unknown key" in err
    cfg.write_text("- just\n- a list\n")
    assert main(["clean", "--config", str(cfg)]) == 2
    assert "expected a mapping" in capsys.readouterr().err


def test_debug_shows_the_traceback(tmp_path, capsys):
    table().to_parquet(tmp_path / "train.parquet")
    assert main(["--debug", "clean", "--train", str(tmp_path / "train.parquet"), "--valid",
                 str(tmp_path / "missing.parquet"), "--out", str(tmp_path / "out"), "--model", "tabular-mlp"]) == 2
    assert "Traceback" in capsys.readouterr().err


def test_an_unexpected_failure_exits_1_in_one_line_with_the_debug_hint(tmp_path, capsys, monkeypatch):
    """Exit 2 is for what fastif checks itself; a ValueError from deep inside a run (torch, numpy) is a failure."""
    import flows.cli

    def broken(cfg):
        raise ValueError("mat1 and mat2 shapes cannot be multiplied (64x30 and 31x64)")

    monkeypatch.setattr(flows.cli, "_run_clean", broken)
    _write(table(), table(), [])(tmp_path)
    args = ["clean", "--train", str(tmp_path / "train.parquet"), "--valid", str(tmp_path / "valid.parquet"),
            "--out", str(tmp_path / "out"), "--model", "tabular-mlp"]
    assert main(args) == 1
    err = capsys.readouterr().err
    assert err == ("fastif: failed: ValueError: mat1 and mat2 shapes cannot be multiplied (64x30 and 31x64) "
                   "(--debug shows the traceback)\n")
    assert main(["--debug", *args]) == 1
    err = capsys.readouterr().err
    assert "Traceback" in err and "in broken" in err


def test_dataset_export_settings_are_named_errors(tmp_path, capsys):
    assert main(["datasets", "export", "digits", "--out", str(tmp_path), "--noise", "1.5"]) == 2
    assert capsys.readouterr().err == "fastif: error: noise must be in [0, 1), got 1.5\n"
