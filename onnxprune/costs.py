"""What a model costs to run: parameters, multiply-accumulates of its Conv/Gemm/MatMul
layers (as executed, and counting only non-zero weights), and ONNX Runtime CPU latency,
dense and compressed measured side by side in the same run.
"""
from __future__ import annotations

import statistics
import time

import numpy as np
import onnx
from onnx import numpy_helper

from . import device
from .layers import RECURRENT
from .plumbing import initializer_map, session, session_options, tensor_shapes


def count_macs(model: onnx.ModelProto, feed: dict[str, np.ndarray], shapes: dict | None = None,
               batch: int | None = None) -> tuple[int, float]:
    """(MACs as executed, MACs that meet a non-zero weight) for one pass over `feed` (the model's
    own layout), divided by its `batch` size (default: the first array's first axis). `shapes`:
    the model's tensor shapes on `feed`, if known."""
    shapes = shapes or tensor_shapes(model, feed)
    inits = initializer_map(model.graph)
    batch = batch or max(len(next(iter(feed.values()))), 1)
    dense = sparse = 0.0
    for node in model.graph.node:
        for weight, per_element in layer_macs(node, shapes, batch):
            macs = per_element * np.prod(shapes[weight])
            density = 1.0
            if weight in inits:
                arr = numpy_helper.to_array(inits[weight])
                density = np.count_nonzero(arr) / max(arr.size, 1)
            dense += macs
            sparse += macs * density
    return int(round(dense)), sparse


def layer_macs(node: onnx.NodeProto, shapes: dict, batch: int) -> list[tuple[str, float]]:
    """(weight operand, MACs per sample that each of its elements does) for each weight of a Conv,
    ConvTranspose, Gemm, MatMul or recurrent node; empty for other nodes or unknown shapes."""
    if node.op_type not in ("Conv", "ConvTranspose", "Gemm", "MatMul", *RECURRENT) or len(node.input) < 2:
        return []
    x, w, y = (shapes.get(n) for n in (node.input[0], node.input[1], node.output[0] if node.output[0] else ""))
    if x is None or w is None:
        return []
    if node.op_type in RECURRENT:  # W and R: one MAC per element at every time step
        layout = next((a.i for a in node.attribute if a.name == "layout"), 0)
        return [(name, float(x[1] if layout else x[0])) for name in node.input[1:3] if name]
    if y is None:
        return []
    if node.op_type == "Conv":
        return [(node.input[1], float(np.prod(y[2:])))]
    if node.op_type == "ConvTranspose":
        return [(node.input[1], float(np.prod(x[2:])))]
    if node.op_type == "Gemm":
        trans_a = next((a.i for a in node.attribute if a.name == "transA"), 0)
        return [(node.input[1], (x[1] if trans_a else x[0]) / batch)]
    return [(node.input[1], float(np.prod(y)) * x[-1] / batch / max(float(np.prod(w)), 1))]  # MatMul


def macs_per_weight(model: onnx.ModelProto, shapes: dict, batch: int) -> dict[str, float]:
    """MACs per sample done by one element of each layer weight: what removing it saves."""
    out = {}
    for node in model.graph.node:
        out.update(layer_macs(node, shapes, batch))
    return out


FLOATS = (onnx.TensorProto.FLOAT, onnx.TensorProto.FLOAT16, onnx.TensorProto.DOUBLE)


def param_count(model: onnx.ModelProto) -> int:
    """Elements of every float initializer (zeros included: they are stored)."""
    return sum(int(np.prod(t.dims)) for t in model.graph.initializer if t.data_type in FLOATS)


def latencies(models: dict[str, onnx.ModelProto], feed: dict[str, np.ndarray], runs: int = 200,
              budget_s: float = 4.0, threads: int | None = None) -> dict[str, float]:
    """Median milliseconds per run of each model on the same feed. Runs alternate between
    the models, so a noisy neighbour slows them alike; each model gets `runs` runs or its
    share of `budget_s`, whichever ends first, after warm-up."""
    # as a user's session runs it (no flushing of subnormals); idle threads do not spin on the
    # cores the next session's run needs
    so = session_options(threads, denormal_as_zero=False)
    sessions = {k: session(m, f"the {k} model", so) for k, m in models.items()}
    for s in sessions.values():
        for _ in range(3):
            s.run(None, feed)
    times = {k: [] for k in sessions}
    start = time.perf_counter()
    for _ in range(runs):
        for k, s in sessions.items():
            t = time.perf_counter()
            s.run(None, feed)
            times[k].append(time.perf_counter() - t)
        if time.perf_counter() - start > budget_s and len(times[k]) >= 10:
            break
    return {k: 1000 * statistics.median(v) for k, v in times.items()}


def measure(dense: onnx.ModelProto, pruned: onnx.ModelProto, final: onnx.ModelProto, one: dict[str, np.ndarray],
            batch_of, fixed: int | None, dense_shapes: dict,
            latency: bool = True, threads: int | None = None, int8: bool = False) -> dict:
    """The costs stage: params and MACs of `dense` vs `pruned` (the float model), latency of
    `dense` vs `final` (the one written; with `int8`, `pruned` is timed beside it). `one`: a feed
    of `fixed or 1` samples in the model's own layout, the one `dense_shapes` were measured on;
    `batch_of(b)`: such a feed of b samples, for latency. On a GPU run, latency is measured on the
    GPU (`latency_ms`) and on the CPU too (`cpu_latency_ms`)."""
    macs_d, _ = count_macs(dense, one, dense_shapes, fixed or 1)
    macs_p, sparse_p = count_macs(pruned, one, batch=fixed or 1)
    out = {"params": {"dense": param_count(dense), "compressed": param_count(pruned)},
           "macs": {"dense": macs_d, "compressed": macs_p, "compressed_nonzero": sparse_p},
           "latency_ms": {}}
    if not latency:
        return out
    models = {"dense": dense, "pruned_float": pruned, "compressed": final} if int8 else \
        {"dense": dense, "compressed": final}
    batches = sorted({fixed} if fixed else {1, 32})
    out["latency_ms"] = {f"batch_{b}": latencies(models, batch_of(b), threads=threads) for b in batches}
    if device.current() != "cpu":
        out["device"] = device.current()
        with device.using("cpu"):
            out["cpu_latency_ms"] = {f"batch_{b}": latencies(models, batch_of(b), threads=threads) for b in batches}
    return out
