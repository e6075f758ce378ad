"""What a model costs to run: parameters, multiply-accumulates of its Conv/Gemm/MatMul
layers (as executed, and counting only non-zero weights), and ONNX Runtime CPU latency,
dense and compressed measured side by side in the same run.
"""
from __future__ import annotations

import statistics
import time

import numpy as np
import onnx
import onnxruntime as ort
from onnx import numpy_helper

from .channels import tensor_shapes
from .loading import initializer_map


def count_macs(model: onnx.ModelProto, feed: dict[str, np.ndarray]) -> tuple[int, float]:
    """(MACs as executed, MACs that meet a non-zero weight) for one pass over `feed`,
    divided by its batch size."""
    shapes = tensor_shapes(model, feed)
    inits = initializer_map(model.graph)
    batch = max(len(next(iter(feed.values()))), 1)
    dense = sparse = 0.0
    for node in model.graph.node:
        if node.op_type not in ("Conv", "ConvTranspose", "Gemm", "MatMul") or len(node.input) < 2:
            continue
        out, x, w = shapes.get(node.output[0]), shapes.get(node.input[0]), shapes.get(node.input[1])
        if out is None or x is None or w is None:
            continue
        if node.op_type == "Conv":
            macs = np.prod(out) * np.prod(w[1:])
        elif node.op_type == "ConvTranspose":
            macs = np.prod(x) * np.prod(w[1:])
        elif node.op_type == "Gemm":
            trans_a = next((a.i for a in node.attribute if a.name == "transA"), 0)
            macs = np.prod(out) * (x[0] if trans_a else x[1])
        else:
            macs = np.prod(out) * x[-1]
        macs = float(macs)
        density = 1.0
        for name in node.input[:2]:
            if name in inits:
                arr = numpy_helper.to_array(inits[name])
                density = np.count_nonzero(arr) / max(arr.size, 1)
        dense += macs
        sparse += macs * density
    return int(round(dense / batch)), sparse / batch


def param_count(model: onnx.ModelProto) -> int:
    return sum(int(np.prod(t.dims)) for t in model.graph.initializer
               if t.data_type in (onnx.TensorProto.FLOAT, onnx.TensorProto.FLOAT16, onnx.TensorProto.DOUBLE))


def latencies(models: dict[str, onnx.ModelProto], feed: dict[str, np.ndarray], runs: int = 200,
              budget_s: float = 4.0, threads: int | None = None) -> dict[str, float]:
    """Median milliseconds per run of each model on the same feed. Runs alternate between
    the models, so a noisy neighbour slows them alike; each model gets `runs` runs or its
    share of `budget_s`, whichever ends first, after warm-up."""
    so = ort.SessionOptions()
    so.log_severity_level = 3
    if threads:
        so.intra_op_num_threads = threads
    sessions = {k: ort.InferenceSession(m.SerializeToString(), so, providers=["CPUExecutionProvider"])
                for k, m in models.items()}
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
