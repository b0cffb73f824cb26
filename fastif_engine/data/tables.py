"""Load and validate the train / valid / test tables before any work starts.

Format (docs/guide/cleaning.md): parquet or CSV, a local path or an fsspec URL; an optional ``id`` column
(row number otherwise); ``label`` with int or string classes; inputs in one of
  * a text column (``text``),
  * numeric feature columns,
  * an image column: a list of pixel values (a square image) or PNG bytes,
  * an embedding column: a list of floats per row, all of one length (an encoder's outputs),
    read as that many numeric features.
Every problem is a :class:`DataError` naming the file, the column and the rows at fault.
"""
from __future__ import annotations

import io
import json
import math
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import pandas as pd

from ..errors import DataError
from ..store.files import pack_strings, unpack_strings

# Columns the dataset export writes beside the data; never model inputs.
TRUTH_COLUMNS = ("true_label", "noisy")
MAX_ROWS_SHOWN = 8


@dataclass(frozen=True)
class Columns:
    """Which columns hold what. ``None`` for inputs means: detect (text, then image, then numeric)."""

    label: str = "label"
    id: str | None = None  # None: the "id" column if there is one, else the row number
    text: str | None = None
    features: tuple[str, ...] | None = None
    image: str | None = None
    embedding: str | None = None  # never detected: named by the user


@dataclass
class Split:
    """One validated table: ids, integer label codes, and the raw input values."""

    name: str
    source: str
    ids: np.ndarray
    labels: np.ndarray  # int64 codes into Dataset.classes
    values: object  # list[str] (text), float32 [n, F] (tabular) or float32 [n, 1, H, W] (image)
    extra: pd.DataFrame = field(default_factory=pd.DataFrame)  # truth columns if present

    def __len__(self) -> int:
        return len(self.labels)


@dataclass
class Dataset:
    modality: str  # "text" | "tabular" | "image"
    classes: list  # original label values; code i means classes[i]
    input_columns: tuple[str, ...]
    splits: dict[str, Split]

    @property
    def n_classes(self) -> int:
        return len(self.classes)

    @property
    def input_shape(self) -> tuple[int, ...]:
        values = self.splits["train"].values
        return () if self.modality == "text" else tuple(np.asarray(values).shape[1:])


def _plain(value):
    return value.item() if isinstance(value, np.generic) else value


def _put(arrays: dict, name: str, values) -> None:
    """A numeric array as it is; strings (and other objects) packed as UTF-8 (see store.pack_strings)."""
    values = values if isinstance(values, np.ndarray) else np.asarray(values, dtype=object)
    if values.dtype.kind in "biuf":
        arrays[name] = values
    else:
        for part, array in pack_strings(values.ravel()).items():
            arrays[f"{name}/{part}"] = array


def _get(arrays: dict, name: str):
    if name in arrays:
        return arrays[name]
    return np.asarray(unpack_strings(arrays[f"{name}/bytes"], arrays[f"{name}/ends"]), dtype=object)


def dataset_arrays(ds: Dataset) -> dict:
    """A :class:`Dataset` as plain arrays, for a cache file that loads without pickle
    (:func:`dataset_from_arrays` is the inverse)."""
    meta = {"modality": ds.modality, "classes": [_plain(c) for c in ds.classes],
            "input_columns": list(ds.input_columns),
            "splits": {name: {"source": s.source, "extra": list(s.extra.columns)} for name, s in ds.splits.items()}}
    arrays = {"meta": np.frombuffer(json.dumps(meta).encode("utf-8"), dtype=np.uint8)}
    for name, s in ds.splits.items():
        _put(arrays, f"{name}/ids", np.asarray(s.ids))
        _put(arrays, f"{name}/labels", np.asarray(s.labels))
        _put(arrays, f"{name}/values", s.values if ds.modality != "text" else list(s.values))
        for col in s.extra.columns:
            _put(arrays, f"{name}/extra/{col}", s.extra[col].to_numpy())
    return arrays


