"""Check a gradient rule against finite differences, in float64.

`check(nodes, params, consts)` builds a graph from `nodes` whose float inputs `params` are the
tensors differentiated, a loss Σ y·R for fixed random R on every output, and differentiates it with
`autodiff.backward`. The gradient graph and the forward are run by onnx's reference evaluator in
float64; each gradient is compared with central differences of the forward. The same gradient
graph in float32 is then run by ONNX Runtime and compared with the float64 one, so a rule is
correct in exact arithmetic and runs on the runtime that trains with it.
"""
from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import onnx
from onnx import TensorProto, helper, numpy_helper

from . import autodiff

OPSET = 17


@dataclass
class Result:
    finite_difference_error: float  # worst relative error of the float64 rule vs central differences
    runtime_error: float  # worst relative error of ORT's float32 run vs the float64 rule


def _graph(nodes, params: dict[str, np.ndarray], consts: dict[str, np.ndarray], outputs: list[str],
           dtype, opset: int) -> onnx.ModelProto:
    ftype = helper.np_dtype_to_tensor_dtype(np.dtype(dtype))
    inits = [numpy_helper.from_array(v.astype(dtype) if v.dtype.kind == "f" else v, k) for k, v in consts.items()]
    inputs = [helper.make_tensor_value_info(k, ftype, v.shape) for k, v in params.items()]
    outs = [helper.make_tensor_value_info(o, ftype, None) for o in outputs]
    g = helper.make_graph(list(nodes), "check", inputs, outs, inits)
    domains = {n.domain for n in nodes} - {"", "ai.onnx"}  # the training graph's own fused ops
    return helper.make_model(g, opset_imports=[helper.make_opsetid("", opset)]
                             + [helper.make_opsetid(d, 1) for d in sorted(domains)], ir_version=8)


def _with_loss(model: onnx.ModelProto, outputs: list[str], weights: dict[str, np.ndarray], dtype):
    m = onnx.ModelProto()
    m.CopyFrom(model)
    terms = []
    for o in outputs:
        m.graph.initializer.append(numpy_helper.from_array(weights[o].astype(dtype), f"R_{o}"))
        m.graph.node.extend([helper.make_node("Mul", [o, f"R_{o}"], [f"yR_{o}"]),
                             helper.make_node("ReduceSum", [f"yR_{o}"], [f"loss_{o}"], keepdims=0)])
        terms.append(f"loss_{o}")
    m.graph.node.append(helper.make_node("Sum", terms, ["loss"]))
    del m.graph.output[:]
    m.graph.output.append(helper.make_tensor_value_info("loss", helper.np_dtype_to_tensor_dtype(np.dtype(dtype)), []))
    return m


def check(nodes, params: dict[str, np.ndarray], consts: dict[str, np.ndarray] | None = None,
          outputs: list[str] | None = None, opset: int = OPSET, seed: int = 0, delta: float = 1e-6) -> Result:
    consts = consts or {}
    outputs = outputs or [nodes[-1].output[0]]
    rng = np.random.default_rng(seed)
    p64 = {k: v.astype(np.float64) for k, v in params.items()}
    base = _graph(nodes, p64, consts, outputs, np.float64, opset)
    expanded = _widen(autodiff.expand_private(base))
    values = _reference(_all_outputs(expanded)).run(None, p64)
    names = [o.name for o in _all_outputs(expanded).graph.output]
    shapes = {k: np.shape(v) for k, v in zip(names, values)}
    shapes.update({k: v.shape for k, v in p64.items()})
    shapes.update({k: v.shape for k, v in consts.items()})
    weights = {o: rng.standard_normal(shapes[o]) for o in outputs}
    shapes.update({f"yR_{o}": shapes[o] for o in outputs})
    shapes.update({f"loss_{o}": () for o in outputs} | {"loss": ()})

    grads = {}
    for dtype in (np.float64, np.float32):
        m = _with_loss(_graph(nodes, p64, consts, outputs, dtype, opset), outputs, weights, dtype)
        em, g = autodiff.backward(m, "loss", list(params), shapes, dtype=dtype)
        m.graph.node.extend(em.nodes)
        m.graph.initializer.extend(em.consts)
        m = autodiff.expand_private(m)
        if dtype is np.float64:
            m = _widen(m)
        del m.graph.output[:]
        ftype = helper.np_dtype_to_tensor_dtype(np.dtype(dtype))
        for k in params:
            if g[k] is None:
                raise AssertionError(f"no gradient reached {k}")
            m.graph.output.append(helper.make_tensor_value_info(g[k], ftype, None))
        if dtype is np.float64:
            got = _reference(m).run(None, p64)
            grads = dict(zip(params, got))
        else:
            import onnxruntime as ort

            so = ort.SessionOptions()
            so.log_severity_level = 3
            sess = ort.InferenceSession(m.SerializeToString(), so, providers=["CPUExecutionProvider"])
            ort_grads = dict(zip(params, sess.run(None, {k: v.astype(np.float32) for k, v in params.items()})))

    loss_model = _with_loss(expanded, outputs, weights, np.float64)
    ref = _reference(loss_model)

    def loss(feed):
        return float(ref.run(None, feed)[0])

    fd_err = 0.0
    for k, v in p64.items():
        fd = np.zeros_like(v)
        for idx in np.ndindex(v.shape):
            plus, minus = dict(p64), dict(p64)
            plus[k], minus[k] = v.copy(), v.copy()
            plus[k][idx] += delta
            minus[k][idx] -= delta
            fd[idx] = (loss(plus) - loss(minus)) / (2 * delta)
        fd_err = max(fd_err, _rel(grads[k], fd))
    rt_err = max(_rel(ort_grads[k], grads[k]) for k in params)
    return Result(fd_err, rt_err)


