"""Stage 6, export: write the trained, pruned weights back into the user's own graph,
save it atomically (never over the input), and check what was written.
"""
from __future__ import annotations

import copy
import os
import tempfile
from pathlib import Path

import numpy as np
import onnx
import onnxruntime as ort
from onnx import numpy_helper

from .errors import OnnxPruneError
from .loading import initializer_map

TWO_GB = 2**31 - 1


def with_weights(base: onnx.ModelProto, weights: dict[str, np.ndarray]) -> onnx.ModelProto:
    """A copy of `base` whose named initializers hold `weights` (subnormals flushed to zero:
    they make ORT's CPU kernels many times slower and carry no accuracy)."""
    model = copy.deepcopy(base)
    inits = initializer_map(model.graph)
    for name, value in weights.items():
        tiny = np.finfo(np.float32).tiny
        clean = np.where(np.abs(value) < tiny, np.float32(0), value).astype(np.float32)
        inits[name].CopyFrom(numpy_helper.from_array(clean, name))
    return model


def check_output_path(out: Path, source: Path | None) -> None:
    """Refuse before any work is done: output over the input, or a folder we cannot write."""
    if source is not None and (out.resolve() == source.resolve() or (out.exists() and os.path.samefile(out, source))):
        raise OnnxPruneError(f"output {out} is the input model; choose another path with -o")
    folder = out.parent if str(out.parent) else Path(".")
    if not folder.is_dir():
        raise OnnxPruneError(f"output folder {folder} does not exist")
    if out.is_dir():
        raise OnnxPruneError(f"output path {out} is a folder, not a file")
    try:
        with tempfile.NamedTemporaryFile(dir=folder, prefix=f".{out.name}.", suffix=".probe"):
            pass
    except OSError as e:
        raise OnnxPruneError(f"cannot write to output folder {folder}: {e.strerror}") from None


def save_atomic(model: onnx.ModelProto, out: Path) -> None:
    """Write to a temporary file beside `out`, then rename: a reader never sees half a file,
    and a failure leaves nothing behind."""
    out = Path(out)
    large = model.ByteSize() > TWO_GB
    fd, tmp = tempfile.mkstemp(dir=out.parent, prefix=f".{out.name}.", suffix=".tmp")
    os.close(fd)
    os.chmod(tmp, public_mode())  # mkstemp makes 0600 files; a model is an ordinary file
    data_name = out.name + ".data"
    tmp_data = out.parent / f".{data_name}.tmp"
    try:
        if large:  # protobuf cannot hold more than 2 GB: weights go to a file beside the model
            onnx.save_model(model, tmp, save_as_external_data=True, all_tensors_to_one_file=True,
                            location=tmp_data.name)
            os.replace(tmp_data, out.parent / data_name)
            _rename_external_location(tmp, tmp_data.name, data_name)
        else:
            onnx.save_model(model, tmp)
        with open(tmp, "rb+") as f:
            os.fsync(f.fileno())
        os.replace(tmp, out)
    except BaseException:
        for leftover in (tmp, tmp_data):
            try:
                os.unlink(leftover)
            except FileNotFoundError:
                pass
        raise


def public_mode() -> int:
    umask = os.umask(0)
    os.umask(umask)
    return 0o666 & ~umask


def _rename_external_location(path: str, old: str, new: str) -> None:
    model = onnx.load(path, load_external_data=False)
    for t in model.graph.initializer:
        for entry in t.external_data:
            if entry.key == "location" and entry.value == old:
                entry.value = new
    onnx.save_model(model, path)


def verify(out: Path, reference: onnx.ModelProto) -> onnx.ModelProto:
    """Reload the written file: onnx.checker, an ORT session, and the user's interface."""
    try:
        onnx.checker.check_model(str(out))
        written = onnx.load(str(out))
        ort.InferenceSession(str(out), providers=["CPUExecutionProvider"])
    except Exception as e:
        raise OnnxPruneError(f"the written model {out} failed its check: {str(e).splitlines()[0][:300]}") from None
    if _interface(written) != _interface(reference):
        raise OnnxPruneError(f"the written model {out} does not keep the input's inputs and outputs")
    return written


def _interface(model: onnx.ModelProto):
    inits = {t.name for t in model.graph.initializer}
    return ([(v.name, v.type.tensor_type.elem_type) for v in model.graph.input if v.name not in inits],
            [(v.name, v.type.tensor_type.elem_type) for v in model.graph.output])


def nonzeros(model: onnx.ModelProto, names: list[str]) -> dict[str, int]:
    inits = initializer_map(model.graph)
    return {n: int(np.count_nonzero(numpy_helper.to_array(inits[n]))) for n in names}