def dataset_from_arrays(arrays: dict) -> Dataset:
    meta = json.loads(arrays["meta"].tobytes().decode("utf-8"))
    splits = {}
    for name, info in meta["splits"].items():
        values, labels = _get(arrays, f"{name}/values"), _get(arrays, f"{name}/labels")
        extra = pd.DataFrame({c: _get(arrays, f"{name}/extra/{c}") for c in info["extra"]},
                             index=pd.RangeIndex(len(labels)))
        splits[name] = Split(name=name, source=info["source"], ids=_get(arrays, f"{name}/ids"), labels=labels,
                             values=values.tolist() if meta["modality"] == "text" else values, extra=extra)
    return Dataset(meta["modality"], meta["classes"], tuple(meta["input_columns"]), splits)


def read_table(path: str, split: str) -> pd.DataFrame:
    """Read a parquet or CSV file (by suffix; fsspec URLs work) or raise a DataError naming it."""
    text = str(path)
    is_url = "://" in text
    if not is_url and not Path(text).exists():
        raise DataError(f"{split} file {text}: not found")
    suffix = Path(text.split("?")[0]).suffix.lower()
    try:
        if suffix in (".parquet", ".pq"):
            frame = pd.read_parquet(text)
        elif suffix in (".csv", ".tsv", ".txt") or suffix == ".gz" and ".csv" in text:
            frame = pd.read_csv(text, sep="\t" if suffix == ".tsv" else ",")
        else:
            raise DataError(f"{split} file {text}: unknown format {suffix!r} (use .parquet or .csv)")
    except DataError:
        raise
    except Exception as exc:  # pyarrow, pandas and fsspec raise many kinds
        reason = str(exc).strip().splitlines()[0] if str(exc).strip() else type(exc).__name__
        raise DataError(f"{split} file {text}: cannot be read as {suffix.lstrip('.')} ({reason})") from None
    if len(frame) == 0:
        raise DataError(f"{split} file {text}: has no rows")
    return frame


def load_dataset(paths: dict[str, str | None], columns: Columns = Columns()) -> Dataset:
    """Read and validate every split in ``paths`` (``train`` and ``valid`` required)."""
    for required in ("train", "valid"):
        if not paths.get(required):
            raise DataError(f"a {required} file is required")
    frames = {name: read_table(p, name) for name, p in paths.items() if p}
    modality, inputs = _detect_inputs(frames["train"], columns, str(paths["train"]))
    for name, frame in frames.items():
        _require_columns(frame, (columns.label, *inputs), name, str(paths[name]))

    train_labels = frames["train"][columns.label]
    _check_labels(train_labels, "train", str(paths["train"]), columns.label)
    classes = sorted(pd.unique(train_labels).tolist(), key=lambda v: (str(type(v)), v))
    if len(classes) < 2:
        raise DataError(f"train file {paths['train']}: column '{columns.label}' has a single class "
                        f"({classes[0]!r}); at least two are needed")
    code = {c: i for i, c in enumerate(classes)}

    splits = {}
    for name, frame in frames.items():
        source = str(paths[name])
        labels = frame[columns.label]
        _check_labels(labels, name, source, columns.label)
        unseen = ~labels.isin(code.keys())
        if unseen.any():
            values = sorted(set(labels[unseen].tolist()), key=str)
            raise DataError(f"{name} file {source}: column '{columns.label}' has classes not in train "
                            f"{_show(values)} in rows {_rows(unseen)}")
        ids = _ids(frame, columns.id, name, source)
        values = (_read_embeddings(frame, columns.embedding, name, source) if columns.embedding
                  else _read_inputs(frame, modality, inputs, name, source))
        extra = frame[[c for c in TRUTH_COLUMNS if c in frame.columns]].reset_index(drop=True)
        splits[name] = Split(name, source, ids, labels.map(code).to_numpy(np.int64, copy=True), values, extra)

    if modality == "image":
        shapes = {n: s.values.shape[1:] for n, s in splits.items()}
        if len(set(shapes.values())) > 1:
            raise DataError(f"images differ in size between splits: {shapes}")
        if splits["train"].values.max() > 1.0:  # 0–255 pixels; one decision, from train, for all splits
            for split in splits.values():
                split.values /= 255.0
    if columns.embedding:
        widths = {n: s.values.shape[1] for n, s in splits.items()}
        if len(set(widths.values())) > 1:
            raise DataError(f"column '{columns.embedding}': vectors differ in length between splits: {widths}")
        inputs = tuple(f"{columns.embedding}[{j}]" for j in range(widths["train"]))
    return Dataset(modality, classes, tuple(inputs), splits)


