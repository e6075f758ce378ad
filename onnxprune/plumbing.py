"""ONNX and ONNX Runtime plumbing every stage shares: sessions, tensor shapes, initializer maps,
graph outputs, and the one-line form of an error. Nothing here knows about pruning.
"""
from __future__ import annotations

import copy
import functools
import logging

import numpy as np
import onnx
import onnxruntime as ort
from onnx import helper

from . import device
from .errors import OnnxPruneError

log = logging.getLogger("onnxprune")


def first_line(e: BaseException | str, limit: int = 300) -> str:
    """The first line of an error message, at most `limit` characters: ORT and onnx put pages of
    context under it that a user does not need."""
    text = str(e).strip() or (type(e).__name__ if isinstance(e, BaseException) else "")
    return text.splitlines()[0][:limit] if text else ""


def one_line(e: BaseException | str, limit: int = 300) -> str:
    """The whole message on one line (ORT continues 'for the following indices' on the next)."""
    return " ".join(str(e).split())[:limit]


def warn(warnings: list[str], message: str) -> None:
    """Log a warning and keep it for the report."""
    warnings.append(message)
    log.warning(message)


def session_options(threads: int | None = None, *, denormal_as_zero: bool = True,
                    optimize: bool = True) -> ort.SessionOptions:
    so = ort.SessionOptions()
    so.log_severity_level = 3
    # spinning threads hurt more than they help on small models and shared machines
    so.add_session_config_entry("session.intra_op.allow_spinning", "0")
    if denormal_as_zero:  # the penalty drives weights toward zero; subnormals would make every step slow
        so.add_session_config_entry("session.set_denormal_as_zero", "1")
    if not optimize:  # keep every tensor the graph names (shape probing)
        so.graph_optimization_level = ort.GraphOptimizationLevel.ORT_DISABLE_ALL
    if threads:
        so.intra_op_num_threads = threads
    return so


@functools.lru_cache(maxsize=None)
def runtime_limits() -> tuple[int, int]:
    """The newest IR version and default-domain opset the installed ONNX Runtime loads, probed once
    with a one-node model (ORT publishes neither; 1.19 stops at IR 10 and opset 21)."""
    def loads(ir: int, opset: int) -> bool:
        x = helper.make_tensor_value_info("x", onnx.TensorProto.FLOAT, [1])
        y = helper.make_tensor_value_info("y", onnx.TensorProto.FLOAT, [1])
        m = helper.make_model(helper.make_graph([helper.make_node("Identity", ["x"], ["y"])], "probe", [x], [y]),
                              opset_imports=[helper.make_opsetid("", opset)], ir_version=ir)
        try:
            ort.InferenceSession(m.SerializeToString(), providers=["CPUExecutionProvider"])
        except Exception:  # ORT's refusal is the answer
            return False
        return True
    ir = next((v for v in range(onnx.IR_VERSION, 7, -1) if loads(v, 13)), 7)
    opset = next((v for v in range(onnx.defs.onnx_opset_version(), 13, -1) if loads(ir, v)), 13)
    return ir, opset


def serialized(model: onnx.ModelProto) -> bytes:
    """The model's bytes for ONNX Runtime: an IR version newer than the installed runtime reads is
    stamped down to the newest it does (the container changed, not the graph; opsets are checked
    where models are loaded)."""
    newest = runtime_limits()[0]
    if model.ir_version <= newest:
        return model.SerializeToString()
    stamped = model.ir_version
    model.ir_version = newest
    try:
        return model.SerializeToString()
    finally:
        model.ir_version = stamped


def session(model: onnx.ModelProto | str, what: str = "the model", options: ort.SessionOptions | None = None
            ) -> ort.InferenceSession:
    """An inference session on the run's device (`device.using`); any ORT failure becomes a
    one-line OnnxPruneError about `what`."""
    source = model if isinstance(model, str) else serialized(model)
    try:
        return ort.InferenceSession(source, options or session_options(), providers=device.providers())
    except Exception as e:
        raise OnnxPruneError(f"ONNX Runtime cannot run {what}: {first_line(e)}") from None


