"""Validation before any work: each bad input is one clear DataError naming file, column, rows."""
import io

import numpy as np
import pandas as pd
import pytest

from fastif_engine.data.tables import Columns, DataError, load_dataset


def tabular(n=6, seed=0):
    rng = np.random.default_rng(seed)
    return pd.DataFrame({"id": [f"r{i}" for i in range(n)], "a": rng.normal(size=n), "b": rng.normal(size=n),
                         "label": ["cat", "dog"] * (n // 2)})


def write(tmp_path, frames, fmt="parquet"):
    paths = {}
    for name, frame in frames.items():
        p = tmp_path / f"{name}.{fmt}"
        frame.to_parquet(p, index=False) if fmt == "parquet" else frame.to_csv(p, index=False)
        paths[name] = str(p)
    return paths


def test_csv_with_string_labels_and_ids(tmp_path):
    ds = load_dataset(write(tmp_path, {"train": tabular(), "valid": tabular(4, 1)}, fmt="csv"))
    assert ds.modality == "tabular" and ds.classes == ["cat", "dog"]
    assert ds.input_columns == ("a", "b")
    assert list(ds.splits["train"].ids) == [f"r{i}" for i in range(6)]
    assert list(ds.splits["valid"].labels) == [0, 1, 0, 1]
    assert ds.splits["train"].values.dtype == np.float32


def test_fsspec_url(tmp_path):
    import fsspec

    fs = fsspec.filesystem("memory")
    for name, frame in {"train": tabular(), "valid": tabular(4, 1)}.items():
        with fs.open(f"/fastif-test/{name}.parquet", "wb") as f:
            frame.to_parquet(f, index=False)
    ds = load_dataset({"train": "memory://fastif-test/train.parquet", "valid": "memory://fastif-test/valid.parquet"})
    assert len(ds.splits["train"]) == 6


def test_images_as_pixel_lists_and_png_bytes(tmp_path):
    from PIL import Image

    rng = np.random.default_rng(0)
    imgs = [rng.integers(0, 255, (5, 5), dtype=np.uint8) for _ in range(4)]
    pngs = []
    for img in imgs:
        buf = io.BytesIO()
        Image.fromarray(img).save(buf, format="PNG")
        pngs.append(buf.getvalue())
    train = pd.DataFrame({"image": pngs, "label": [0, 1, 0, 1]})
    valid = pd.DataFrame({"image": [i.ravel() for i in imgs], "label": [0, 1, 0, 1]})
    ds = load_dataset(write(tmp_path, {"train": train, "valid": valid}))
    assert ds.modality == "image" and ds.input_shape == (1, 5, 5)
    np.testing.assert_allclose(ds.splits["train"].values, ds.splits["valid"].values)


def expect_error(tmp_path, frames, *fragments, columns=Columns(), fmt="parquet"):
    paths = frames if all(isinstance(v, str) for v in frames.values()) else write(tmp_path, frames, fmt)
    with pytest.raises(DataError) as info:
        load_dataset(paths, columns)
    for fragment in fragments:
        assert fragment in str(info.value), str(info.value)
    return str(info.value)


def test_missing_file(tmp_path):
    expect_error(tmp_path, {"train": str(tmp_path / "nope.parquet"), "valid": str(tmp_path / "v.csv")},
                 "train file", "nope.parquet", "not found")


def test_corrupt_file(tmp_path):
    bad = tmp_path / "train.parquet"
    bad.write_bytes(b"PAR1 this is not parquet at all")
    valid = write(tmp_path, {"valid": tabular()})["valid"]
    expect_error(tmp_path, {"train": str(bad), "valid": valid}, "train file", str(bad), "cannot be read")


def test_unknown_format(tmp_path):
    p = tmp_path / "train.xlsx"
    p.write_text("x")
    expect_error(tmp_path, {"train": str(p), "valid": str(p)}, "unknown format '.xlsx'")


def test_missing_label_column(tmp_path):
    expect_error(tmp_path, {"train": tabular().drop(columns="label"), "valid": tabular()},
                 "train file", "missing column 'label'")


def test_missing_feature_column_in_valid(tmp_path):
    expect_error(tmp_path, {"train": tabular(), "valid": tabular().drop(columns="b")},
                 "valid file", "missing column 'b'")


def test_nan_and_inf_features(tmp_path):
    train = tabular()
    train.loc[[1, 4], "b"] = [np.nan, np.inf]
    expect_error(tmp_path, {"train": train, "valid": tabular()}, "column 'b'", "NaN or infinite", "rows 1, 4")


def test_text_in_numeric_features(tmp_path):
    train = tabular()
    train["a"] = train["a"].astype(object)
    train.loc[2, "a"] = "twelve"
    expect_error(tmp_path, {"train": train, "valid": tabular()}, fmt="csv",
                 *("column 'a'", "not numeric", "rows 2", "'twelve'"))


def test_missing_labels(tmp_path):
    train = tabular()
    train.loc[3, "label"] = None
    expect_error(tmp_path, {"train": train, "valid": tabular()}, "train file", "'label' is empty", "rows 3")


def test_labels_unseen_in_train(tmp_path):
    valid = tabular()
    valid.loc[5, "label"] = "bird"
    expect_error(tmp_path, {"train": tabular(), "valid": valid}, "valid file", "'bird'", "rows 5")


def test_empty_split(tmp_path):
    expect_error(tmp_path, {"train": tabular(), "valid": tabular().iloc[:0]}, "valid file", "has no rows")


def test_duplicate_ids(tmp_path):
    train = tabular()
    train.loc[4, "id"] = "r1"
    expect_error(tmp_path, {"train": train, "valid": tabular()}, "duplicate ids", "'r1'", "rows 1, 4")


def test_images_of_inconsistent_size(tmp_path):
    images = [np.zeros(64), np.zeros(64), np.zeros(49), np.zeros(64)]
    train = pd.DataFrame({"image": images, "label": [0, 1, 0, 1]})
    expect_error(tmp_path, {"train": train, "valid": train}, "column 'image'", "inconsistent size", "rows 2",
                 "7×7")


def test_single_class_and_empty_text(tmp_path):
    expect_error(tmp_path, {"train": tabular().assign(label="cat"), "valid": tabular()}, "single class")
    text = pd.DataFrame({"text": ["good", None, "bad", "ok"], "label": [1, 0, 1, 0]})
    expect_error(tmp_path, {"train": text, "valid": text}, "column 'text'", "rows 1")


def test_named_id_column_must_exist(tmp_path):
    expect_error(tmp_path, {"train": tabular(), "valid": tabular()}, "missing id column 'key'",
                 columns=Columns(id="key"))
    ds = load_dataset(write(tmp_path, {"train": tabular().drop(columns="id"), "valid": tabular()}))
    assert list(ds.splits["train"].ids) == list(range(6))  # no id column: row numbers


def test_npy_rows_reads_any_rows_without_loading_the_file(tmp_path):
    from fastif_engine.store.files import CacheError, NpyRows, write_npy_rows

    whole = np.random.default_rng(0).normal(size=(40, 6)).astype(np.float32)
    write_npy_rows(tmp_path / "s.npy", [whole[:25], whole[25:]], 40, 6)
    rows = NpyRows(tmp_path / "s.npy")
    assert rows.shape == (40, 6) and len(rows) == 40
    index = np.array([7, 8, 9, 0, 39, 8, 21])  # runs, out of order, a repeat
    assert np.array_equal(rows[index], whole[index])
    assert rows[np.array([], dtype=np.int64)].shape == (0, 6)
    with pytest.raises(IndexError, match="outside 0..39"):
        rows[np.array([40])]
    np.save(tmp_path / "f.npy", np.asfortranarray(np.zeros((3, 4))))
    with pytest.raises(CacheError, match="C-ordered"):
        NpyRows(tmp_path / "f.npy")
    cube = np.arange(60, dtype=np.float32).reshape(5, 3, 4)  # rows of any shape
    np.save(tmp_path / "c.npy", cube)
    assert np.array_equal(NpyRows(tmp_path / "c.npy")[np.array([4, 1, 2])], cube[[4, 1, 2]])


def test_a_row_file_leaf_indexes_like_the_tensor_it_stores(tmp_path):
    import torch

    from fastif_engine.data.batching import RowFile, n_rows, select, take, to_device

    whole = torch.arange(10 * 3 * 2, dtype=torch.float32).reshape(10, 3, 2)
    np.save(tmp_path / "h.npy", whole.numpy())
    leaf = RowFile(tmp_path / "h.npy")
    assert leaf.shape == whole.shape and leaf.dtype == torch.float32 and to_device(leaf, "cpu") is leaf
    for index in (slice(2, 7), slice(None, None, 3), torch.tensor([9, 0, 4]), np.array([3, 3, -1]),
                  np.arange(10) % 2 == 0):
        assert torch.equal(leaf[index], whole[torch.as_tensor(index)] if isinstance(index, np.ndarray) else whole[index])
    assert torch.equal(leaf[4], whole[4])
    inputs = {"hidden": leaf, "mask": torch.arange(10)}
    kept = select(inputs, np.array([8, 1, 5, 2]))  # a view: still on disk
    assert isinstance(kept["hidden"], RowFile) and n_rows(kept) == 4
    assert torch.equal(take(kept, torch.tensor([1, 3]))["hidden"], whole[[1, 2]])
    assert torch.equal(select(kept, slice(0, 2))["hidden"][:], whole[[8, 1]])
    with pytest.raises(IndexError, match="outside 0..3"):
        kept["hidden"][np.array([4])]


def test_npy_written_part_by_part_is_the_whole_array_or_nothing(tmp_path):
    from fastif_engine.store.files import write_npy_rows

    whole = np.arange(35, dtype=np.float64).reshape(7, 5)
    path = tmp_path / "s.npy"
    write_npy_rows(path, (whole[i:i + 3] for i in range(0, 7, 3)), 7, 5)
    got = np.load(path)
    assert got.dtype == np.float32 and np.array_equal(got, whole.astype(np.float32))
    with pytest.raises(ValueError, match="expected 8 rows, the parts held 7"):
        write_npy_rows(tmp_path / "t.npy", [whole], 8, 5)
    assert sorted(p.name for p in tmp_path.iterdir()) == ["s.npy"]  # no half-written file left


def embedded(n=6, width=3, seed=0):
    rng = np.random.default_rng(seed)
    return pd.DataFrame({"id": [f"r{i}" for i in range(n)], "emb": list(rng.normal(size=(n, width))),
                         "label": ["cat", "dog"] * (n // 2)})


def test_an_embedding_column_is_read_as_numeric_features(tmp_path):
    train = embedded()
    ds = load_dataset(write(tmp_path, {"train": train, "valid": embedded(4, seed=1)}), Columns(embedding="emb"))
    assert ds.modality == "tabular" and ds.input_columns == ("emb[0]", "emb[1]", "emb[2]")
    np.testing.assert_allclose(ds.splits["train"].values, np.stack(train["emb"]), rtol=1e-6)
    assert ds.input_shape == (3,)


def test_bad_embedding_vectors_name_their_rows(tmp_path):
    ragged = embedded()
    ragged.at[4, "emb"] = np.ones(2)
    with pytest.raises(DataError, match=r"column 'emb' has vectors of different lengths: most have 3, rows 4 "):
        load_dataset(write(tmp_path, {"train": ragged, "valid": embedded(4)}), Columns(embedding="emb"))
    holes = embedded()
    holes.at[1, "emb"] = np.array([0.0, np.nan, 1.0])
    with pytest.raises(DataError, match=r"train file .*: column 'emb' holds no vector of finite numbers in rows 1 "):
        load_dataset(write(tmp_path, {"train": holes, "valid": embedded(4)}), Columns(embedding="emb"))
    with pytest.raises(DataError, match="column .emb.: vectors differ in length between splits"):
        load_dataset(write(tmp_path, {"train": embedded(), "valid": embedded(4, width=5)}), Columns(embedding="emb"))


def test_a_vector_column_read_as_features_suggests_the_embedding_option(tmp_path):
    with pytest.raises(DataError, match="not numeric .* a column of vectors is read with --embedding-column emb"):
        load_dataset(write(tmp_path, {"train": embedded(), "valid": embedded(4)}), Columns(features=("emb",)))