def _detect_inputs(frame: pd.DataFrame, columns: Columns, source: str) -> tuple[str, tuple[str, ...]]:
    chosen = [c for c in (columns.text, columns.features, columns.image, columns.embedding) if c]
    if len(chosen) > 1:
        raise DataError("give only one of a text column, feature columns, an image column or an embedding column")
    if columns.embedding:
        return "tabular", (columns.embedding,)
    if columns.text:
        return "text", (columns.text,)
    if columns.image:
        return "image", (columns.image,)
    if columns.features:
        return "tabular", tuple(columns.features)
    if "text" in frame.columns:
        return "text", ("text",)
    if "image" in frame.columns:
        return "image", ("image",)
    skip = {columns.label, columns.id or "id", *TRUTH_COLUMNS}
    features = tuple(c for c in frame.columns if c not in skip)
    if not features:
        raise DataError(f"train file {source}: no input columns (expected 'text', 'image' or "
                        f"numeric feature columns besides '{columns.label}')")
    return "tabular", features


def _require_columns(frame: pd.DataFrame, needed, split: str, source: str) -> None:
    missing = [c for c in needed if c not in frame.columns]
    if missing:
        raise DataError(f"{split} file {source}: missing column{'s' if len(missing) > 1 else ''} "
                        f"{', '.join(repr(c) for c in missing)} (columns present: "
                        f"{', '.join(map(str, frame.columns[:20]))})")


def _check_labels(labels: pd.Series, split: str, source: str, column: str) -> None:
    missing = labels.isna()
    if missing.any():
        raise DataError(f"{split} file {source}: column '{column}' is empty in rows {_rows(missing)}")


def _ids(frame: pd.DataFrame, column: str | None, split: str, source: str) -> np.ndarray:
    if column is None:
        if "id" not in frame.columns:
            return np.arange(len(frame))
        column = "id"
    elif column not in frame.columns:
        raise DataError(f"{split} file {source}: missing id column '{column}' (columns present: "
                        f"{', '.join(map(str, frame.columns[:20]))})")
    ids = frame[column]
    if ids.isna().any():
        raise DataError(f"{split} file {source}: column '{column}' is empty in rows {_rows(ids.isna())}")
    dup = ids.duplicated(keep=False)
    if dup.any():
        raise DataError(f"{split} file {source}: column '{column}' has duplicate ids "
                        f"{_show(sorted(set(ids[dup].tolist()), key=str))} in rows {_rows(dup)}")
    return ids.to_numpy()


def _read_inputs(frame: pd.DataFrame, modality: str, inputs, split: str, source: str):
    if modality == "text":
        col = inputs[0]
        text = frame[col]
        bad = text.isna() | ~text.map(lambda v: isinstance(v, str))
        if bad.any():
            raise DataError(f"{split} file {source}: column '{col}' is empty or not text in rows {_rows(bad)}")
        return text.tolist()
    if modality == "tabular":
        return _read_features(frame, inputs, split, source)
    return _read_images(frame, inputs[0], split, source)


