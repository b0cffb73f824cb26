import numpy as np
import pandas as pd
import pytest

from fastif_engine.data.datasets import FASHION_MNIST_DIR, export
from fastif_engine.data.tables import load_dataset
from flows.cli import main


def read(paths):
    return {k: pd.read_parquet(v) for k, v in paths.items()}


def test_digits_export_keeps_every_row_and_the_truth(tmp_path):
    frames = read(export("digits", tmp_path, noise=0.1, seed=3))
    assert sum(len(f) for f in frames.values()) == 1797
    train = frames["train"]
    assert train["noisy"].sum() == round(0.1 * len(train))
    flipped = train["label"] != train["true_label"]
    assert (flipped == train["noisy"]).all()  # every flip is to another class, and only flips
    assert "noisy" not in frames["valid"].columns
    ids = np.concatenate([f["id"].to_numpy() for f in frames.values()])
    assert len(np.unique(ids)) == 1797
    ds = load_dataset({k: str(tmp_path / f"{k}.parquet") for k in frames})
    assert ds.modality == "image" and ds.input_shape == (1, 8, 8)


def test_same_seed_same_export(tmp_path):
    a = read(export("digits", tmp_path / "a", noise=0.2, seed=1))["train"]
    b = read(export("digits", tmp_path / "b", noise=0.2, seed=1))["train"]
    c = read(export("digits", tmp_path / "c", noise=0.2, seed=2))["train"]
    pd.testing.assert_frame_equal(a, b)
    assert not a["noisy"].equals(c["noisy"])


def test_pairwise_noise_is_class_conditional(tmp_path):
    train = read(export("digits", tmp_path, noise=0.3, noise_mode="pairwise"))["train"]
    noisy = train[train["noisy"]]
    assert ((noisy["true_label"] + 1) % 10 == noisy["label"]).all()


def test_rotten_tomatoes_export(tmp_path):
    frames = read(export("rotten-tomatoes", tmp_path, noise=0.1))
    assert sum(len(f) for f in frames.values()) == 12808
    assert set(frames["train"]["label"]) == {"fresh", "rotten"}
    assert frames["train"]["text"].str.len().min() > 0
    assert abs(frames["train"]["noisy"].mean() - 0.1) < 1e-3


@pytest.mark.skipif(not FASHION_MNIST_DIR.exists(), reason="apt-get install dataset-fashion-mnist")
def test_fashion_mnist_export(tmp_path):
    frames = read(export("fashion-mnist", tmp_path, max_train=2000))
    assert len(frames["train"]) == 2000
    full = read(export("fashion-mnist", tmp_path / "full"))
    assert [len(full[k]) for k in ("train", "valid", "test")] == [55000, 5000, 10000]
    assert len(full["train"]["image"].iloc[0]) == 784


def test_cli_export(tmp_path, capsys):
    assert main(["datasets", "export", "digits", "--out", str(tmp_path), "--noise", "0.1"]) == 0
    assert "108 labels flipped" in capsys.readouterr().out
    assert main(["datasets", "export", "digits", "--out", str(tmp_path), "--noise", "2"]) == 2
    assert "noise must be in [0, 1)" in capsys.readouterr().err


def test_class_conditional_noise_confuses_some_classes_only(tmp_path):
    train = read(export("digits", tmp_path, noise=0.3, noise_mode="class-conditional", seed=2))["train"]
    noisy = train[train["noisy"]]
    confused = sorted(noisy["true_label"].unique())
    assert len(confused) == 5  # half of the ten classes
    for c in confused:
        assert noisy.loc[noisy["true_label"] == c, "label"].nunique() == 1  # each to one other class
        assert (noisy["true_label"] == c).sum() == round(0.3 * (train["true_label"] == c).sum())
    assert ((train["label"] != train["true_label"]) == train["noisy"]).all()


def test_binary_class_conditional_noise_under_reports_one_class(tmp_path, capsys):
    assert main(["datasets", "export", "breast-cancer", "--out", str(tmp_path), "--noise", "0.3",
                 "--noise-mode", "class-conditional"]) == 0
    train = pd.read_parquet(tmp_path / "train.parquet")
    noisy = train[train["noisy"]]
    assert noisy["true_label"].nunique() == 1 and noisy["label"].nunique() == 1
    under = noisy["true_label"].iloc[0]
    assert len(noisy) == round(0.3 * (train["true_label"] == under).sum())
    assert f"{len(noisy)} labels flipped" in capsys.readouterr().out
    with pytest.raises(SystemExit) as exit_:
        main(["datasets", "export", "breast-cancer", "--out", str(tmp_path), "--noise-mode", "nope"])
    assert exit_.value.code == 2


def test_instance_noise_gives_the_rows_that_look_like_another_class_its_label(tmp_path):
    """``instance``: the share of rows most like another class carry that class. Checked with a model the
    export did not use (a random forest on the clean labels, out-of-bag votes): flipped rows are far less
    typical of their true class than the rest, and mostly take the class the forest votes for next."""
    from sklearn.ensemble import RandomForestClassifier

    frames = {mode: read(export("digits", tmp_path / mode, noise=0.2, noise_mode=mode, seed=0))["train"]
              for mode in ("instance", "uniform")}
    train = frames["instance"]
    assert train["noisy"].sum() == round(0.2 * len(train))
    assert ((train["label"] != train["true_label"]) == train["noisy"]).all()
    x = np.stack(train["image"].map(lambda v: np.asarray(v, dtype=float)))
    forest = RandomForestClassifier(300, oob_score=True, random_state=0).fit(x, train["true_label"])
    votes = forest.oob_decision_function_  # each row voted on by the trees that did not see it
    own = votes[np.arange(len(train)), train["true_label"].to_numpy()]
    assert own[train["noisy"]].mean() < own[~train["noisy"]].mean() - 0.2  # 0.51 vs 0.81
    rival = np.where(np.arange(10)[None] == train["true_label"].to_numpy()[:, None], -1, votes).argmax(1)

    def share_to_rival(frame):
        return (rival[frame["noisy"]] == frame.loc[frame["noisy"], "label"].to_numpy()).mean()

    assert share_to_rival(train) > 0.5 > share_to_rival(frames["uniform"]) + 0.2  # 0.64 vs 0.14


@pytest.mark.parametrize("name", ["rotten-tomatoes", "breast-cancer"])
def test_instance_noise_on_text_and_tables(tmp_path, name):
    train = read(export(name, tmp_path, noise=0.2, noise_mode="instance", max_train=600))["train"]
    assert train["noisy"].sum() == round(0.2 * len(train)) == (train["label"] != train["true_label"]).sum()
