"""Files: atomic writes (temp file in the same folder, then rename) and content fingerprints."""
from __future__ import annotations

import hashlib
import json
import os
import tempfile
from contextlib import contextmanager
from pathlib import Path
from typing import Iterator

import pandas as pd

from ..errors import CacheError, SettingsError


_UMASK = os.umask(0)
os.umask(_UMASK)


@contextmanager
def atomic_path(path: str | Path) -> Iterator[Path]:
    """Yield a temp path beside ``path``; on success it replaces ``path`` in one rename.

    On an exception the temp file is removed and ``path`` (if it existed) is left untouched.
    """
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent)
    os.close(fd)
    try:
        yield Path(tmp)
        os.chmod(tmp, 0o666 & ~_UMASK)  # mkstemp makes 0600; outputs get the usual permissions
        os.replace(tmp, path)
    finally:
        if os.path.exists(tmp):
            os.unlink(tmp)


def write_text(path: str | Path, text: str) -> None:
    with atomic_path(path) as tmp:
        tmp.write_text(text, encoding="utf-8")


def write_bytes(path: str | Path, data: bytes) -> None:
    with atomic_path(path) as tmp:
        tmp.write_bytes(data)


def write_json(path: str | Path, obj) -> None:
    write_text(path, json.dumps(obj, indent=2, sort_keys=False, default=_jsonable) + "\n")


def write_npy(path: str | Path, array) -> None:
    import numpy as np

    with atomic_path(path) as tmp:
        with open(tmp, "wb") as f:
            np.save(f, array)


@contextmanager
def npy_writer(path: str | Path, n_rows: int, row_shape: tuple, dtype="float32"):
    """Write an ``[n_rows, *row_shape]`` ``.npy`` a block of rows at a time: ``with npy_writer(...)
    as write: write(rows)`` in order. The whole array is never in memory; the file appears only
    once every row is written (plain writes, not a memory map, whose written pages would count in
    the process's resident memory)."""
    import numpy as np

    dtype, row_shape = np.dtype(dtype), tuple(int(d) for d in row_shape)
    written = 0
    with atomic_path(path) as tmp:
        with open(tmp, "wb") as f:
            np.lib.format.write_array_header_1_0(f, {"descr": np.lib.format.dtype_to_descr(dtype),
                                                     "fortran_order": False, "shape": (n_rows, *row_shape)})

            def write(part) -> None:
                nonlocal written
                part = np.ascontiguousarray(part, dtype=dtype)
                if part.shape[1:] != row_shape:
                    raise SettingsError(f"{path}: a part of shape {part.shape} does not have rows of shape {row_shape}")
                part.tofile(f)
                written += len(part)

            yield write
        if written != n_rows:
            raise SettingsError(f"{path}: expected {n_rows} rows, the parts held {written}")


def write_npy_rows(path: str | Path, parts, n_rows: int, n_cols: int, dtype="float32") -> None:
    """Write an ``[n_rows, n_cols]`` ``.npy`` from ``parts`` (arrays of rows, in order), one part in memory at a time."""
    with npy_writer(path, n_rows, (n_cols,), dtype) as write:
        for part in parts:
            write(part)


class NpyRows:
    """Rows of an ``.npy`` file (``[n, ...]``), read when asked for (``rows[index]``) with plain reads.

    Not a memory map: the pages a map touches count in the process's resident memory until it
    is closed, so reading a ``[m, P]`` s_test block through one holds all of it in the end."""

    def __init__(self, path: str | Path):
        import numpy as np

        self.path = Path(path)
        with open(self.path, "rb") as f:
            try:
                version = np.lib.format.read_magic(f)
                read_header = (np.lib.format.read_array_header_1_0 if version == (1, 0)
                               else np.lib.format.read_array_header_2_0)
                shape, fortran, dtype = read_header(f)
            except ValueError as exc:
                raise CacheError(f"{self.path}: not an .npy file fastif wrote ({exc})") from None
            self.offset = f.tell()
        if len(shape) < 1 or fortran or dtype.hasobject:
            raise CacheError(f"{self.path}: expected a C-ordered numeric array of rows, found shape {shape}")
        self.shape, self.dtype = tuple(shape), dtype

    def __len__(self) -> int:
        return self.shape[0]

    def __getitem__(self, index):
        """``[len(index), ...]`` for an int array of row positions (runs of rows read at once)."""
        import numpy as np

        index = np.asarray(index, dtype=np.int64).ravel()
        if len(index) and (index.min() < 0 or index.max() >= self.shape[0]):
            raise IndexError(f"{self.path}: row index outside 0..{self.shape[0] - 1}")
        row_values = int(np.prod(self.shape[1:], dtype=np.int64))
        row_bytes = row_values * self.dtype.itemsize
        out = np.empty((len(index), row_values), dtype=self.dtype)
        order = np.argsort(index, kind="stable")
        starts = np.flatnonzero(np.diff(index[order], prepend=-2) != 1)  # where a run of consecutive rows begins
        with open(self.path, "rb") as f:
            for start, stop in zip(starts, np.append(starts[1:], len(order))):
                f.seek(self.offset + int(index[order[start]]) * row_bytes)
                block = np.fromfile(f, dtype=self.dtype, count=int(stop - start) * row_values)
                out[order[start:stop]] = block.reshape(stop - start, row_values)
        return out.reshape(len(index), *self.shape[1:])


