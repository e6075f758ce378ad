"""Differentiable stand-ins: ops ONNX Runtime 1.19 cannot differentiate, or cannot run backward on
CPU, replaced in the *training graph only* by an equal composition of ops it can (the list comes
from a probe: docs/gradients.md, `benchmarks/probe_gradients.py`). The written model keeps the
user's own ops.

One function per op, registered by op type. It gets the node, the real tensor shapes ORT measured
and a builder for constants, and returns the nodes that compute the same output (or None when it
cannot, e.g. a Resize that is not a whole-number nearest upsampling). Every replacement is checked
on random inputs of the real shape against the original op before it is used; one that differs is
not used, and ORT's refusal names the op as before.

    @standin("HardSigmoid")
    def hard_sigmoid(s: Sub) -> list[NodeProto]:   # max(0, min(1, αx + β)) = relu(t) − relu(t − 1)
"""
from __future__ import annotations

import copy
from dataclasses import dataclass, field
from typing import Callable

import numpy as np
import onnx
from onnx import helper, numpy_helper

from .errors import NativeCrash, OnnxPruneError
from .plumbing import default_opset, first_line, log, session, session_options

STANDINS: dict[str, Callable] = {}
FALLBACKS: dict[str, Callable] = {}  # for ops whose ORT gradient works, but crashed in some graph
PREFIX = "onnxprune_standin"
# ops ORT 1.19 trains through on CPU as they are (docs/gradients.md, benchmarks/probe_gradients.py)
KNOWN_TRAINABLE = {
    "Relu", "LeakyRelu", "Sigmoid", "Tanh", "Erf", "Exp", "Abs", "Neg", "Sqrt", "Log", "Reciprocal", "Gelu", "Clip",
    "Dropout", "Identity", "Cast", "MaxPool", "GlobalAveragePool", "Pad", "BatchNormalization", "Softmax",
    "LogSoftmax", "Transpose", "Flatten", "Reshape", "Squeeze", "Unsqueeze", "Slice", "Split", "Concat", "Tile",
    "Expand", "Gather", "Where", "Add", "Sub", "Mul", "Div", "Pow", "Max", "Min", "ReduceMean", "ReduceSum",
    "ReduceL2", "ReduceLogSumExp", "MatMul", "Gemm", "Conv", "TopK", "SoftmaxCrossEntropyLoss"}
# ops whose ORT 1.19 gradient kills the process instead of failing: never trained through
CRASHES = {"AveragePool": "its CPU gradient kernel dies with a floating-point exception (SIGFPE)",
           "If": "the gradient through an If aborts (SIGABRT); where an input selects the branch, fixing it "
                 "with --input NAME=VALUE folds the If"}


def standin(*ops: str, fallback: bool = False):
    """Register a stand-in; a `fallback` one replaces an op ORT can train, and is used only after
    ORT's own gradient of the graph crashed."""
    def register(fn):
        for op in ops:
            (FALLBACKS if fallback else STANDINS)[op] = fn
        return fn
    return register


@dataclass
class Sub:
    """What a stand-in sees: the node, real shapes, and where its new constants go."""

    node: onnx.NodeProto
    shapes: dict[str, tuple[int, ...]]
    opset: int
    small: dict[str, np.ndarray] = field(default_factory=dict)  # the model's small constants (scales, axes)
    consts: list[onnx.TensorProto] = field(default_factory=list)

    @property
    def x(self) -> str:
        return self.node.input[0]

    @property
    def y(self) -> str:
        return self.node.output[0]

    @property
    def attrs(self) -> dict:
        return {a.name: helper.get_attribute_value(a) for a in self.node.attribute}

    def name(self, what: str) -> str:
        return f"{PREFIX}/{self.node.name or self.y}/{what}"

    def const(self, what: str, value) -> str:
        name = self.name(f"const_{what}")  # constants and node outputs share one namespace
        if any(t.name == name for t in self.consts):
            return name
        self.consts.append(numpy_helper.from_array(np.asarray(value), name))
        return name

    def op(self, op: str, inputs: list[str], what: str, output: str | None = None, **attrs) -> onnx.NodeProto:
        return helper.make_node(op, inputs, [output or self.name(what)], name=self.name(what), **attrs)


def _clamp01(s: Sub, t: str, nodes: list, output: str) -> None:
    """min(1, max(0, t)) as relu(t) − relu(t − 1): Relu and Sub have gradients everywhere ORT trains."""
    one = s.const("one", np.float32(1))
    nodes += [s.op("Relu", [t], "relu_t"), s.op("Sub", [t, one], "t_minus_1"),
              s.op("Relu", [s.name("t_minus_1")], "relu_t1"),
              s.op("Sub", [s.name("relu_t"), s.name("relu_t1")], "clamp", output=output)]


@standin("HardSigmoid")
def hard_sigmoid(s: Sub):
    a = s.attrs
    nodes = [s.op("Mul", [s.x, s.const("alpha", np.float32(a.get("alpha", 0.2)))], "ax"),
             s.op("Add", [s.name("ax"), s.const("beta", np.float32(a.get("beta", 0.5)))], "t")]
    _clamp01(s, s.name("t"), nodes, s.y)
    return nodes


@standin("HardSwish")
def hard_swish(s: Sub):
    """x · HardSigmoid(x) with α = 1/6, β = 1/2."""
    nodes = [s.op("Mul", [s.x, s.const("alpha", np.float32(1 / 6))], "ax"),
             s.op("Add", [s.name("ax"), s.const("beta", np.float32(0.5))], "t")]
    _clamp01(s, s.name("t"), nodes, s.name("hsig"))
    nodes.append(s.op("Mul", [s.x, s.name("hsig")], "y", output=s.y))
    return nodes


