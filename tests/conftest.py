import pytest
import torch
from sklearn.datasets import load_digits

from fastif_engine.models import LogisticRegressionAdapter, MLPAdapter
from fastif_engine.models.training import TrainSettings


@pytest.fixture(scope="session")
def digits():
    """Real data: scikit-learn's bundled 8×8 digits, float64 for exact comparisons."""
    x, y = load_digits(return_X_y=True)
    x = torch.tensor(x, dtype=torch.float64)
    y = torch.tensor(y)
    return {"train": (x[:400], y[:400]), "test": (x[1500:], y[1500:])}


@pytest.fixture(scope="session")
def logreg(digits):
    x, y = digits["train"]
    return LogisticRegressionAdapter(64, 10, l2=1e-2, dtype=torch.float64).fit(x, y)


@pytest.fixture(scope="session")
def mlp(digits):
    x, y = digits["train"]
    return MLPAdapter(64, 10, hidden=24, l2=1e-3, dtype=torch.float64,
                      settings=TrainSettings(optimizer="adam", epochs=60, lr=3e-3)).fit(x, y)


@pytest.fixture(params=["logreg", "mlp"])
def small_model(request):
    """Both small model families whose explicit Hessian is computable."""
    return request.getfixturevalue(request.param)
