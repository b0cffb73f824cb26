import numpy as np
import pytest

from fastif_engine.errors import IndexNotBuiltError
from fastif_engine.influence.knn import FaissIndex, exact_neighbours, faiss_build, recall_at_k


@pytest.fixture(scope="module")
def points():
    rng = np.random.default_rng(0)
    centres = rng.normal(size=(20, 32)) * 4
    train = (centres[rng.integers(0, 20, 5000)] + rng.normal(size=(5000, 32))).astype(np.float32)
    queries = (centres[rng.integers(0, 20, 50)] + rng.normal(size=(50, 32))).astype(np.float32)
    return train, queries


def test_flat_equals_brute_force_numpy(points):
    train, queries = points
    dist, idx = FaissIndex("flat").build(train).search(queries, 25)
    expected = exact_neighbours(train.astype(np.float64), queries.astype(np.float64), 25)
    np.testing.assert_array_equal(idx, expected)
    d_expected = ((queries[:, None, :] - train[expected]) ** 2).sum(-1)
    np.testing.assert_allclose(dist, d_expected, rtol=1e-4, atol=1e-3)


def test_flat_on_real_features(digits):
    x = digits["train"][0].numpy()
    q = digits["test"][0].numpy()[:30]
    _, idx = FaissIndex("flat").build(x).search(q, 10)
    # digits are integer-valued: ties are possible, so compare the distance of the k-th neighbour
    ref = exact_neighbours(x, q, 10)
    d = lambda ids: ((q[:, None, :] - x[ids]) ** 2).sum(-1)
    np.testing.assert_allclose(np.sort(d(idx), 1), np.sort(d(ref), 1))


@pytest.mark.parametrize("kind,params,floor", [("ivf", dict(nlist=64, nprobe=8), 0.8),
                                               ("ivfpq", dict(nlist=64, nprobe=8, pq_m=16), 0.8),
                                               ("hnsw", dict(ef_search=64), 0.8)])
def test_approximate_indexes_report_recall(points, kind, params, floor):
    """IVF-PQ keeps 16 bytes of each 128-byte row and still finds most neighbours here."""
    train, queries = points
    truth = exact_neighbours(train, queries, 50)
    _, found = FaissIndex(kind, **params).build(train).search(queries, 50)
    recall = recall_at_k(found, truth)
    print(f"{kind} recall@50 = {recall:.3f}")
    assert floor <= recall <= 1.0
    # fewer cells probed must not find more
    if kind == "ivf":
        _, coarse = FaissIndex("ivf", nlist=64, nprobe=1).build(train).search(queries, 50)
        assert recall_at_k(coarse, truth) <= recall


def test_recall_at_k_counts_overlap():
    assert recall_at_k(np.array([[1, 2, 3, 4]]), np.array([[4, 9]])) == 0.5
    assert recall_at_k(np.array([[1, 2], [3, 4]]), np.array([[1, 2], [5, 6]])) == 0.5


@pytest.mark.parametrize("kind", ["flat", "ivf", "ivfpq", "hnsw"])
def test_save_and_load_round_trip(points, tmp_path, kind):
    train, queries = points
    index = FaissIndex(kind, nlist=32).build(train)
    index.save(tmp_path / "train.faiss")
    loaded = FaissIndex.load(tmp_path / "train.faiss")
    assert loaded.kind == kind and loaded.ntotal == len(train)
    np.testing.assert_array_equal(loaded.search(queries, 7)[1], index.search(queries, 7)[1])
    assert not list(tmp_path.glob("*.tmp"))


def test_errors_are_clear(points):
    train, queries = points
    with pytest.raises(IndexNotBuiltError):
        FaissIndex().search(queries, 3)
    with pytest.raises(ValueError, match="unknown index kind"):
        FaissIndex("lsh")
    index = FaissIndex().build(train)
    with pytest.raises(ValueError, match="16 dims, the index 32"):
        index.search(queries[:, :16], 3)
    bad = train.copy()
    bad[3, 3] = np.nan
    with pytest.raises(ValueError, match="NaN"):
        FaissIndex().build(bad)
    assert index.search(queries, 10**6)[1].shape == (50, 5000)  # k capped at the index size
    assert "faiss" in faiss_build()