def _elu(s: Sub, alpha: float, scale: float, inner: float, output: str) -> list:
    """scale·(relu(x) + α·(exp(min(x, 0)/inner) − 1)), with min(x, 0) = x − relu(x): ELU (inner 1,
    scale 1), SELU (scale γ), CELU (inner α)."""
    nodes = [s.op("Relu", [s.x], "pos"), s.op("Sub", [s.x, s.name("pos")], "neg")]
    neg = s.name("neg")
    if inner != 1:
        nodes.append(s.op("Mul", [neg, s.const("inv_inner", np.float32(1 / inner))], "neg_scaled"))
        neg = s.name("neg_scaled")
    nodes += [s.op("Exp", [neg], "exp"), s.op("Sub", [s.name("exp"), s.const("one", np.float32(1))], "expm1"),
              s.op("Mul", [s.name("expm1"), s.const("alpha", np.float32(alpha))], "tail")]
    if scale == 1:
        return nodes + [s.op("Add", [s.name("pos"), s.name("tail")], "y", output=output)]
    return nodes + [s.op("Add", [s.name("pos"), s.name("tail")], "sum"),
                    s.op("Mul", [s.name("sum"), s.const("gamma", np.float32(scale))], "y", output=output)]


@standin("Elu")
def elu(s: Sub):
    return _elu(s, s.attrs.get("alpha", 1.0), 1.0, 1.0, s.y)


@standin("Selu")
def selu(s: Sub):
    a = s.attrs
    return _elu(s, a.get("alpha", 1.67326319217681884765625), a.get("gamma", 1.05070102214813232421875), 1.0, s.y)


@standin("Celu")
def celu(s: Sub):
    alpha = s.attrs.get("alpha", 1.0)
    return _elu(s, alpha, 1.0, alpha, s.y)


def _softplus(s: Sub, output: str) -> list:
    """log(1 + exp(x)) = relu(x) + log(1 + exp(−|x|)), which never overflows."""
    return [s.op("Relu", [s.x], "pos"), s.op("Abs", [s.x], "abs"), s.op("Neg", [s.name("abs")], "nabs"),
            s.op("Exp", [s.name("nabs")], "exp"), s.op("Add", [s.name("exp"), s.const("one", np.float32(1))], "1p"),
            s.op("Log", [s.name("1p")], "log1p"), s.op("Add", [s.name("pos"), s.name("log1p")], "sp", output=output)]


@standin("Softplus")
def softplus(s: Sub):
    return _softplus(s, s.y)


@standin("Mish")
def mish(s: Sub):
    """x · tanh(softplus(x))."""
    return _softplus(s, s.name("softplus")) + [s.op("Tanh", [s.name("softplus")], "tanh"),
                                               s.op("Mul", [s.x, s.name("tanh")], "y", output=s.y)]


@standin("Softsign")
def softsign(s: Sub):
    """x / (1 + |x|)."""
    return [s.op("Abs", [s.x], "abs"), s.op("Add", [s.name("abs"), s.const("one", np.float32(1))], "den"),
            s.op("Div", [s.x, s.name("den")], "y", output=s.y)]


@standin("ThresholdedRelu")
def thresholded_relu(s: Sub):
    """x where x > α, else 0 (the comparison carries no gradient, as in the op)."""
    return [s.op("Greater", [s.x, s.const("alpha", np.float32(s.attrs.get("alpha", 1.0)))], "above"),
            s.op("Where", [s.name("above"), s.x, s.const("zero", np.float32(0))], "y", output=s.y)]


@standin("PRelu")
def prelu(s: Sub):
    """relu(x) + slope · min(x, 0), with min(x, 0) = x − relu(x); the slope stays trainable."""
    slope = s.node.input[1]
    return [s.op("Relu", [s.x], "pos"), s.op("Sub", [s.x, s.name("pos")], "neg"),
            s.op("Mul", [s.name("neg"), slope], "tail"), s.op("Add", [s.name("pos"), s.name("tail")], "y", output=s.y)]


def _reduce(s: Sub, op: str, x: str, axes: list[int], what: str, output: str | None = None) -> onnx.NodeProto:
    """A keepdims reduction over `axes`: an attribute before opset 18, an input from 18 on
    (ReduceSum from 13)."""
    if s.opset >= 18 or (op == "ReduceSum" and s.opset >= 13):
        return s.op(op, [x, s.const(f"{what}_axes", np.array(axes, np.int64))], what, output=output, keepdims=1)
    return s.op(op, [x], what, output=output, axes=axes, keepdims=1)


def normalize(s: Sub, axes: list[int], eps: float) -> list:
    """(x − mean) / √(var + ε) over `axes`, as ReduceMean, Sub, Mul, Sqrt and Div."""
    return [_reduce(s, "ReduceMean", s.x, axes, "mean"), s.op("Sub", [s.x, s.name("mean")], "centered"),
            s.op("Mul", [s.name("centered"), s.name("centered")], "sq"), _reduce(s, "ReduceMean", s.name("sq"), axes, "var"),
            s.op("Add", [s.name("var"), s.const("eps", np.float32(eps))], "var_eps"),
            s.op("Sqrt", [s.name("var_eps")], "std"), s.op("Div", [s.name("centered"), s.name("std")], "normed")]


@standin("LayerNormalization")
def layer_norm(s: Sub):
    """ORT's LayerNormalization gradient builder asserts on the optional outputs real exports omit."""
    shape = s.shapes.get(s.x)
    if shape is None or any(o for o in s.node.output[1:]):
        return None
    axis = s.attrs.get("axis", -1) % len(shape)
    nodes = normalize(s, list(range(axis, len(shape))), s.attrs.get("epsilon", 1e-5))
    nodes.append(s.op("Mul", [s.name("normed"), s.node.input[1]], "scaled",
                      output=None if len(s.node.input) > 2 and s.node.input[2] else s.y))
    if len(s.node.input) > 2 and s.node.input[2]:
        nodes.append(s.op("Add", [s.name("scaled"), s.node.input[2]], "y", output=s.y))
    return nodes


