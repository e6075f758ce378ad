"""onnxprune: prune ONNX models with reweighted group-lasso training in ONNX Runtime."""
from .api import PruneResult, prune
from .errors import OnnxPruneError
from .schedule import Schedule

__version__ = "0.1.0"
__all__ = ["prune", "PruneResult", "Schedule", "OnnxPruneError", "__version__"]
