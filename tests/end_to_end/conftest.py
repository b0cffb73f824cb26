"""End-to-end runs through the command line and real Prefect flow runs: one Prefect test server for
the whole session (~10 s to start), and the breast-cancer tables most of them clean."""
import numpy as np
import pytest
from sklearn.datasets import load_breast_cancer

from fastif_engine.data.datasets import add_label_noise


@pytest.fixture(scope="session", autouse=True)
def prefect_server():
    """One Prefect test server for every flow run in this session (~10 s to start)."""
    from prefect.settings import PREFECT_FLOWS_HEARTBEAT_FREQUENCY, temporary_settings
    from prefect.testing.utilities import prefect_test_harness

    with prefect_test_harness(server_startup_timeout=60):
        with temporary_settings(updates={PREFECT_FLOWS_HEARTBEAT_FREQUENCY: None}):
            yield


@pytest.fixture(scope="session")
def tabular(tmp_path_factory):
    """Real tabular data: breast cancer, 10% of training labels flipped, id column kept."""
    out = tmp_path_factory.mktemp("bc")
    x, y = load_breast_cancer(return_X_y=True, as_frame=True)
    frame = x.rename(columns=lambda c: c.replace(" ", "_")).assign(label=np.where(y == 1, "benign", "malignant"))
    frame.insert(0, "id", [f"bc{i}" for i in range(len(frame))])
    order = np.random.default_rng(0).permutation(len(frame))
    parts = {"train": order[:340], "valid": order[340:455], "test": order[455:]}
    paths = {}
    for name, rows in parts.items():
        part = frame.iloc[rows].reset_index(drop=True)
        if name == "train":
            part = add_label_noise(part, 0.1, np.random.default_rng(1))
        paths[name] = out / f"{name}.parquet"
        part.to_parquet(paths[name], index=False)
    return paths