def initializer_map(graph: onnx.GraphProto) -> dict[str, onnx.TensorProto]:
    return {t.name: t for t in graph.initializer}


def default_opset(model: onnx.ModelProto) -> int:
    for imp in model.opset_import:
        if imp.domain in ("", "ai.onnx"):
            return imp.version
    return 1


def with_outputs(model: onnx.ModelProto, names: list[str], only: bool = False) -> onnx.ModelProto:
    """A copy of `model` that also outputs the tensors `names` (only those with `only`)."""
    m = copy.deepcopy(model)
    if only:
        del m.graph.output[:]
    have = {o.name for o in m.graph.output}
    for name in names:
        if name and name not in have:
            m.graph.output.append(helper.ValueInfoProto(name=name))
            have.add(name)
    return m


def tensor_shapes(model: onnx.ModelProto, feed: dict[str, np.ndarray]) -> dict[str, tuple[int, ...]]:
    """The shape of every tensor, as ONNX Runtime computes it on `feed` (declared shapes may be
    symbolic or wrong)."""
    m = with_outputs(model, [o for node in model.graph.node for o in node.output])
    sess = session(m, "the model to measure its tensor shapes", session_options(optimize=False))
    names = [o.name for o in sess.get_outputs()]
    try:
        values = sess.run(names, feed)
    except Exception as e:
        raise OnnxPruneError(f"ONNX Runtime cannot run the model on these inputs: {first_line(e)}") from None
    shapes = {n: tuple(np.shape(v)) for n, v in zip(names, values)}
    shapes.update({k: tuple(v.shape) for k, v in feed.items()})
    shapes.update({t.name: tuple(t.dims) for t in model.graph.initializer})
    return shapes


def sample_axes(one: dict[str, tuple[int, ...]], two: dict[str, tuple[int, ...]]) -> dict[str, int]:
    """The axis that holds samples in each tensor, from its shapes on one and on two samples: the
    one axis that grows. A time-major recurrent tensor [T, N, H] has it on axis 1, an LSTM's
    output [T, D, N, H] on axis 2. Tensors that do not grow (weights, shape constants, a fixed
    batch) are left out."""
    out = {}
    for name, a in one.items():
        b = two.get(name)
        if b is not None and len(a) == len(b):
            grew = [k for k, (x, y) in enumerate(zip(a, b)) if x != y]
            if len(grew) == 1:
                out[name] = grew[0]
    return out


def shapes_at(one: dict[str, tuple[int, ...]], two: dict[str, tuple[int, ...]], batch: int) -> dict[str, tuple[int, ...]]:
    """Every tensor's shape at `batch` samples, from its shapes at one and two: an axis that grows
    grows linearly (a sequence model whose LSTM runs along the samples unrolls that many steps)."""
    out = dict(one)
    for name, a in one.items():
        b = two.get(name)
        if b is not None and len(a) == len(b) and a != b:
            out[name] = tuple(x + (batch - 1) * (y - x) for x, y in zip(a, b))
    return out


def move_axis(name: str, src: int, dst: int, rank: int, new: str) -> onnx.NodeProto:
    """A Transpose node that writes `name` with axis `src` moved to `dst`, as `new`."""
    perm = list(range(rank))
    perm.insert(dst, perm.pop(src))
    return helper.make_node("Transpose", [name], [new], name=new, perm=perm)


def names_used_in_subgraphs(graph: onnx.GraphProto) -> set[str]:
    """Every tensor name read inside an If/Loop/Scan body (at any depth), a body output that
    names an outer tensor included."""
    used: set[str] = set()
    for node in graph.node:
        for attr in node.attribute:
            for sub in ([attr.g] if attr.type == onnx.AttributeProto.GRAPH else list(attr.graphs)):
                for n in sub.node:
                    used.update(n.input)
                used.update(o.name for o in sub.output)
                used |= names_used_in_subgraphs(sub)
    return used
