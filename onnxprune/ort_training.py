"""ONNX Runtime's training API, importable without PyTorch.

`import onnxruntime.training` runs `from . import amp, artifacts, optim`, and the
`amp` and `optim` helpers import torch at module level (upstream ORT issue #22070),
although `artifacts`, `onnxblock` and `api` never use it. Torch is ~750 MB and its
import takes seconds (and a torch too new for ORT 1.19 can break that import), so we
seat empty placeholder modules for those two helpers before the import, whether torch
is installed or not; anything that touches them gets a clear ImportError. This is the
only place that works around the issue: import the training API from here.
"""
from __future__ import annotations

import contextlib
import sys
import types

_TORCH_ONLY_HELPERS = ("onnxruntime.training.amp", "onnxruntime.training.optim")


class _TorchOnlyHelper(types.ModuleType):
    def __getattr__(self, attr):
        if attr.startswith("__"):
            raise AttributeError(attr)
        raise ImportError(f"{self.__name__}.{attr} needs PyTorch, which onnxprune does not install")


def _seat_placeholders() -> None:
    if "onnxruntime.training" in sys.modules:
        return
    for name in _TORCH_ONLY_HELPERS:
        sys.modules.setdefault(name, _TorchOnlyHelper(name))


_seat_placeholders()

from onnxruntime.training import artifacts, onnxblock  # noqa: E402
from onnxruntime.training.api import CheckpointState, Module, Optimizer  # noqa: E402

__all__ = ["artifacts", "onnxblock", "CheckpointState", "Module", "Optimizer", "quiet_artifact_logs"]


@contextlib.contextmanager
def quiet_artifact_logs():
    """generate_artifacts builds its gradient graph with a bare SessionOptions(), which
    logs every graph transformer at INFO level whatever the default logger says.
    Hand it options that log errors only, for the duration of the call."""
    from onnxruntime.training.onnxblock import _training_graph_utils as utils

    original = utils.SessionOptions

    def quiet_options():
        so = original()
        so.log_severity_level = 3
        return so

    utils.SessionOptions = quiet_options
    try:
        yield
    finally:
        utils.SessionOptions = original