def _reference(model: onnx.ModelProto):
    """onnx's reference evaluator, with three of its ops made exact: Erf and Gelu (it computes erf in float32) and
    grouped ConvTranspose (it reshapes the weight as if group were 1)."""
    import math

    from onnx.reference import ReferenceEvaluator
    from onnx.reference.op_run import OpRun
    from onnx.reference.ops.op_conv_transpose import ConvTranspose as _Base

    class Erf(OpRun):
        def _run(self, x):
            return (np.vectorize(math.erf, otypes=[np.float64])(x).astype(x.dtype),)

    class Gelu(OpRun):
        def _run(self, x, approximate="none"):
            if approximate == "tanh":
                return (0.5 * x * (1 + np.tanh(math.sqrt(2 / math.pi) * (x + 0.044715 * x ** 3))),)
            return (0.5 * x * (1 + np.vectorize(math.erf, otypes=[np.float64])(x / math.sqrt(2))).astype(x.dtype),)

    class ConvTranspose(_Base):
        def _run(self, X, W, B=None, group=None, **attrs):
            group = group or 1
            if group == 1:
                return _Base._run(self, X, W, B, group=1, **attrs)
            ci, co = X.shape[1] // group, W.shape[1]
            parts = [_Base._run(self, X[:, g * ci:(g + 1) * ci], W[g * ci:(g + 1) * ci],
                                None if B is None else B[g * co:(g + 1) * co], group=1, **attrs)[0]
                     for g in range(group)]
            return (np.concatenate(parts, axis=1),)

    return ReferenceEvaluator(model, new_ops=[Erf, Gelu, ConvTranspose])


def _widen(model: onnx.ModelProto) -> onnx.ModelProto:
    """float32 constants (an expansion writes the training graph's type) as float64, in place."""
    for i, t in enumerate(model.graph.initializer):
        if t.data_type == TensorProto.FLOAT:
            model.graph.initializer[i].CopyFrom(numpy_helper.from_array(numpy_helper.to_array(t).astype(np.float64),
                                                                        t.name))
    return model


def _rel(a, b) -> float:
    a, b = np.asarray(a, np.float64), np.asarray(b, np.float64)
    if a.shape != b.shape:
        return float("inf")
    return float(np.max(np.abs(a - b)) / max(np.max(np.abs(b)), 1e-6))


def _all_outputs(model: onnx.ModelProto) -> onnx.ModelProto:
    m = onnx.ModelProto()
    m.CopyFrom(model)
    del m.graph.output[:]
    for n in m.graph.node:
        for o in n.output:
            if o:
                m.graph.output.append(onnx.ValueInfoProto(name=o))
    return m


__all__ = ["check", "Result", "TensorProto"]