def _read_features(frame: pd.DataFrame, columns, split: str, source: str) -> np.ndarray:
    out = np.empty((len(frame), len(columns)), dtype=np.float32)
    for j, col in enumerate(columns):
        values = pd.to_numeric(frame[col], errors="coerce")
        bad_text = values.isna() & frame[col].notna()
        if bad_text.any():
            example = frame[col][bad_text].iloc[0]
            hint = (f"; a column of vectors is read with --embedding-column {col}"
                    if isinstance(example, (list, tuple, np.ndarray)) else "")
            raise DataError(f"{split} file {source}: column '{col}' is not numeric in rows {_rows(bad_text)} "
                            f"(e.g. {_short(example)}){hint}")
        arr = values.to_numpy(dtype=np.float64)
        bad = ~np.isfinite(arr)
        if bad.any():
            raise DataError(f"{split} file {source}: column '{col}' has NaN or infinite values in rows "
                            f"{_rows(bad)}")
        out[:, j] = arr
    return out


def _read_embeddings(frame: pd.DataFrame, col: str, split: str, source: str) -> np.ndarray:
    """``[n, F]`` float32 from a column holding one equal-length vector of finite floats per row."""
    vectors = []
    for value in frame[col]:
        try:
            vector = np.asarray(value, dtype=np.float64)
        except (TypeError, ValueError):
            vector = None
        ok = vector is not None and vector.ndim == 1 and len(vector) > 0 and np.isfinite(vector).all()
        vectors.append(vector if ok else None)
    bad = np.array([v is None for v in vectors])
    if bad.any():
        raise DataError(f"{split} file {source}: column '{col}' holds no vector of finite numbers in rows {_rows(bad)}")
    lengths = pd.Series([len(v) for v in vectors])
    odd = (lengths != lengths.mode()[0]).to_numpy()
    if odd.any():
        raise DataError(f"{split} file {source}: column '{col}' has vectors of different lengths: most have "
                        f"{lengths.mode()[0]}, rows {_rows(odd)} do not (e.g. {lengths[odd].iloc[0]})")
    return np.stack(vectors).astype(np.float32)


def _short(value, width: int = 40) -> str:
    text = repr(value)
    return text if len(text) <= width else text[:width - 1] + "…"


def _read_images(frame: pd.DataFrame, col: str, split: str, source: str) -> np.ndarray:
    images, shapes = [], []
    for value in frame[col]:
        try:
            img = _decode_image(value)
        except Exception:
            img = None
        images.append(img)
        shapes.append(None if img is None else img.shape)
    bad = np.array([img is None for img in images])
    if bad.any():
        raise DataError(f"{split} file {source}: column '{col}' holds no readable image (a square list "
                        f"of pixel values or PNG bytes) in rows {_rows(bad)}")
    common = pd.Series(shapes).mode()[0]
    odd = np.array([s != common for s in shapes])
    if odd.any():
        raise DataError(f"{split} file {source}: column '{col}' has images of inconsistent size: most are "
                        f"{common[0]}×{common[1]}, rows {_rows(odd)} are not "
                        f"(e.g. {shapes[int(odd.argmax())][0]}×{shapes[int(odd.argmax())][1]})")
    return np.stack(images).astype(np.float32)[:, None, :, :]


def _decode_image(value) -> np.ndarray | None:
    if isinstance(value, (bytes, bytearray, memoryview)):
        from PIL import Image

        return np.asarray(Image.open(io.BytesIO(bytes(value))).convert("L"), dtype=np.float32)
    if isinstance(value, dict) and "bytes" in value:  # HF-style {"bytes": ..., "path": ...}
        return _decode_image(value["bytes"])
    pixels = np.asarray(value, dtype=np.float64).ravel()
    side = math.isqrt(len(pixels))
    if side == 0 or side * side != len(pixels) or not np.isfinite(pixels).all():
        return None
    return pixels.reshape(side, side).astype(np.float32)


def _rows(mask) -> str:
    idx = np.flatnonzero(np.asarray(mask))
    shown = ", ".join(str(i) for i in idx[:MAX_ROWS_SHOWN])
    more = f" and {len(idx) - MAX_ROWS_SHOWN} more" if len(idx) > MAX_ROWS_SHOWN else ""
    return f"{shown}{more} (0-based)"


def _show(values: list) -> str:
    head = ", ".join(repr(v) for v in values[:MAX_ROWS_SHOWN])
    return f"[{head}{', …' if len(values) > MAX_ROWS_SHOWN else ''}]"
