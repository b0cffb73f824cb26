import json
import runpy
from pathlib import Path

import numpy as np
import pytest
import torch

from fastif_engine import ExactSolver, FastIF, FaissIndex, LissaSettings, extract_features
from fastif_engine.influence.knn import exact_neighbours

ROOT = Path(__file__).resolve().parents[2]


def test_knn_restricted_scores_equal_full_scores_on_the_candidates(logreg, digits):
    x, y = digits["train"]
    xt, yt = digits["test"][0][:6], digits["test"][1][:6]
    solver = ExactSolver(logreg, x, y, ridge=0.05)
    full = FastIF(logreg, x, y, solver=solver, k=None).influence(xt, yt)
    knn = FastIF(logreg, x, y, solver=solver, k=30).influence(xt, yt)
    assert len(full) == 6 * len(y) and len(knn) == 6 * 30
    merged = knn.merge(full, on=["test_pos", "train_index"], suffixes=("_knn", "_full"))
    np.testing.assert_allclose(merged.influence_knn, merged.influence_full, rtol=1e-10)
    # candidates are each test example's 30 nearest training rows in feature space
    feats = extract_features(logreg, x)
    expected = exact_neighbours(feats.astype(np.float64), extract_features(logreg, xt).astype(np.float64), 30)
    for i in range(6):
        got = set(knn.loc[knn.test_pos == i, "train_index"])
        assert len(got & set(expected[i])) >= 28  # float32 ties at the boundary at most
    # rank 1 is the most harmful (largest positive influence) per test example
    top = knn.loc[knn["rank"] == 1].set_index("test_pos")["influence"]
    np.testing.assert_allclose(top.values, knn.groupby("test_pos")["influence"].max().values)


def test_facade_with_lissa_and_a_given_index(mlp, digits):
    x, y = digits["train"]
    index = FaissIndex("hnsw").build(extract_features(mlp, x))
    fi = FastIF(mlp, x, y, k=20, index=index, solver="lissa", lissa=LissaSettings(depth=50, batch_size=4))
    s = fi.s_test(*[t[:3] for t in digits["test"]])
    assert s.shape == (3, sum(p.numel() for p in mlp.model.parameters()))
    assert torch.isfinite(s).all()
    si = fi.self_influence()
    assert si.shape == (len(y),) and np.isfinite(si).all()


def test_quickstart_example_finds_flipped_labels():
    result = runpy.run_path(str(ROOT / "examples" / "quickstart.py"))["main"]()
    assert result["n_errors"] > 10
    assert result["recall_top10"] > 0.3  # random ranking finds 10%
    assert result["recall_top10_net_harm"] > 0.6


def test_approximate_index_with_short_results(logreg, digits):
    """IVF probing one cell finds fewer than k rows for some queries (FAISS pads with -1)."""
    x, y = digits["train"]
    index = FaissIndex("ivf", nlist=32, nprobe=1).build(extract_features(logreg, x))
    fi = FastIF(logreg, x, y, k=200, index=index, solver=ExactSolver(logreg, x, y, ridge=0.05))
    lists = fi.neighbours(digits["test"][0][:10])
    assert min(len(c) for c in lists) < 200 and all((c >= 0).all() for c in lists)
    table = fi.influence(digits["test"][0][:10], digits["test"][1][:10])
    assert len(table) == sum(len(c) for c in lists)


def test_embeddings_example_cleans_through_a_vector_column(tmp_path):
    """examples/embeddings.py: sentence vectors of the bundled encoder as one column, a logistic head over
    them, the whole product through fastif_engine.clean (no Prefect)."""
    result = runpy.run_path(str(ROOT / "examples" / "embeddings.py"))["main"](max_train=300, out=str(tmp_path))
    metrics = json.loads((tmp_path / "metrics.json").read_text())
    assert metrics["config"]["embedding_column"] == "embedding" and metrics["config"]["model"] == "tabular-logreg"
    assert metrics["solver"]["parameters"] == (384 + 1) * 2  # a binary logistic head over the 384-dim vectors
    assert result["train_rows"] == metrics["counts"]["train"] == 300 and result["flipped"] > 0
    assert result["flagged"] == metrics["counts"]["flagged"] and result["flipped_in_flags"] <= result["flagged"]


def test_torch_module_example_explains_a_trained_network_as_given(tmp_path):
    """examples/torch_module.py: a network trained in plain torch, wrapped in TorchClassifier, explained with
    its own weights (at a minimum of its loss), flags that are mostly the flipped labels, a verdict."""
    result = runpy.run_path(str(ROOT / "examples" / "torch_module.py"))["main"](out=str(tmp_path))
    assert result.metrics["config"]["weights"] == "given" and result.metrics["model_fit"]["stationary"]
    assert result.metrics["solver"]["parameters"] == 32 * 2 + 2  # the head only
    flagged = result.flagged
    assert len(flagged) > 5 and flagged["noisy"].mean() > 0.7  # 10% of the rows are flipped
    assert result.verdict.split(",")[0] in ("helped", "hurt", "no measurable effect")


def test_fastif_and_clean_use_one_default_ridge(tmp_path):
    """``FastIF(...)`` with no ridge setting and ``fastif_engine.clean`` on the same data and model: the same λ,
    the default rule (RIDGE_OF_TOP × the sampled top eigenvalue), not a damping of the scale."""
    import pandas as pd
    from sklearn.datasets import load_breast_cancer
    from torch import nn

    import fastif_engine
    from fastif_engine.influence.solvers import RIDGE_OF_TOP

    x, y = load_breast_cancer(return_X_y=True)
    x = (x - x.mean(0)) / x.std(0)
    frame = pd.DataFrame(x[:300], columns=[f"f{i}" for i in range(x.shape[1])]).assign(
        label=np.where(y[:300] == 1, "b", "m"))
    torch.manual_seed(0)
    net = nn.Sequential(nn.Linear(x.shape[1], 8), nn.Tanh(), nn.Linear(8, 2))
    model = fastif_engine.TorchClassifier(net, differentiate=["2.*"], l2=1e-2)
    xt = torch.tensor(x[:300], dtype=torch.float32)
    yt = torch.tensor((frame["label"] == "m").to_numpy(), dtype=torch.long)  # classes in sorted order
    model.fit(xt, yt)
    fi = FastIF(model, xt, yt, k=None)
    result = fastif_engine.clean(frame, frame.iloc[:60], model=model, weights="given", out=tmp_path, progress=False)
    solver = result.metrics["solver"]
    assert solver["ridge_rule"] == f"{RIDGE_OF_TOP:g} × top eigenvalue"
    assert fi.solver.ridge == pytest.approx(solver["ridge"], rel=1e-6)


def test_hf_checkpoint_example_cleans_through_the_head_of_a_pretrained_encoder(tmp_path):
    """examples/hf_checkpoint.py: the bundled encoder saved as a sequence classifier, ``hf:DIR`` with
    ``layers=0``: influence over the classifier alone, the trunk run once; flags richer in flips than random."""
    result = runpy.run_path(str(ROOT / "examples" / "hf_checkpoint.py"))["main"](max_train=600, retrain=False,
                                                                                 out=str(tmp_path))
    solver = result.metrics["solver"]
    assert solver["parameters"] == 384 * 2 + 2 and solver["differentiated"] == "hf.classifier.*"
    flagged = result.flagged
    assert len(flagged) > 10 and flagged["noisy"].mean() > 0.2  # 20% of the labels are flipped
