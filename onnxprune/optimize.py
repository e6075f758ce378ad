"""`--optimize`: ONNX Runtime's offline graph optimizations at the basic level, applied when the
model is prepared (after onnxsim), so training, quantization and storage all work on the graph
that is written. Basic rewrites (constant folding, redundant-node elimination, Conv+BN/Add/Mul
and MatMul+Add fusion) use standard ONNX ops only, so the result still runs on every execution
provider, TensorRT included; the extended and layout levels emit ORT-only contrib ops and are
better left to the session that runs the model.
"""
from __future__ import annotations

import tempfile
from pathlib import Path

import onnx
import onnxruntime as ort

from .plumbing import session, session_options


def optimize(model: onnx.ModelProto) -> tuple[onnx.ModelProto, list[str]]:
    """Returns the optimized model and what was done."""
    with tempfile.TemporaryDirectory(prefix="onnxprune-opt-") as tmp:
        src, dst = Path(tmp) / "in.onnx", Path(tmp) / "out.onnx"
        onnx.save_model(model, src)
        so = session_options(denormal_as_zero=False)  # folded constants keep their exact values
        so.graph_optimization_level = ort.GraphOptimizationLevel.ORT_ENABLE_BASIC
        so.optimized_model_filepath = str(dst)
        session(str(src), "the model to optimize it", so)
        optimized = onnx.load(str(dst))
    # ORT declares every domain it knows; keep those the graph uses
    used = {n.domain for n in optimized.graph.node} | {""}
    kept = [o for o in optimized.opset_import if o.domain in used or o.domain == "ai.onnx"]
    del optimized.opset_import[:]
    optimized.opset_import.extend(kept)
    optimized.ir_version = model.ir_version
    return optimized, [f"ORT basic graph optimizations: {len(model.graph.node)} -> {len(optimized.graph.node)} nodes"]
