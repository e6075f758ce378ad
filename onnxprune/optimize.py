"""Stage 8, `--optimize`: the final graph simplified by onnxsim, then ONNX Runtime's offline
graph optimizations at the basic level. Basic rewrites (constant folding, redundant-node
elimination, Conv+BN/Add/Mul fusion) use standard ONNX ops only, so the result still runs on
every execution provider, TensorRT included; the extended and layout levels emit ORT-only
contrib ops and are better left to the session that runs the model.
"""
from __future__ import annotations

import tempfile
from pathlib import Path

import onnx
import onnxruntime as ort

from .errors import OnnxPruneError


def optimize(model: onnx.ModelProto) -> tuple[onnx.ModelProto, list[str]]:
    """Returns the optimized model and what was done (node counts before/after)."""
    import onnxsim

    before = len(model.graph.node)
    steps = []
    try:
        simplified, ok = onnxsim.simplify(model)
    except Exception as e:  # onnxsim raises many kinds; the model is still usable without it
        simplified, ok = model, False
        steps.append(f"onnxsim skipped ({str(e).strip().splitlines()[0][:120]})")
    if ok and simplified is not model:
        model = simplified
        steps.append(f"onnxsim: {before} -> {len(model.graph.node)} nodes")
    with tempfile.TemporaryDirectory(prefix="onnxprune-opt-") as tmp:
        src, dst = Path(tmp) / "in.onnx", Path(tmp) / "out.onnx"
        onnx.save_model(model, src)
        so = ort.SessionOptions()
        so.log_severity_level = 3
        so.graph_optimization_level = ort.GraphOptimizationLevel.ORT_ENABLE_BASIC
        so.optimized_model_filepath = str(dst)
        try:
            ort.InferenceSession(str(src), so, providers=["CPUExecutionProvider"])
        except Exception as e:
            raise OnnxPruneError(f"ONNX Runtime could not optimize the model: {str(e).strip().splitlines()[0][:300]}") from None
        optimized = onnx.load(str(dst))
    steps.append(f"ORT basic optimizations: {len(model.graph.node)} -> {len(optimized.graph.node)} nodes")
    return optimized, steps
