"""Writing: the trained, pruned weights put back into the user's own graph (`with_weights`), and
the write stage: save atomically (never over the input), then check what was written.
"""
from __future__ import annotations

import contextlib
import copy
import os
import tempfile
from pathlib import Path

import numpy as np
import onnx
from onnx import numpy_helper

from .errors import OnnxPruneError
from .plumbing import first_line, initializer_map, runtime_limits, session
from .version import __version__

TWO_GB = 2**31 - 1


def with_weights(base: onnx.ModelProto, weights: dict[str, np.ndarray]) -> onnx.ModelProto:
    """A copy of `base` whose named initializers hold `weights`, in each initializer's own float
    type (float16 models train in float32), subnormals flushed to zero: they make
    ORT's CPU kernels many times slower and carry no accuracy."""
    model = copy.deepcopy(base)
    inits = initializer_map(model.graph)
    for name, value in weights.items():
        t = inits[name]
        dtype = np.float16 if t.data_type == onnx.TensorProto.FLOAT16 else np.float32
        tiny = np.finfo(dtype).tiny
        clean = np.where(np.abs(value) < tiny, 0, value).astype(dtype)
        t.CopyFrom(numpy_helper.from_array(clean, name))
    return model


def check_output_path(out: Path, source: Path | None) -> None:
    """Refuse before any work is done: output over the input, or a folder we cannot write."""
    if source is not None and (out.resolve() == source.resolve()
                               or (out.exists() and source.exists() and os.path.samefile(out, source))):
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


@contextlib.contextmanager
def atomic_path(out: Path):
    """Yield a temporary path beside `out`; on success it replaces `out` in one rename, so a
    reader never sees half a file, and on any failure (Ctrl-C too) nothing is left behind."""
    out = Path(out)
    fd, tmp = tempfile.mkstemp(dir=out.parent if str(out.parent) else ".", prefix=f".{out.name}.", suffix=".tmp")
    os.close(fd)
    os.chmod(tmp, public_mode())  # mkstemp makes 0600 files; outputs are ordinary files
    try:
        yield tmp
        with open(tmp, "rb+") as f:
            os.fsync(f.fileno())
        os.replace(tmp, out)
    except BaseException:
        with contextlib.suppress(FileNotFoundError):
            os.unlink(tmp)
        raise


def save_atomic(model: onnx.ModelProto, out: Path) -> None:
    out = Path(out)
    if model.ByteSize() <= TWO_GB:
        with atomic_path(out) as tmp:
            onnx.save_model(model, tmp)
        return
    # protobuf cannot hold more than 2 GB: weights go to a data file beside the model
    data_name = out.name + ".data"
    with atomic_path(out.parent / data_name) as tmp_data, atomic_path(out) as tmp:
        onnx.save_model(model, tmp, save_as_external_data=True, all_tensors_to_one_file=True,
                        location=Path(tmp_data).name)
        _rename_external_location(tmp, Path(tmp_data).name, data_name)


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
        # by path (external data past 2 GB stays on disk), unless its IR stamp is newer than the
        # runtime reads: the user's own stamp, kept in the file and lowered for the session only
        session(written if written.ir_version > runtime_limits()[0] else str(out), f"the written model {out}")
    except Exception as e:
        raise OnnxPruneError(f"the written model {out} failed its check: {first_line(e)}") from None
    if _interface(written) != _interface(reference):
        raise OnnxPruneError(f"the written model {out} does not keep the input's inputs and outputs")
    return written


def _interface(model: onnx.ModelProto):
    inits = {t.name for t in model.graph.initializer}
    return ([(v.name, v.type.tensor_type.elem_type) for v in model.graph.input if v.name not in inits],
            [(v.name, v.type.tensor_type.elem_type) for v in model.graph.output])


def write(model: onnx.ModelProto, out: Path, reference: onnx.ModelProto) -> onnx.ModelProto:
    """The write stage: save atomically, then reload and check what was written."""
    save_atomic(model, Path(out))
    try:
        return verify(Path(out), reference)
    except OnnxPruneError:  # a file that failed its check is not left behind
        for path in (Path(out), Path(str(out) + ".data")):
            with contextlib.suppress(FileNotFoundError):
                path.unlink()
        raise


def public(model: onnx.ModelProto, reference: onnx.ModelProto) -> onnx.ModelProto:
    """`model` with the reference's outputs only (loading may expose more for training), and the
    reference's metadata plus one `onnxprune` entry (not the simplifier's own entries)."""
    m = onnx.ModelProto()
    m.CopyFrom(model)
    keep = [o.name for o in reference.graph.output]
    by_name = {o.name: o for o in m.graph.output}
    kept = [copy.deepcopy(by_name[k]) for k in keep if k in by_name]
    del m.graph.output[:]
    m.graph.output.extend(kept)
    del m.metadata_props[:]
    m.metadata_props.extend(copy.deepcopy(p) for p in reference.metadata_props if p.key != "onnxprune")
    onnx.helper.set_model_props(m, {**{p.key: p.value for p in m.metadata_props}, "onnxprune": __version__})
    return m