@standin("InstanceNormalization")
def instance_norm(s: Sub):
    shape = s.shapes.get(s.x)
    if shape is None or len(shape) < 3:
        return None
    per_channel = s.const("per_channel", np.array([-1] + [1] * (len(shape) - 2), np.int64))
    return normalize(s, list(range(2, len(shape))), s.attrs.get("epsilon", 1e-5)) + [
        s.op("Reshape", [s.node.input[1], per_channel], "scale"), s.op("Reshape", [s.node.input[2], per_channel], "bias"),
        s.op("Mul", [s.name("normed"), s.name("scale")], "scaled"),
        s.op("Add", [s.name("scaled"), s.name("bias")], "y", output=s.y)]


@standin("Sum", "Mean")
def variadic_sum(s: Sub):
    """A chain of Adds (Mean: then divided by the count)."""
    ins = [i for i in s.node.input if i]
    nodes, acc = [], ins[0]
    last = len(ins) - 1 if s.node.op_type == "Sum" else len(ins)
    for k, t in enumerate(ins[1:], 1):
        nodes.append(s.op("Add", [acc, t], f"acc{k}", output=s.y if k == last else None))
        acc = s.name(f"acc{k}")
    if s.node.op_type == "Mean":
        nodes.append(s.op("Mul", [acc, s.const("inv_n", np.float32(1 / len(ins)))], "y", output=s.y))
    return nodes or [s.op("Identity", [ins[0]], "y", output=s.y)]


@standin("ReduceSumSquare")
def reduce_sum_square(s: Sub):
    shape = s.shapes.get(s.x)
    if shape is None:
        return None
    axes = _axes(s, shape)
    if axes is None:
        return None
    nodes = [s.op("Mul", [s.x, s.x], "sq"), _reduce(s, "ReduceSum", s.name("sq"), axes, "sum")]
    if s.attrs.get("keepdims", 1):
        nodes[-1].output[0] = s.y
        return nodes
    kept = [d for i, d in enumerate(shape) if i not in axes]
    return nodes + [s.op("Reshape", [s.name("sum"), s.const("shape", np.array(kept, np.int64))], "y", output=s.y)]


def _axes(s: Sub, shape) -> list[int] | None:
    """A reduction's axes, from its attribute or its constant second input; None when computed."""
    axes = s.attrs.get("axes")
    if axes is None and len(s.node.input) > 1 and s.node.input[1]:
        if s.node.input[1] not in s.small:
            return None
        axes = s.small[s.node.input[1]].reshape(-1).tolist()
    if not axes:
        return [] if s.attrs.get("noop_with_empty_axes", 0) else list(range(len(shape)))
    return sorted(a % len(shape) for a in axes)


@standin("ReduceMax", "ReduceMin")
def reduce_max(s: Sub):
    """Max over any axes but the batch as a 1-D MaxPool: the reduced axes moved last and folded
    into one, the kept ones into channels (Min: of −x, negated). MaxPool has a gradient."""
    shape, out = s.shapes.get(s.x), s.shapes.get(s.y)
    axes = _axes(s, shape) if shape is not None else None
    if not axes or out is None or 0 in axes:
        return None
    kept = [a for a in range(len(shape)) if a not in axes]
    window = int(np.prod([shape[a] for a in axes]))
    nodes, x = [], s.x
    if s.node.op_type == "ReduceMin":
        nodes.append(s.op("Neg", [x], "neg"))
        x = s.name("neg")
    if kept + axes != list(range(len(shape))):
        nodes.append(s.op("Transpose", [x], "moved", perm=kept + axes))
        x = s.name("moved")
    nodes += [s.op("Reshape", [x, s.const("fold", np.array([0, -1, window], np.int64))], "fold"),
              s.op("MaxPool", [s.name("fold")], "pool", kernel_shape=[window]),
              s.op("Reshape", [s.name("pool"), s.const("out", np.array([0, *out[1:]], np.int64))], "shaped",
                   output=None if s.node.op_type == "ReduceMin" else s.y)]
    if s.node.op_type == "ReduceMin":
        nodes.append(s.op("Neg", [s.name("shaped")], "y", output=s.y))
    return nodes


