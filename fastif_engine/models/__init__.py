"""Built-in model adapters, each with the training recipe used for first training and retrains."""
from .tabular import LogisticRegressionAdapter, MLPAdapter

__all__ = ["LogisticRegressionAdapter", "MLPAdapter"]
