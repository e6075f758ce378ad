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
    """Refuse CUDA, before any work, where it cannot run: a build without it, no GPU at that
    index, or CUDA 11 / cuDNN 8 libraries the loader cannot find. The CUDA build lists its provider
    whatever the machine has, and a session whose provider fails quietly falls back to the CPU, so
    a one-node session is opened on the device and asked what it runs on."""
    if device == "cpu":
        return
    import onnxruntime

    if "CUDAExecutionProvider" not in onnxruntime.get_available_providers():
        raise OnnxPruneError(f"--device {device}: this ONNX Runtime ({onnxruntime.__version__}, providers "
                             f"{', '.join(onnxruntime.get_available_providers())}) has no CUDA; install its CUDA "
                             f"training build: {INSTALL_CUDA}")
    why = _probe(device)
    if why:
        raise OnnxPruneError(f"--device {device}: ONNX Runtime's CUDA build is installed but cannot run on it ({why}); "
                             "check `nvidia-smi` sees the GPU and that LD_LIBRARY_PATH holds the nvidia-*-cu11 "
                             "wheels' lib folders (cuDNN below 9), as the README's GPU install sets it")


def _probe(device: str) -> str | None:
    """None where a session really runs on `device`, else why not, in a few words."""
    import onnxruntime
    from onnx import TensorProto, helper

    x = helper.make_tensor_value_info("x", TensorProto.FLOAT, [1])
    y = helper.make_tensor_value_info("y", TensorProto.FLOAT, [1])
    model = helper.make_model(helper.make_graph([helper.make_node("Relu", ["x"], ["y"])], "probe", [x], [y]),
                              opset_imports=[helper.make_opsetid("", 17)], ir_version=8)
    opts = onnxruntime.SessionOptions()
    opts.log_severity_level = 4  # the reason is reported here, in one line, not as ORT's log
    try:
        sess = onnxruntime.InferenceSession(model.SerializeToString(), opts, providers=providers(device))
    except Exception as e:  # noqa: BLE001 - any failure to open it is the answer
        return str(e).strip().splitlines()[0][:200] if str(e).strip() else type(e).__name__
    if "CUDAExecutionProvider" not in sess.get_providers():
        return "its CUDA provider could not be created, so the session fell back to the CPU"
    return None


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
