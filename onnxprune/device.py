"""`--device cpu|cuda[:N]`: where a run trains and runs its models.

CUDA needs ONNX Runtime's CUDA build, `onnxruntime-gpu`, in place of the CPU wheel (both own the
`onnxruntime` module). Training steps are plain ONNX graphs, so the GPU runs them as it runs any
model. A run's device is set once, for the
run (`using`), and read where sessions and training modules are made (`current`, `providers`).
"""
from __future__ import annotations

import contextlib
import contextvars
import re

from .errors import OnnxPruneError

INSTALL_CUDA = "pip uninstall -y onnxruntime && pip install onnxruntime-gpu"
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
    a one-node session is opened on the device, in a child process, and asked what it runs on."""
    if device == "cpu":
        return
    import onnxruntime

    if "CUDAExecutionProvider" not in onnxruntime.get_available_providers():
        raise OnnxPruneError(f"--device {device}: this ONNX Runtime ({onnxruntime.__version__}, providers "
                             f"{', '.join(onnxruntime.get_available_providers())}) has no CUDA; install its CUDA "
                             f"build: {INSTALL_CUDA}")
    why = _probe(device)
    if not why:
        preload_cuda_libraries()
    if why:
        raise OnnxPruneError(f"--device {device}: ONNX Runtime's CUDA build is installed but cannot run on it ({why}); "
                             "check `nvidia-smi` sees the GPU and that the CUDA and cuDNN libraries it names are "
                             "installed (pip install 'onnxruntime-gpu[cuda,cudnn]' brings them as wheels)")


def preload_cuda_libraries() -> None:
    """Load the CUDA and cuDNN libraries that `pip install 'onnxruntime-gpu[cuda,cudnn]'` brings as
    wheels: ORT (1.21 and later) finds them there only when asked to. Quietly: a library still
    missing shows in the probe's verdict, and ORT prints its own notes."""
    import contextlib
    import io

    import onnxruntime

    preload = getattr(onnxruntime, "preload_dlls", None)
    if preload:
        with contextlib.redirect_stdout(io.StringIO()), contextlib.suppress(OSError):
            preload()


# run in a child: without an NVIDIA driver, loading the CUDA provider aborts the process
_PROBE = r"""
import sys
import onnxruntime
from onnx import TensorProto, helper
from onnxprune.device import preload_cuda_libraries

preload_cuda_libraries()

x = helper.make_tensor_value_info("x", TensorProto.FLOAT, [1])
y = helper.make_tensor_value_info("y", TensorProto.FLOAT, [1])
model = helper.make_model(helper.make_graph([helper.make_node("Relu", ["x"], ["y"])], "probe", [x], [y]),
                          opset_imports=[helper.make_opsetid("", 17)], ir_version=8)
try:
    sess = onnxruntime.InferenceSession(model.SerializeToString(), providers=[
        ("CUDAExecutionProvider", {"device_id": int(sys.argv[1])}), "CPUExecutionProvider"])
except Exception as e:
    print("ERROR:" + (str(e).strip().splitlines() or [type(e).__name__])[0][:200])
    sys.exit(3)
print("PROVIDERS:" + ",".join(sess.get_providers()))
"""


def _probe(device: str) -> str | None:
    """None where a session really runs on `device`, else why not, in a few words."""
    import subprocess
    import sys

    try:
        done = subprocess.run([sys.executable, "-c", _PROBE, device.split(":")[1]], capture_output=True, text=True,
                              timeout=120)
    except subprocess.TimeoutExpired:
        return "opening a session on it took over 2 minutes"
    return probe_verdict(done.returncode, done.stdout, done.stderr)


def probe_verdict(returncode: int, stdout: str, stderr: str) -> str | None:
    """What the probe's child said, as the reason CUDA cannot be used (None: it can)."""
    missing = re.search(r"Failed to load library \S+ with error: ([^\n]+?)\s*$", stderr, re.M)
    if returncode < 0 or (returncode and "CUDADriverWrapper" in stderr):
        return "ONNX Runtime aborted loading its CUDA provider: no NVIDIA driver (libcuda.so) here"
    if "ERROR:" in stdout:
        return stdout.split("ERROR:", 1)[1].strip()
    if returncode or "PROVIDERS:" not in stdout:
        return f"the probe failed (exit {returncode}): {(stderr.strip().splitlines() or ['no message'])[-1][:200]}"
    if "CUDAExecutionProvider" not in stdout.split("PROVIDERS:", 1)[1]:
        return ("its CUDA provider could not be loaded" + (f" ({missing.group(1)})" if missing else "")
                + ", so the session fell back to the CPU")
    return None


# the wheels that install the `onnxruntime` module: two of them overwrite each other's files
RUNTIME_WHEELS = ("onnxruntime", "onnxruntime-gpu", "onnxruntime-directml", "onnxruntime-openvino", "onnxruntime-qnn",
                  "onnxruntime-training", "onnxruntime-training-cpu")


def runtime_conflict() -> str | None:
    """Why the installed ONNX Runtime is ambiguous (two wheels of the one `onnxruntime` module, as
    `pip install onnxruntime` leaves beside an `onnxruntime-gpu`), or None."""
    from importlib import metadata

    found = []
    for name in RUNTIME_WHEELS:
        try:
            found.append((name, metadata.version(name)))
        except metadata.PackageNotFoundError:
            continue
    if len(found) < 2:
        return None
    keep = next((n for n, _ in found if n != "onnxruntime"), found[0][0])
    return (f"{' and '.join(f'{n} {v}' for n, v in found)} are installed together and overwrite each other's "
            f"`onnxruntime` module; keep one: pip uninstall -y {' '.join(n for n, _ in found)} && pip install {keep}")


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
