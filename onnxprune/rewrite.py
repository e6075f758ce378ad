"""The rewrite stage: the masked model made smaller or more deployable by its structure
(filter/channel: channels removed; N:M: MatMul → Gemm). A rewrite must reproduce the masked
model's outputs on the evaluation samples (relative error ≤ 1e-4); when it does not, or fails
in any way, the masked model is written instead, with a warning: never a traceback.
"""
from __future__ import annotations

import copy
from dataclasses import dataclass

import numpy as np
import onnx
from onnx import numpy_helper

from .errors import OnnxPruneError
from .plumbing import default_opset, first_line, initializer_map, warn

TOLERANCE = 1e-4


@dataclass
class Rewritten:
    model: onnx.ModelProto
    done: list[str]  # what was rewritten, for the report
    outputs: list[np.ndarray]  # its outputs on the evaluation samples


def rewrite(structure, masked: onnx.ModelProto, want: list[np.ndarray], plan, masks, shapes,
            outputs_of, shrink: bool, warnings: list[str]) -> Rewritten:
    """`want`: the masked model's outputs on the evaluation samples; `outputs_of(model, what)`: a
    model's outputs on them. `shrink=False` keeps coupled structures masked."""
    if structure.coupled and not shrink:
        return Rewritten(masked, [], want)
    try:
        model, done = structure.rewrite(masked, plan, masks, shapes)
        if model is masked:
            return Rewritten(masked, [], want)
        got = outputs_of(model, "the rewritten model")
        err = max(float(np.abs(g.astype(np.float64) - w).max() / max(np.abs(w.astype(np.float64)).max(), 1e-12))
                  for g, w in zip(got, want))
        # a float16 model's sums reorder by a few of its own rounding steps
        tolerance = max([TOLERANCE] + [16 * float(np.finfo(w.dtype).eps) for w in want if w.dtype.kind == "f"])
        problem = None if err <= tolerance else f"outputs differ from the masked model by {err:.2g} (relative)"
    except OnnxPruneError as e:
        problem = str(e)
    except Exception as e:  # a rewrite that breaks is a bug to report, not a reason to lose the run
        problem = f"{type(e).__name__} in the rewrite: {first_line(e)}"
    if problem:
        warn(warnings, f"the rewritten graph was not written ({problem}); the output is the masked model")
        return Rewritten(masked, [], want)
    return Rewritten(model, done, got)


def matmul_to_gemm(model: onnx.ModelProto, shapes: dict[str, tuple[int, ...]]) -> tuple[onnx.ModelProto, list[str]]:
    """Rank-2 MatMul with a constant weight → Gemm(transB=1) with the weight stored [N, K]:
    TensorRT's sparse kernels take N:M sparsity along K from Conv and Gemm layers only.
    Returns the model and the nodes rewritten."""
    if default_opset(model) < 11:  # Gemm's bias is optional from opset 11
        return model, []
    m = copy.deepcopy(model)
    inits = initializer_map(m.graph)
    uses: dict[str, int] = {}
    for node in m.graph.node:
        for i in node.input:
            uses[i] = uses.get(i, 0) + 1
    done = []
    for node in m.graph.node:
        if node.op_type != "MatMul" or node.domain not in ("", "ai.onnx"):
            continue
        x, w = node.input
        if w not in inits or x in inits or len(shapes.get(x, ())) != 2 or len(inits[w].dims) != 2 or uses[w] > 1:
            continue
        inits[w].CopyFrom(numpy_helper.from_array(np.ascontiguousarray(numpy_helper.to_array(inits[w]).T), w))
        node.op_type = "Gemm"
        node.attribute.append(onnx.helper.make_attribute("transB", 1))
        done.append(node.name or node.output[0])
    return m, done
