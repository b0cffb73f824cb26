"""fastif_engine: scalable influence functions (FastIF) for finding harmful training examples.

Sign convention everywhere: I(z, z_test) = −∇L(z_test)ᵀ (H + λI)⁻¹ ∇L(z);
positive = harmful (removing z should lower the test loss), negative = helpful.
"""
__version__ = "0.3.7"

from .adapter import ModelAdapter, TrainableAdapter
from .cleaning.cleaner import CleanResult, clean
from .config import CleanConfig, ConfigError
from .errors import FastIFError, LissaDivergenceError, SolverSetupError
from .influence.api import FastIF, extract_features
from .influence.knn import FaissIndex, recall_at_k
from .influence.net_harm import NetHarm, net_harm
from .influence.planning import make_solver
from .influence.scores import influence_on_candidates, self_influence
from .influence.solvers import ExactSolver, InverseHVPSolver, LissaSettings, LissaSolver
from .models import TorchClassifier

__all__ = [
    "clean", "CleanResult", "CleanConfig", "ConfigError", "TorchClassifier",
    "ModelAdapter", "TrainableAdapter", "FastIF", "extract_features", "FastIFError", "LissaDivergenceError",
    "SolverSetupError", "influence_on_candidates", "self_influence", "FaissIndex", "recall_at_k", "NetHarm",
    "net_harm", "ExactSolver", "InverseHVPSolver", "LissaSettings", "LissaSolver", "make_solver",
]
