"""onnxprune: prune ONNX models with reweighted group-lasso training in ONNX Runtime."""
from .api import PruneResult, prune
from .config import Compression, Data, Output, Preparation, PruneConfig, Pruning, Schedule
from .errors import OnnxPruneError
from .version import __version__

__all__ = ["prune", "PruneResult", "PruneConfig", "Pruning", "Schedule", "Data", "Compression", "Preparation",
           "Output", "OnnxPruneError", "__version__"]
