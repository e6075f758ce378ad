"""`--device cpu|cuda[:N]`: where a run trains and runs its models.

CUDA needs ONNX Runtime's CUDA training build, `onnxruntime-training==1.19.2` (CUDA 11.8), in place
of the CPU wheel: both own the `onnxruntime` module, so they cannot be installed side by side. Its
libraries come from the `nvidia-*-cu11` wheels, cuDNN below 9. A run's device is set once, for the
run (`using`), and read where sessions and training modules are made (`current`, `providers`).
"""
from __future__ import annotations

import contextlib
import contextvars
import re

from .errors import OnnxPruneError

INSTALL_CUDA = ("pip uninstall -y onnxruntime-training-cpu && pip install onnxruntime-training==1.19.2 "
                "'nvidia-cudnn-cu11<9' nvidia-cublas-cu11 nvidia-curand-cu11 nvidia-cufft-cu11 nvidia-cuda-runtime-cu11")
_CURRENT = contextvars.ContextVar("onnxprune_device", default="cpu")


def parse(text: str) -> str:
    """'cpu', 'cuda' or 'cuda:N', as ORT spells it ('cuda' is 'cuda:0')."""
    m = re.fullmatch(r"(cpu|cuda)(?::(\d+))?", str(text).strip().lower())
    if not m or (m.group(1) == "cpu" and m.group(2)):
        raise OnnxPruneError(f"--device must be cpu, cuda or cuda:N, not {text!r}")
    return "cpu" if m.group(1) == "cpu" else f"cuda:{int(m.group(2) or 0)}"


def check_available(device: str) -> None:
    """Refuse CUDA, before any work, where this ONNX Runtime build cannot use it."""
    if device == "cpu":
        return
    import onnxruntime

    if "CUDAExecutionProvider" not in onnxruntime.get_available_providers():
        raise OnnxPruneError(f"--device {device}: this ONNX Runtime ({onnxruntime.__version__}, providers "
                             f"{', '.join(onnxruntime.get_available_providers())}) has no CUDA; install its CUDA "
                             f"training build: {INSTALL_CUDA}")


def current() -> str:
    return _CURRENT.get()


def providers(device: str | None = None) -> list:
    """ORT execution providers for `device` (default: the run's), CPU as the fallback for ops CUDA lacks."""
    device = device or current()
    if device == "cpu":
        return ["CPUExecutionProvider"]
    return [("CUDAExecutionProvider", {"device_id": int(device.split(":")[1])}), "CPUExecutionProvider"]


@contextlib.contextmanager
def using(device: str):
    """Sessions and training modules made inside run on `device`."""
    token = _CURRENT.set(device)
    try:
        yield
    finally:
        _CURRENT.reset(token)
