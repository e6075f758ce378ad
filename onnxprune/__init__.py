"""onnxprune: prune ONNX models with reweighted group-lasso training in ONNX Runtime.

The public names load on first use (PEP 562), so the `onnxprune` command can say in one line that
ONNX Runtime is missing before anything imports it (`_launch.entry`)."""
import importlib

from .version import __version__

_PUBLIC = {"prune": "api", "PruneResult": "api", "OnnxPruneError": "errors",
           **{name: "config" for name in ("PruneConfig", "Pruning", "Schedule", "Data", "Compression",
                                          "Preparation", "Output")}}

__all__ = ["prune", "PruneResult", "PruneConfig", "Pruning", "Schedule", "Data", "Compression", "Preparation",
           "Output", "OnnxPruneError", "__version__"]


def __getattr__(name: str):
    if name in _PUBLIC:
        return getattr(importlib.import_module(f".{_PUBLIC[name]}", __name__), name)
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