def write_parquet(path: str | Path, frame: pd.DataFrame) -> None:
    with atomic_path(path) as tmp:
        frame.to_parquet(tmp, index=False)


def _jsonable(value):
    if hasattr(value, "item"):
        return value.item()
    if isinstance(value, Path):
        return str(value)
    raise TypeError(f"cannot write {type(value).__name__} to JSON")


def file_fingerprint(location: str) -> str:
    """sha256 of a file's bytes (local path or fsspec URL): changes when the content does."""
    digest = hashlib.sha256()
    if "://" in location:
        import fsspec

        with fsspec.open(location, "rb") as f:
            for block in iter(lambda: f.read(1 << 20), b""):
                digest.update(block)
    else:
        with open(location, "rb") as f:
            for block in iter(lambda: f.read(1 << 20), b""):
                digest.update(block)
    return digest.hexdigest()


def fingerprint(*parts) -> str:
    """A short stable hash of JSON-able parts (settings, other fingerprints)."""
    blob = json.dumps(parts, sort_keys=True, default=str).encode()
    return hashlib.sha256(blob).hexdigest()[:20]


# ---- stage-cache files that are loaded without pickle (a cache folder is not a place to run code from) ----

def save_arrays(path: str | Path, arrays: dict) -> None:
    """``.npz`` of plain numeric arrays; strings must be packed first (see :func:`pack_strings`)."""
    import numpy as np

    with atomic_path(path) as tmp:
        with open(tmp, "wb") as f:
            np.savez(f, **arrays)


def load_arrays(path: str | Path) -> dict:
    """Every array of a :func:`save_arrays` file, loaded with pickles refused."""
    import numpy as np

    try:
        with np.load(path, allow_pickle=False) as data:
            return {k: data[k] for k in data.files}
    except Exception as exc:
        raise _refused(path, exc) from None


def _refused(path, exc: Exception) -> CacheError:
    return CacheError(f"stage cache file {path}: not a file fastif wrote ({type(exc).__name__}: {exc}); it was "
                      "not loaded. Delete it (or the whole .fastif-cache folder) and run again.")


def save_tensors(path: str | Path, tensors: dict, metadata: dict[str, str] | None = None) -> None:
    """``{name: tensor or {name: tensor, …}}`` as safetensors; nested names are joined with ``/``;
    ``metadata``: strings stored in the file's header (:func:`tensors_metadata`)."""
    import torch
    from safetensors.torch import save_file

    def flat(tree: dict, prefix: str = ""):
        for name, value in tree.items():
            if isinstance(value, dict):
                yield from flat(value, f"{prefix}{name}/")
            else:
                yield f"{prefix}{name}", torch.as_tensor(value).contiguous()

    with atomic_path(path) as tmp:
        save_file(dict(flat(tensors)), str(tmp), metadata=metadata)


def tensors_metadata(path: str | Path) -> dict[str, str]:
    """The strings :func:`save_tensors` stored with ``metadata`` (``{}`` if none)."""
    from safetensors import safe_open

    try:
        with safe_open(str(path), framework="pt") as f:
            return dict(f.metadata() or {})
    except Exception as exc:
        raise _refused(path, exc) from None


def load_tensors(path: str | Path) -> dict:
    """What :func:`save_tensors` wrote, nested again; a file fastif did not write is refused."""
    from safetensors.torch import load_file

    try:
        tensors = load_file(str(path))
    except Exception as exc:
        raise _refused(path, exc) from None
    tree: dict = {}
    for name, tensor in tensors.items():
        *parents, leaf = name.split("/")
        node = tree
        for parent in parents:
            node = node.setdefault(parent, {})
        node[leaf] = tensor
    return tree


def pack_strings(values) -> dict:
    """Strings as one UTF-8 byte array and their end offsets: compact, and loadable without pickle."""
    import numpy as np

    encoded = [str(v).encode("utf-8") for v in values]
    return {"bytes": np.frombuffer(b"".join(encoded), dtype=np.uint8),
            "ends": np.cumsum([len(e) for e in encoded], dtype=np.int64)}


def unpack_strings(data, ends) -> list[str]:
    raw = data.tobytes()
    starts = [0, *ends[:-1].tolist()]
    return [raw[a:b].decode("utf-8") for a, b in zip(starts, ends.tolist())]