@standin("DepthToSpace", "SpaceToDepth")
def depth_space(s: Sub):
    """Reshape → Transpose → Reshape, as the operator's definition spells it."""
    shape, out = s.shapes.get(s.x), s.shapes.get(s.y)
    if shape is None or out is None or len(shape) != 4:
        return None
    b = s.attrs["blocksize"]
    n, c, h, w = shape
    mode = s.attrs.get("mode", b"DCR")
    mode = mode.decode() if isinstance(mode, bytes) else mode
    if s.node.op_type == "SpaceToDepth":
        split, perm = [n, c, h // b, b, w // b, b], [0, 3, 5, 1, 2, 4]
    elif mode == "DCR":
        split, perm = [n, b, b, c // (b * b), h, w], [0, 3, 4, 1, 5, 2]
    else:
        split, perm = [n, c // (b * b), b, b, h, w], [0, 1, 4, 2, 5, 3]
    split[0] = 0  # the batch is copied from the input, whatever it is
    return [s.op("Reshape", [s.x, s.const("split", np.array(split, np.int64))], "split"),
            s.op("Transpose", [s.name("split")], "moved", perm=perm),
            s.op("Reshape", [s.name("moved"), s.const("out", np.array([0, *out[1:]], np.int64))], "y", output=s.y)]


@standin("AveragePool")
def average_pool(s: Sub):
    """A depthwise Conv with a kernel of ones, times the divisor map (ORT 1.19's AveragePool
    gradient dies with a floating-point exception). The divisor map is read off the op itself:
    AveragePool(1) / Σwindow(1), so count_include_pad and ceil_mode come out as the op does them."""
    shape, out = s.shapes.get(s.x), s.shapes.get(s.y)
    a = s.attrs
    if shape is None or out is None or len(shape) < 3:
        return None
    auto = a.get("auto_pad", b"NOTSET")
    auto = auto.decode() if isinstance(auto, bytes) else auto
    k = list(a["kernel_shape"])
    d = len(k)
    strides, dil = list(a.get("strides", [1] * d)), list(a.get("dilations", [1] * d))
    pads = list(a.get("pads", [0] * 2 * d)) if auto == "NOTSET" else [0] * 2 * d
    for i in range(d):  # auto_pad SAME_*: the padding the op computes, before or after
        if auto.startswith("SAME"):
            total = max(0, (out[2 + i] - 1) * strides[i] + (k[i] - 1) * dil[i] + 1 - shape[2 + i])
            pads[i] = total // 2 if auto == "SAME_UPPER" else total - total // 2
            pads[d + i] = total - pads[i]
    for i in range(d):  # ceil_mode's extra windows: pad the end so Conv makes them too
        need = (out[2 + i] - 1) * strides[i] + (k[i] - 1) * dil[i] + 1 - (shape[2 + i] + pads[i] + pads[d + i])
        pads[d + i] += max(0, need)
    conv = dict(kernel_shape=k, strides=strides, pads=pads, dilations=dil)
    ones = np.ones((1, 1, *shape[2:]), np.float32)
    scale = _divisor_map(s, ones, conv)
    if scale is None or scale.shape[2:] != tuple(out[2:]):
        return None
    weight = s.const("ones", np.ones((shape[1], 1, *k), np.float32))
    factor = np.float32(scale.flat[0]) if np.all(scale == scale.flat[0]) else scale.astype(np.float32)
    return [s.op("Conv", [s.x, weight], "window_sum", group=shape[1], **conv),
            s.op("Mul", [s.name("window_sum"), s.const("divisor", factor)], "y", output=s.y)]


def _divisor_map(s: Sub, ones: np.ndarray, conv: dict) -> np.ndarray | None:
    g = helper.make_graph(
        [helper.make_node("AveragePool", ["x"], ["avg"], **s.attrs),
         helper.make_node("Conv", ["x", "k"], ["sum"], **conv)], "divisor",
        [helper.make_tensor_value_info("x", onnx.TensorProto.FLOAT, list(ones.shape))],
        [onnx.ValueInfoProto(name="avg"), onnx.ValueInfoProto(name="sum")],
        [numpy_helper.from_array(np.ones((1, 1, *conv["kernel_shape"]), np.float32), "k")])
    m = helper.make_model(g, opset_imports=[helper.make_opsetid("", max(s.opset, 11))], ir_version=8)
    try:
        avg, total = session(m, "the AveragePool divisor", session_options(optimize=False)).run(None, {"x": ones})
    except Exception as e:
        log.debug("AveragePool stand-in not used: %s", first_line(e))
        return None
    return None if np.any(total == 0) else avg / total


@standin("ConvTranspose")
def conv_transpose(s: Sub):
    """ORT 1.19 has no CPU gradient kernel for ConvTranspose. The same op is a Conv over the input
    with (stride − 1) zeros inserted between its values and padded by dilation·(k − 1) − pad, with
    the kernel's in/out axes swapped (per group) and its spatial axes reversed. The weight stays
    the trained tensor: the swap and the reversal are ops on it, so its gradient flows back."""
    a = s.attrs
    shape, out = s.shapes.get(s.x), s.shapes.get(s.y)
    w = s.node.input[1]
    wshape = s.shapes.get(w)
    if shape is None or out is None or wshape is None or "output_shape" in a or _text(a.get("auto_pad", "NOTSET")) != "NOTSET":
        return None
    d = len(shape) - 2
    k = list(wshape[2:])
    g = a.get("group", 1)
    strides, dil = list(a.get("strides", [1] * d)), list(a.get("dilations", [1] * d))
    pads, extra = list(a.get("pads", [0] * 2 * d)), list(a.get("output_padding", [0] * d))
    begin = [dil[i] * (k[i] - 1) - pads[i] for i in range(d)]
    end = [dil[i] * (k[i] - 1) - pads[d + i] + extra[i] - (strides[i] - 1) for i in range(d)]
    if min(begin) < 0:
        return None
    nodes, x = [], s.x
    if max(strides) > 1:  # value, then (stride − 1) zeros, along every spatial axis
        spread = [0, 0] + [v for c in shape[2:] for v in (c, 1)]
        zeros = [0] * (2 + 2 * d) + [0, 0] + [v for st in strides for v in (0, st - 1)]
        nodes += [s.op("Reshape", [x, s.const("spread", np.array(spread, np.int64))], "spread"),
                  s.op("Pad", [s.name("spread"), s.const("zeros", np.array(zeros, np.int64))], "zeros"),
                  s.op("Reshape", [s.name("zeros"), s.const("dilated", np.array(
                      [0, 0, *[c * st for c, st in zip(shape[2:], strides)]], np.int64))], "dilated")]
        x = s.name("dilated")
    if min(end) < 0:  # crop what the zeros overshoot
        size = [c * st for c, st in zip(shape[2:], strides)]
        nodes.append(s.op("Slice", [x, s.const("starts", np.zeros(d, np.int64)),
                                    s.const("ends", np.array([n + min(e, 0) for n, e in zip(size, end)], np.int64)),
                                    s.const("axes", np.arange(2, 2 + d, dtype=np.int64))], "cropped"))
        x = s.name("cropped")
    cin, cout_g = wshape[0], wshape[1]
    nodes += [s.op("Reshape", [w, s.const("wgroups", np.array([g, cin // g, cout_g, *k], np.int64))], "wgroups"),
              s.op("Transpose", [s.name("wgroups")], "wswap", perm=[0, 2, 1, *range(3, 3 + d)]),
              s.op("Reshape", [s.name("wswap"), s.const("wconv", np.array([g * cout_g, cin // g, *k], np.int64))],
                   "wconv")]
    kernel = s.name("wconv")
    for i in range(d):  # reverse each spatial axis of the kernel
        nodes.append(s.op("Gather", [kernel, s.const(f"rev{i}", np.arange(k[i] - 1, -1, -1, dtype=np.int64))],
                          f"wflip{i}", axis=2 + i))
        kernel = s.name(f"wflip{i}")
    ins = [x, kernel] + ([s.node.input[2]] if len(s.node.input) > 2 and s.node.input[2] else [])
    nodes.append(s.op("Conv", ins, "y", output=s.y, group=g, dilations=dil, kernel_shape=k,
                      pads=begin + [max(e, 0) for e in end]))
    return nodes


class _Unrolled:
    """What the recurrent stand-ins share: per direction, the input projection x·Wᵀ for all steps
    in one MatMul (with the biases folded in where the cell allows), split into steps; the steps
    run in the direction's order; outputs are stacked as the op has them (Y [T, D, N, H], the last
    states [D, N, H]). W, R and B stay the trained tensors; constants are the stand-in's own."""

    def __init__(self, s: Sub, gates: int, slots: int, acts: list[str]) -> None:
        self.s, self.gates = s, gates
        a, self.ins = s.attrs, list(s.node.input) + [""] * (slots - len(s.node.input))
        shape = s.shapes.get(s.x)
        self.ok = not (shape is None or len(shape) != 3 or s.opset < 13 or a.get("layout", 0) or "clip" in a
                       or self.ins[4] or [_text(x) for x in a.get("activations", [])] not in ([], acts, acts * 2))
        if self.ok:
            self.hidden, self.steps = a["hidden_size"], shape[0]
            direction = _text(a.get("direction", "forward"))
            self.dirs = ["forward", "reverse"] if direction == "bidirectional" else [direction]
            self.axis0 = s.const("axis0", np.array([0], np.int64))
        self.nodes: list[onnx.NodeProto] = []

    def add(self, op: str, inputs: list[str], what: str, **attrs) -> str:
        self.nodes.append(self.s.op(op, inputs, what, **attrs))
        return self.s.name(what)

    def split(self, x: str, sizes: list[int], what: str, names: list[str], axis: int = 0) -> list[str]:
        node = self.s.op("Split", [x, self.s.const(f"{what}_sizes", np.array(sizes, np.int64))], what, axis=axis)
        del node.output[:]
        node.output.extend(self.s.name(n) for n in names)
        self.nodes.append(node)
        return list(node.output)

    def direction(self, d: int, fold_recurrent_bias: bool) -> tuple[list[str], str, str | None]:
        """Direction d's input projection per step (+ Wb, + Rb when folded), Rᵀ, and Rb when not folded."""
        s, p, gh = self.s, f"d{d}", self.gates * self.hidden
        pick = s.const(f"{p}_index", np.array(d, np.int64))
        wt = self.add("Transpose", [self.add("Gather", [self.ins[1], pick], f"{p}_W")], f"{p}_Wt", perm=[1, 0])
        rt = self.add("Transpose", [self.add("Gather", [self.ins[2], pick], f"{p}_R")], f"{p}_Rt", perm=[1, 0])
        xw, rb = self.add("MatMul", [s.x, wt], f"{p}_xw"), None
        if self.ins[3]:  # B = [Wb, Rb]
            wb, rb = self.split(self.add("Gather", [self.ins[3], pick], f"{p}_B"), [gh, gh], f"{p}_bsplit",
                                [f"{p}_Wb", f"{p}_Rb"])
            if fold_recurrent_bias:
                wb, rb = self.add("Add", [wb, rb], f"{p}_b"), None
            xw = self.add("Add", [xw, wb], f"{p}_xwb")
        parts = self.split(xw, [1] * self.steps, f"{p}_steps", [f"{p}_x{t}" for t in range(self.steps)])
        return [self.add("Squeeze", [x, self.axis0], f"{p}_t{t}_x") for t, x in enumerate(parts)], rt, rb

    def initial(self, slot: int, d: int, what: str) -> str | None:
        if not self.ins[slot]:
            return None
        return self.add("Gather", [self.ins[slot], self.s.const(f"d{d}_index", np.array(d, np.int64))], f"d{d}_{what}")

    def order(self, way: str) -> list[int]:
        return list(range(self.steps)) if way == "forward" else list(range(self.steps - 1, -1, -1))

    def finish(self, ys: list[dict[int, str]], finals: list[list[str]]) -> list[onnx.NodeProto]:
        """Y from each direction's step outputs, and the last states, in the op's output slots."""
        stacked = [[], *[[] for _ in finals[0]]]
        for d, (outs, last) in enumerate(zip(ys, finals)):
            steps = [self.add("Unsqueeze", [outs[t], self.axis0], f"d{d}_t{t}_y") for t in range(self.steps)]
            y = self.add("Concat", steps, f"d{d}_y", axis=0)  # [T, N, H]
            stacked[0].append(self.add("Unsqueeze", [y, self.s.const("axis1", np.array([1], np.int64))], f"d{d}_Y"))
            for k, state in enumerate(last):
                stacked[k + 1].append(self.add("Unsqueeze", [state, self.axis0], f"d{d}_last{k}"))
        for k, (parts, axis) in enumerate(zip(stacked, [1] + [0] * len(finals[0]))):
            if k < len(self.s.node.output) and self.s.node.output[k]:
                self.nodes.append(self.s.op("Concat", parts, f"out{k}", output=self.s.node.output[k], axis=axis))
        return self.nodes


@standin("LSTM")
def lstm(s: Sub):
    """The recurrence unrolled over the sequence's real length (ORT 1.19's LSTM gradient crashes
    or is refused): gates = x_t·Wᵀ + h·Rᵀ + b, split into i, o, f, c̃, then
    c_t = σ(f)·c + σ(i)·tanh(c̃), h_t = σ(o)·tanh(c_t). Default activations, no peepholes, clip
    or sequence_lens, layout 0."""
    u = _Unrolled(s, 4, 8, ["Sigmoid", "Tanh", "Tanh"])
    if not u.ok or u.ins[7] or s.attrs.get("input_forget", 0):
        return None
    ys, finals = [], []
    for d, way in enumerate(u.dirs):
        xs, rt, _ = u.direction(d, fold_recurrent_bias=True)
        h, c, outs = u.initial(5, d, "h0"), u.initial(6, d, "c0"), {}
        for t in u.order(way):
            q = f"d{d}_t{t}"
            gates = xs[t] if h is None else u.add("Add", [xs[t], u.add("MatMul", [h, rt], f"{q}_hr")], f"{q}_g")
            i, o, f, g = u.split(gates, [u.hidden] * 4, f"{q}_gates", [f"{q}_{k}" for k in "iofc"], axis=-1)
            ic = u.add("Mul", [u.add("Sigmoid", [i], f"{q}_si"), u.add("Tanh", [g], f"{q}_tc")], f"{q}_ic")
            # f·c_prev, with c_prev = 0 when there is no initial state: the forget gate stays on the
            # path, because ORT's Split gradient breaks when one of its outputs has none
            fc = u.add("Mul", [u.add("Sigmoid", [f], f"{q}_sf"), c if c is not None else s.const("zero", np.float32(0))],
                       f"{q}_fc")
            c = u.add("Add", [fc, ic], f"{q}_cell")
            h = outs[t] = u.add("Mul", [u.add("Sigmoid", [o], f"{q}_so"), u.add("Tanh", [c], f"{q}_tcell")], f"{q}_h")
        ys.append(outs)
        finals.append([h, c])
    return u.finish(ys, finals)


@standin("GRU")
def gru(s: Sub):
    """The recurrence unrolled as for LSTM: z, r = σ(x_t + h·R_zrᵀ + Rb_zr),
    h̃ = tanh(x_h + (r·h)·R_hᵀ + Rb_h) (or r·(h·R_hᵀ + Rb_h) with linear_before_reset), and
    h_t = (1 − z)·h̃ + z·h. Without an initial state h starts at 0."""
    u = _Unrolled(s, 3, 6, ["Sigmoid", "Tanh"])
    if not u.ok:
        return None
    hidden, before = u.hidden, s.attrs.get("linear_before_reset", 0)
    cut = lambda name, lo, hi, what: u.add("Slice", [name, s.const(f"lo{lo}", np.array([lo], np.int64)),  # noqa: E731
                                                     s.const(f"hi{hi}", np.array([hi], np.int64)),
                                                     s.const("last", np.array([-1], np.int64))], what)
    ys, finals = [], []
    for d, way in enumerate(u.dirs):
        p = f"d{d}"
        xs, rt, rb = u.direction(d, fold_recurrent_bias=False)
        r_zr, r_h = cut(rt, 0, 2 * hidden, f"{p}_Rzr"), cut(rt, 2 * hidden, 3 * hidden, f"{p}_Rh")
        if rb:
            rb = (cut(rb, 0, 2 * hidden, f"{p}_Rbzr"), cut(rb, 2 * hidden, 3 * hidden, f"{p}_Rbh"))
        order = u.order(way)
        h = u.initial(5, d, "h0")
        if h is None:  # zeros of the right shape, still on the graph's path: no special first step
            h = u.add("Mul", [cut(xs[order[0]], 0, hidden, f"{p}_first_h"), s.const("zero", np.float32(0))], f"{p}_h0")
        outs = {}
        for t in order:
            q = f"{p}_t{t}"
            hzr = u.add("MatMul", [h, r_zr], f"{q}_hzr")
            if rb:
                hzr = u.add("Add", [hzr, rb[0]], f"{q}_hzrb")
            szr = u.add("Sigmoid", [u.add("Add", [cut(xs[t], 0, 2 * hidden, f"{q}_xzr"), hzr], f"{q}_zr")], f"{q}_szr")
            z, r = cut(szr, 0, hidden, f"{q}_z"), cut(szr, hidden, 2 * hidden, f"{q}_r")
            if before:  # r·(h·R_hᵀ + Rb_h)
                hh = u.add("MatMul", [h, r_h], f"{q}_hh")
                if rb:
                    hh = u.add("Add", [hh, rb[1]], f"{q}_hhb")
                rh = u.add("Mul", [r, hh], f"{q}_rh")
            else:  # (r·h)·R_hᵀ + Rb_h
                rh = u.add("MatMul", [u.add("Mul", [r, h], f"{q}_rh0"), r_h], f"{q}_rh")
                if rb:
                    rh = u.add("Add", [rh, rb[1]], f"{q}_rhb")
            cand = u.add("Tanh", [u.add("Add", [cut(xs[t], 2 * hidden, 3 * hidden, f"{q}_xh"), rh], f"{q}_pre")],
                         f"{q}_cand")
            zd = u.add("Mul", [z, u.add("Sub", [h, cand], f"{q}_diff")], f"{q}_zd")
            h = outs[t] = u.add("Add", [cand, zd], f"{q}_h")  # h̃ + z·(h − h̃)
        ys.append(outs)
        finals.append([h])
    return u.finish(ys, finals)


@standin("RNN")
def rnn(s: Sub):
    """The recurrence unrolled as for LSTM: h_t = tanh(x_t·Wᵀ + h·Rᵀ + Wb + Rb) (ORT 1.19 has no
    RNN gradient). Default Tanh activation."""
    u = _Unrolled(s, 1, 6, ["Tanh"])
    if not u.ok:
        return None
    ys, finals = [], []
    for d, way in enumerate(u.dirs):
        xs, rt, _ = u.direction(d, fold_recurrent_bias=True)
        h, outs = u.initial(5, d, "h0"), {}
        for t in u.order(way):
            q = f"d{d}_t{t}"
            pre = xs[t] if h is None else u.add("Add", [xs[t], u.add("MatMul", [h, rt], f"{q}_hr")], f"{q}_pre")
            h = outs[t] = u.add("Tanh", [pre], f"{q}_h")
        ys.append(outs)
        finals.append([h])
    return u.finish(ys, finals)


@standin("GlobalMaxPool")
def global_max_pool(s: Sub):
    """A MaxPool whose window is the whole spatial extent (MaxPool has a gradient)."""
    shape = s.shapes.get(s.x)
    if shape is None or len(shape) < 3:
        return None
    return [s.op("MaxPool", [s.x], "pool", output=s.y, kernel_shape=list(shape[2:]))]


@standin("Resize")
def resize(s: Sub):
    """Resize on the spatial axes, which ORT 1.19 cannot run backward on CPU. Nearest upsampling
    by whole factors is Reshape → Expand → Reshape (each value repeated; Expand's gradient is a
    sum). Any other separable mode (linear, cubic, other factors) on a 4-D tensor is two MatMuls
    with the interpolation matrices of each axis, read off the op itself by resizing unit vectors."""
    a = s.attrs
    mode, coords = _text(a.get("mode", "nearest")), _text(a.get("coordinate_transformation_mode", "half_pixel"))
    src, dst = s.shapes.get(s.x), s.shapes.get(s.y)
    if src is None or dst is None or len(src) != len(dst) or len(src) < 3 or src[:2] != dst[:2]:
        return None
    if coords == "tf_crop_and_resize" or "axes" in a:  # a crop, or scales over a subset of axes
        return None
    whole = all(d % c == 0 for c, d in zip(src[2:], dst[2:]))
    if mode == "nearest" and whole and coords in ("asymmetric", "half_pixel", "pytorch_half_pixel"):
        factors = [d // c for c, d in zip(src[2:], dst[2:])]
        spread = [0, 0] + [v for c in src[2:] for v in (c, 1)]
        grid = [1, 1] + [v for f in factors for v in (1, f)]
        return [s.op("Reshape", [s.x, s.const("spread", np.array(spread, np.int64))], "spread"),
                s.op("Expand", [s.name("spread"), s.const("grid", np.array(grid, np.int64))], "repeat"),
                s.op("Reshape", [s.name("repeat"), s.const("out", np.array([0, 0, *dst[2:]], np.int64))], "y",
                     output=s.y)]
    if len(src) != 4:
        return None
    rows, cols = _interpolation(s, 2, src[2], dst[2]), _interpolation(s, 3, src[3], dst[3])
    if rows is None or cols is None:
        return None
    return [s.op("MatMul", [s.x, s.const("cols", cols.T.copy())], "along_w"),  # [N, C, H, W']
            s.op("Transpose", [s.name("along_w")], "swap", perm=[0, 1, 3, 2]),
            s.op("MatMul", [s.name("swap"), s.const("rows", rows.T.copy())], "along_h"),  # [N, C, W', H']
            s.op("Transpose", [s.name("along_h")], "y", output=s.y, perm=[0, 1, 3, 2])]


def _text(v) -> str:
    return v.decode() if isinstance(v, bytes) else str(v)


def _interpolation(s: Sub, axis: int, n_in: int, n_out: int) -> np.ndarray | None:
    """The [n_out, n_in] matrix the Resize node applies along `axis`: the node itself (same
    attributes, this axis's scale or size, the others 1) run on the n_in unit vectors."""
    ins = list(s.node.input) + [""] * (4 - len(s.node.input))
    inits = []
    if ins[2]:  # scales given: this axis keeps its own scale (the coordinates use it, not n_out/n_in)
        scales = s.small.get(ins[2])
        if scales is None:
            return None
        one = np.ones(4, np.float32)
        one[2] = scales[axis]
        inits.append(numpy_helper.from_array(one, "scales"))
        node_ins = ["x", "", "scales"]
    else:
        inits.append(numpy_helper.from_array(np.array([1, n_in, n_out, 1], np.int64), "sizes"))
        node_ins = ["x", "", "", "sizes"]
    g = helper.make_graph([helper.make_node("Resize", node_ins, ["y"], **s.attrs)], "interp",
                          [helper.make_tensor_value_info("x", onnx.TensorProto.FLOAT, [1, n_in, n_in, 1])],
                          [onnx.ValueInfoProto(name="y")], inits)
    m = helper.make_model(g, opset_imports=[helper.make_opsetid("", max(s.opset, 13))], ir_version=8)
    try:
        out = session(m, "the Resize matrices", session_options(optimize=False)).run(
            None, {"x": np.eye(n_in, dtype=np.float32).reshape(1, n_in, n_in, 1)})[0]
    except Exception as e:
        log.debug("Resize stand-in not used: %s", first_line(e))
        return None
    if out.shape != (1, n_in, n_out, 1):
        return None
    return out[0, :, :, 0].T.astype(np.float32)  # [n_out, n_in]: column k is unit vector k resized


@standin("MaxPool", fallback=True)
def max_pool_by_index(s: Sub):
    """MaxPool's values gathered from the flattened input at the indices the op itself returns:
    the same forward, and Gather's gradient instead of ORT's MaxPoolGrad, which crashed (SIGSEGV)
    in a PaddleOCR classifier although it trains the same op standalone."""
    if s.shapes.get(s.x) is None or len(s.node.output) > 1 or s.attrs.get("storage_order", 0):
        return None
    pool = s.op("MaxPool", [s.x], "values", **s.attrs)  # its values go unused
    pool.output.append(s.name("indices"))
    return [pool, s.op("Reshape", [s.x, s.const("flat", np.array([-1], np.int64))], "flat"),
            s.op("Gather", [s.name("flat"), s.name("indices")], "y", output=s.y)]


@standin("LRN")
def lrn(s: Sub):
    """y = x / (bias + α/size · Σ_window x²)^β, the sum over `size` neighbouring channels as a 1×1
    Conv with a band of ones (ORT 1.19 has no LRN gradient)."""
    shape = s.shapes.get(s.x)
    if shape is None or len(shape) < 3:
        return None
    a, c = s.attrs, shape[1]
    size = a["size"]
    lo, hi = (size - 1) // 2, size // 2  # channels c − ⌊(size−1)/2⌋ … c + ⌈(size−1)/2⌉
    band = np.zeros((c, c) + (1,) * (len(shape) - 2), np.float32)
    for i in range(c):
        band[i, max(0, i - lo): min(c, i + hi + 1)] = 1
    return [s.op("Mul", [s.x, s.x], "square"),
            s.op("Conv", [s.name("square"), s.const("band", band)], "window"),
            s.op("Mul", [s.name("window"), s.const("alpha", np.float32(a.get("alpha", 1e-4) / size))], "scaled"),
            s.op("Add", [s.name("scaled"), s.const("bias", np.float32(a.get("bias", 1.0)))], "base"),
            s.op("Pow", [s.name("base"), s.const("beta", np.float32(a.get("beta", 0.75)))], "denominator"),
            s.op("Div", [s.x, s.name("denominator")], "y", output=s.y)]


def apply(model: onnx.ModelProto, shapes: dict[str, tuple[int, ...]],
          fallback: bool = False) -> tuple[onnx.ModelProto, list[str]]:
    """A copy of `model` with every op that has a stand-in replaced by it (where the stand-in
    reproduces the op on the real shapes), and what was replaced. With `fallback`, the FALLBACKS
    too: the retry after ORT crashed on the graph."""
    table = {**STANDINS, **FALLBACKS} if fallback else STANDINS
    m = copy.deepcopy(model)
    graph, opset = m.graph, default_opset(m)
    inits = {t.name: t for t in graph.initializer}
    small = {n: numpy_helper.to_array(t) for n, t in inits.items() if int(np.prod(t.dims)) <= 8}
    body, done, checked = [], {}, {}
    for node in graph.node:
        fn = table.get(node.op_type) if node.domain in ("", "ai.onnx") else None
        s = Sub(node, shapes, opset, small)
        nodes = fn(s) if fn else None
        if nodes:
            key = (node.op_type, tuple(shapes.get(node.input[0], ())), str(sorted(s.attrs.items())),
                   tuple(i for i in node.input[1:]))
            if key not in checked:
                checked[key] = _same(node, nodes, s.consts, inits, shapes, m)
            if checked[key]:
                body.extend(nodes)
                graph.initializer.extend(s.consts)
                done[node.op_type] = done.get(node.op_type, 0) + 1
                continue
        body.append(node)
    del graph.node[:]
    graph.node.extend(body)
    return m, [f"{op}×{n} trained through a stand-in of ops ONNX Runtime can differentiate "
               f"(the written model keeps {op})" for op, n in sorted(done.items())]


def with_fallback(model: onnx.ModelProto, shapes: dict, make):
    """`make(trainable model)` on `model` with its stand-ins; after a native crash, once more with
    the FALLBACKS too, when any applies. Returns make's result and what was replaced."""
    first, notes = apply(model, shapes)
    try:
        return make(first), notes
    except NativeCrash:
        safer, more = apply(model, shapes, fallback=True)
        if more == notes:
            raise
        return make(safer), more + ["fallback stand-ins used: ONNX Runtime's own gradient of this graph crashed"]


def _same(node, nodes, consts, inits, shapes, model, tolerance: float = 1e-5) -> bool:
    """Do `nodes` compute what `node` computes (every output it has), on random inputs of the
    real shapes?"""
    outputs = [o for o in node.output if o]
    computed = list(dict.fromkeys(i for i in node.input if i and i not in inits))
    if any(i not in shapes for i in computed):
        return False
    rng = np.random.default_rng(0)
    feed = {i: (3 * rng.standard_normal(shapes[i])).astype(np.float32) for i in computed}
    needed = [copy.deepcopy(inits[i]) for i in dict.fromkeys(node.input) if i in inits]

    def run(body):
        g = helper.make_graph(body, "check", [helper.make_tensor_value_info(i, onnx.TensorProto.FLOAT, None)
                                              for i in computed],
                              [onnx.ValueInfoProto(name=o) for o in outputs], needed + list(consts))
        mm = helper.make_model(g, opset_imports=model.opset_import, ir_version=model.ir_version)
        return session(mm, f"the {node.op_type} check", session_options(optimize=False)).run(None, feed)
    try:
        want, got = run([node]), run(nodes)
    except Exception as e:  # a stand-in that cannot run here is not used
        log.debug("stand-in for %s not used: %s", node.op_type, first_line(e))
        return False
    return all(w.shape == g.shape and float(np.abs(w - g).max()) <= tolerance * max(1.0, float(np.abs(w).max()))
               for w, g in zip(want, got))


def gradient_path(model: onnx.ModelProto, trainable, losses) -> list[onnx.NodeProto]:
    """The nodes between a trainable initializer and one of the `losses` outputs."""
    reached = set(trainable)
    forward = []
    for node in model.graph.node:
        if any(i in reached for i in node.input):
            forward.append(node)
            reached.update(o for o in node.output if o)
    needed, path = set(losses), []
    for node in reversed(forward):
        if any(o in needed for o in node.output):
            path.append(node)
            needed.update(i for i in node.input if i)
    return path[::-1]


def check_crashes(model: onnx.ModelProto, trainable, losses) -> None:
    """Refuse, in one line, to train through an op whose gradient would kill the process."""
    for node in gradient_path(model, trainable, losses):
        if node.op_type in CRASHES and node.domain in ("", "ai.onnx"):
            raise OnnxPruneError(f"ONNX Runtime 1.19 cannot train through {node.op_type} node {node.name}: "
                                 f"{CRASHES[node.op_type]}, and no stand-in reproduces this one; {NO_GRADIENT_ROUTES}")


NO_GRADIENT_ROUTES = ("routes that need no gradient through it: --mode layerwise (each layer trained alone), "
                      "--method magnitude (one-shot), with --quantize int8 for post-training int8; "
                      "or --exclude the layers before it")
