"""Reverse-mode differentiation of an ONNX graph into ONNX.

`backward(model, loss, wrt, shapes)` returns the nodes that compute d loss / d w for every `w` in
`wrt`, as plain ONNX ops any ONNX Runtime runs on any execution provider. One vector-Jacobian rule
per op type, registered with `@rule("Op")`: a rule receives a `Node` (the forward node, the
gradient of each of its outputs, which inputs need one, every tensor's real shape) and returns one
gradient name (or None) per input. Training batches are always full, so every shape is static and
rules build their reshapes, reductions and paddings from constants.

Rules are written in ops with fast kernels: Conv's input gradient is a ConvTranspose and its
weight gradient a Conv with batch and channels swapped; MaxPool's gradient routes through a
one-hot grouped Conv/ConvTranspose pair (no Indices output, whose CPU kernel is ~20x slower);
broadcast gradients are summed back to the input's shape. `tests/test_autodiff.py` checks every
rule against float64 finite differences.

    @rule("Tanh")
    def tanh(n):                       # d tanh(x) = (1 − y²) dx
        return [n.mul(n.dy, n.sub(n.f(1), n.mul(n.y, n.y)))]
"""
from __future__ import annotations

import math
from typing import Callable

import numpy as np
import onnx
from onnx import helper, numpy_helper

from .errors import OnnxPruneError

PREFIX = "onnxprune_grad"
RULES: dict[str, Callable[["Node"], list]] = {}
# ops of the training graph's own domain: a composite written as one node so that its gradient can
# be one analytic rule, then replaced by its primitive forward once the backward pass is built
PRIVATE_DOMAIN = "ai.onnxprune.training"
EXPANSIONS: dict[str, Callable[[onnx.NodeProto, int], tuple[list, list]]] = {}  # (node, opset) -> nodes, constants
# ops whose outputs carry no gradient (integer, boolean or piecewise-constant results, shapes)
NO_GRADIENT = {"Shape", "Size", "Greater", "Less", "Equal", "GreaterOrEqual", "LessOrEqual", "Not", "And", "Or",
               "Xor", "ArgMax", "ArgMin", "NonZero", "ConstantOfShape", "Range", "OneHot", "IsNaN", "IsInf",
               "RandomNormalLike", "RandomUniformLike", "EyeLike", "Constant", "NonMaxSuppression"}
# ops that are piecewise constant: their gradient is zero almost everywhere, which trains nothing
FLAT = {"Floor", "Ceil", "Round", "Sign"}
ROUTES = ("routes that need no gradient through it: --mode layerwise (each layer trained alone), "
          "--method magnitude (one-shot), with --quantize int8 for post-training int8; "
          "or --exclude the layers before it")


def rule(*ops: str):
    def register(fn):
        for op in ops:
            RULES[op] = fn
        return fn
    return register


class Emitter:
    """Where the backward pass's nodes and constants go; names are unique and prefixed."""

    def __init__(self, dtype=np.float32, opset: int = 17) -> None:
        self.nodes: list[onnx.NodeProto] = []
        self.consts: list[onnx.TensorProto] = []
        self.dtype, self.opset = np.dtype(dtype), opset
        self._n = 0
        self._cache: dict = {}

    def fresh(self, what: str) -> str:
        self._n += 1
        return f"{PREFIX}/{what}_{self._n}"

    def op(self, op: str, inputs: list[str], outputs: int = 1, **attrs):
        names = [self.fresh(op) for _ in range(outputs)]
        self.nodes.append(helper.make_node(op, inputs, names, name=names[0], **attrs))
        return names[0] if outputs == 1 else names

    def const(self, value: np.ndarray) -> str:
        value = np.asarray(value)
        key = (value.dtype.str, value.shape, value.tobytes())
        if key not in self._cache:
            name = self.fresh("const")
            self.consts.append(numpy_helper.from_array(value, name))
            self._cache[key] = name
        return self._cache[key]

    def f(self, value) -> str:
        """A float constant in the graph's float type."""
        return self.const(np.asarray(value, self.dtype))

    def i64(self, value) -> str:
        return self.const(np.asarray(value, np.int64))


class Node:
    """What a rule sees: the forward node, its output gradients, and helpers to emit ops."""

    def __init__(self, node: onnx.NodeProto, dys: list[str | None], need: list[bool], shapes: dict, em: Emitter,
                 values: dict[str, np.ndarray]) -> None:
        self.node, self.dys, self.need, self.shapes, self.em, self.values = node, dys, need, shapes, em, values
        self.attrs = {a.name: helper.get_attribute_value(a) for a in node.attribute}

    # --- the node
    @property
    def x(self) -> str:
        return self.node.input[0]

    @property
    def y(self) -> str:
        return self.node.output[0]

    @property
    def dy(self) -> str:
        return self.dys[0]

    def input(self, i: int) -> str | None:
        return self.node.input[i] if len(self.node.input) > i and self.node.input[i] else None

    def attr(self, name: str, default=None):
        v = self.attrs.get(name, default)
        return v.decode() if isinstance(v, bytes) else v

    def shape(self, name: str) -> tuple[int, ...]:
        if name not in self.shapes:
            raise OnnxPruneError(f"the shape of {name} (read by {self.node.op_type} node {self.node.name}) is unknown")
        return tuple(int(d) for d in self.shapes[name])

    def value(self, i: int) -> np.ndarray | None:
        """A constant input's value (axes, pads, repeats), or None when it is computed."""
        name = self.input(i)
        return None if name is None else self.values.get(name)

    def fail(self, why: str):
        raise OnnxPruneError(f"cannot differentiate {self.node.op_type} node {self.node.name or self.y}: {why}; {ROUTES}")

    # --- emitting
    def op(self, op: str, inputs: list[str], outputs: int = 1, **attrs):
        return self.em.op(op, inputs, outputs, **attrs)

    def f(self, value) -> str:
        return self.em.f(value)

    def i64(self, value) -> str:
        return self.em.i64(value)

    def mul(self, a, b):
        return self.op("Mul", [a, b])

    def add(self, a, b):
        return self.op("Add", [a, b])

    def sub(self, a, b):
        return self.op("Sub", [a, b])

    def div(self, a, b):
        return self.op("Div", [a, b])

    def where(self, cond, a, b):
        return self.op("Where", [cond, a, b])

    def keep(self, cond, a):
        """a where cond holds, else 0, as a · float(cond): ORT's Where with a scalar branch runs
        about 6× slower than this on its CPU kernels."""
        return self.mul(a, self.cast(cond))

    def cast(self, cond):
        return self.op("Cast", [cond], to=helper.np_dtype_to_tensor_dtype(self.em.dtype))

    def zeros(self, shape) -> str:
        return self.op("ConstantOfShape", [self.i64(list(shape))],
                       value=numpy_helper.from_array(np.zeros(1, self.em.dtype)))

    def reshape(self, x: str, shape) -> str:
        return self.op("Reshape", [x, self.i64(list(shape))])

    def transpose(self, x: str, perm) -> str:
        return self.op("Transpose", [x], perm=list(perm))

    def reduce_sum(self, x: str, axes, keepdims: int = 1) -> str:
        return self.op("ReduceSum", [x, self.i64(list(axes))], keepdims=keepdims)

    def expand(self, x: str, shape) -> str:
        return self.op("Expand", [x, self.i64(list(shape))])

    def unbroadcast(self, g: str, gshape, shape) -> str:
        """`g` (of the broadcast shape) summed back to `shape`."""
        gshape, shape = tuple(gshape), tuple(shape)
        if gshape == shape:
            return g
        lead = len(gshape) - len(shape)
        axes = list(range(lead)) + [lead + i for i, d in enumerate(shape) if d == 1 and gshape[lead + i] != 1]
        if axes:
            g = self.reduce_sum(g, axes, keepdims=1)
        return self.reshape(g, shape)

    def broadcast_grad(self, g: str, i: int) -> str:
        """The gradient `g` of this node's output, for input i of an elementwise broadcast op."""
        return self.unbroadcast(g, self.shape(self.y), self.shape(self.node.input[i]))


# --------------------------------------------------------------------------- the backward pass

def differentiable_path(nodes: list[onnx.NodeProto], wrt: set[str], loss: str) -> tuple[set[str], list[int]]:
    """The tensors that depend on `wrt` through differentiable edges, and the nodes (by index, in
    graph order) that lie between `wrt` and `loss`."""
    active = set(wrt)
    for n in nodes:
        if n.op_type in NO_GRADIENT:
            continue
        if any(i in active for i in n.input if i):
            active.update(o for o in _grad_outputs(n) if o)
    needed = {loss}
    on_path = []
    for k in range(len(nodes) - 1, -1, -1):
        n = nodes[k]
        if n.op_type in NO_GRADIENT or not any(o in needed for o in n.output):
            continue
        ins = [i for i in n.input if i in active]
        if ins:
            on_path.append(k)
            needed.update(ins)
    return active, on_path[::-1]


def _grad_outputs(n: onnx.NodeProto) -> list[str]:
    """Outputs that carry a gradient (not MaxPool's or TopK's indices, not a Dropout mask)."""
    if n.op_type in ("MaxPool", "TopK", "Dropout", "SoftmaxCrossEntropyLoss") and len(n.output) > 1:
        return list(n.output[:1]) if n.op_type != "SoftmaxCrossEntropyLoss" else list(n.output)
    return list(n.output)


def backward(model: onnx.ModelProto, loss: str, wrt: list[str], shapes: dict[str, tuple[int, ...]],
             dtype=np.float32, seed: str | None = None) -> tuple[Emitter, dict[str, str]]:
    """The nodes (in the returned Emitter) that compute the gradient of the scalar `loss` with
    respect to each tensor of `wrt`, and the name of each gradient (None where `loss` does not
    depend on it). `seed`: a tensor holding d(objective)/d(loss) (default 1)."""
    graph = model.graph
    em = Emitter(dtype, _opset(model))
    values = {t.name: numpy_helper.to_array(t) for t in graph.initializer if int(np.prod(t.dims)) <= 64}
    for n in graph.node:
        if n.op_type == "Constant" and n.attribute and n.attribute[0].name == "value":
            t = n.attribute[0].t
            if int(np.prod(t.dims)) <= 64:
                values[n.output[0]] = numpy_helper.to_array(t)
    nodes = list(graph.node)
    active, on_path = differentiable_path(nodes, set(wrt), loss)
    grads: dict[str, list[str]] = {loss: [seed or em.f(1.0)]}

    def total(name: str) -> str | None:
        parts = grads.get(name)
        if not parts:
            return None
        if len(parts) > 1:
            grads[name] = [em.op("Sum", parts)]
        return grads[name][0]

    for k in reversed(on_path):
        n = nodes[k]
        dys = [total(o) if o else None for o in n.output]
        if all(d is None for d in dys):
            continue
        if n.domain not in ("", "ai.onnx", PRIVATE_DOMAIN):
            raise OnnxPruneError(f"no gradient rule for op {n.domain}.{n.op_type} (node {n.name or n.output[0]}), "
                                 f"which lies between the weights and the loss; {ROUTES}")
        if n.op_type in FLAT:
            raise OnnxPruneError(f"op {n.op_type} (node {n.name or n.output[0]}) lies between the weights and the "
                                 f"loss, and its gradient is zero almost everywhere: nothing before it would train; {ROUTES}")
        fn = RULES.get(n.op_type)
        if fn is None:
            raise OnnxPruneError(f"no gradient rule for op {n.op_type} (node {n.name or n.output[0]}), which lies "
                                 f"between the weights and the loss; {ROUTES}")
        need = [bool(i) and i in active for i in n.input]
        out = fn(Node(n, dys, need, shapes, em, values))
        for i, (name, g) in enumerate(zip(n.input, out)):
            if g is not None and need[i]:
                grads.setdefault(name, []).append(g)
    return em, {w: total(w) for w in wrt}


def expand_private(model: onnx.ModelProto) -> onnx.ModelProto:
    """A copy of `model` with every node of the private domain replaced by its primitive forward
    (`EXPANSIONS`), which names the same outputs; the private opset import is dropped."""
    if not any(n.domain == PRIVATE_DOMAIN for n in model.graph.node):
        return model
    m = onnx.ModelProto()
    m.CopyFrom(model)
    body = []
    for n in m.graph.node:
        if n.domain == PRIVATE_DOMAIN:
            nodes, consts = EXPANSIONS[n.op_type](n, _opset(m))
            body.extend(nodes)
            m.graph.initializer.extend(consts)
        else:
            body.append(n)
    del m.graph.node[:]
    m.graph.node.extend(body)
    keep = [o for o in m.opset_import if o.domain != PRIVATE_DOMAIN]
    del m.opset_import[:]
    m.opset_import.extend(keep)
    return m


def _opset(model: onnx.ModelProto) -> int:
    return next((o.version for o in model.opset_import if o.domain in ("", "ai.onnx")), 17)


# --------------------------------------------------------------------------- elementwise rules

@rule("Identity", "Dropout")
def identity(n):  # Dropout in a training graph is the inference op: the identity
    return [n.dy]


@rule("Cast", "CastLike")
def cast(n):
    return [n.dy]  # float to float (the training graph is float32); casts to integers carry no gradient


@rule("Neg")
def neg(n):
    return [n.op("Neg", [n.dy])]


@rule("Relu")
def relu(n):
    return [n.keep(n.op("Greater", [n.y, n.f(0)]), n.dy)]


@rule("LeakyRelu")
def leaky_relu(n):
    alpha = n.attr("alpha", 0.01)  # slope 1 above 0, α below: α + (1 − α)·[x > 0]
    slope = n.add(n.mul(n.cast(n.op("Greater", [n.x, n.f(0)])), n.f(1 - alpha)), n.f(alpha))
    return [n.mul(n.dy, slope)]


@rule("ThresholdedRelu")
def thresholded_relu(n):
    return [n.keep(n.op("Greater", [n.x, n.f(n.attr("alpha", 1.0))]), n.dy)]


@rule("Sigmoid")
def sigmoid(n):
    return [n.mul(n.dy, n.mul(n.y, n.sub(n.f(1), n.y)))]


@rule("Tanh")
def tanh(n):
    return [n.mul(n.dy, n.sub(n.f(1), n.mul(n.y, n.y)))]


@rule("Exp")
def exp(n):
    return [n.mul(n.dy, n.y)]


@rule("Log")
def log(n):
    return [n.div(n.dy, n.x)]


@rule("Abs")
def abs_(n):
    return [n.mul(n.dy, n.op("Sign", [n.x]))]


@rule("Sqrt")
def sqrt(n):  # ½/√x, and 0 (not NaN) at x = 0, where a weight group may sit exactly
    positive = n.op("Greater", [n.y, n.f(0)])
    safe = n.add(n.y, n.cast(n.op("Not", [positive])))  # y, or 1 where y is 0
    return [n.keep(positive, n.div(n.mul(n.dy, n.f(0.5)), safe))]


@rule("Reciprocal")
def reciprocal(n):
    return [n.op("Neg", [n.mul(n.dy, n.mul(n.y, n.y))])]


@rule("Sin")
def sin(n):
    return [n.mul(n.dy, n.op("Cos", [n.x]))]


@rule("Cos")
def cos(n):
    return [n.op("Neg", [n.mul(n.dy, n.op("Sin", [n.x]))])]


@rule("Erf")
def erf(n):
    return [n.mul(n.dy, n.mul(n.f(2 / math.sqrt(math.pi)), n.op("Exp", [n.op("Neg", [n.mul(n.x, n.x)])])))]


@rule("Gelu")
def gelu(n):
    x = n.x
    if n.attr("approximate", "none") == "tanh":  # ½x(1 + tanh u), u = √(2/π)(x + 0.044715x³)
        c = math.sqrt(2 / math.pi)
        x2 = n.mul(x, x)
        u = n.mul(n.f(c), n.add(x, n.mul(n.f(0.044715), n.mul(x2, x))))
        t = n.op("Tanh", [u])
        du = n.mul(n.f(c), n.add(n.f(1), n.mul(n.f(3 * 0.044715), x2)))
        d = n.add(n.mul(n.f(0.5), n.add(n.f(1), t)),
                  n.mul(n.mul(n.f(0.5), x), n.mul(n.sub(n.f(1), n.mul(t, t)), du)))
        return [n.mul(n.dy, d)]
    cdf = n.mul(n.f(0.5), n.add(n.f(1), n.op("Erf", [n.mul(x, n.f(1 / math.sqrt(2)))])))
    pdf = n.mul(n.f(1 / math.sqrt(2 * math.pi)), n.op("Exp", [n.mul(n.f(-0.5), n.mul(x, x))]))
    return [n.mul(n.dy, n.add(cdf, n.mul(x, pdf)))]


@rule("Softplus")
def softplus(n):
    return [n.mul(n.dy, n.op("Sigmoid", [n.x]))]


@rule("Softsign")
def softsign(n):
    den = n.add(n.f(1), n.op("Abs", [n.x]))
    return [n.div(n.dy, n.mul(den, den))]


@rule("Elu", "Celu", "Selu")
def elu(n):
    op = n.node.op_type
    alpha = n.attr("alpha", {"Selu": 1.67326319217681884765625}.get(op, 1.0))
    gamma = n.attr("gamma", 1.05070102214813232421875) if op == "Selu" else 1.0
    positive = n.op("Greater", [n.x, n.f(0)])
    if op == "Celu":  # α(exp(x/α) − 1): slope exp(x/α) = y/α + 1
        slope = n.add(n.mul(n.y, n.f(1 / alpha)), n.f(1))
    else:  # γα(exp(x) − 1): slope y + γα
        slope = n.add(n.y, n.f(gamma * alpha))
    up = n.cast(positive)  # γ above 0, the exponential's slope below
    return [n.mul(n.dy, n.add(n.mul(up, n.f(gamma)), n.mul(n.sub(n.f(1), up), slope)))]


@rule("HardSigmoid")
def hard_sigmoid(n):
    alpha, beta = n.attr("alpha", 0.2), n.attr("beta", 0.5)
    t = n.add(n.mul(n.x, n.f(alpha)), n.f(beta))
    inside = n.op("And", [n.op("Greater", [t, n.f(0)]), n.op("Less", [t, n.f(1)])])
    return [n.keep(inside, n.mul(n.dy, n.f(alpha)))]


@rule("HardSwish")
def hard_swish(n):  # x·clamp(x/6 + ½, 0, 1): slope x/3 + ½ inside (−3, 3), 1 above, 0 below
    above = n.cast(n.op("Greater", [n.x, n.f(3)]))
    inside = n.cast(n.op("And", [n.op("Greater", [n.x, n.f(-3)]), n.op("Less", [n.x, n.f(3)])]))
    slope = n.add(above, n.mul(inside, n.add(n.mul(n.x, n.f(1 / 3)), n.f(0.5))))
    return [n.mul(n.dy, slope)]


@rule("Mish")
def mish(n):  # x·tanh(sp(x)): tanh(sp) + x·σ(x)·(1 − tanh²(sp))
    t = n.op("Tanh", [n.op("Softplus", [n.x])])
    d = n.add(t, n.mul(n.mul(n.x, n.op("Sigmoid", [n.x])), n.sub(n.f(1), n.mul(t, t))))
    return [n.mul(n.dy, d)]


@rule("Clip")
def clip(n):
    lo, hi = n.input(1), n.input(2)
    inside = None
    for bound, op in ((lo, "GreaterOrEqual"), (hi, "LessOrEqual")):
        if bound:
            c = n.op(op, [n.x, bound])
            inside = c if inside is None else n.op("And", [inside, c])
    return [n.dy if inside is None else n.keep(inside, n.dy), None, None]


@rule("PRelu")
def prelu(n):
    x, slope = n.node.input[:2]
    positive = n.op("Greater", [n.x, n.f(0)])
    up = n.cast(positive)
    dx = n.mul(n.dy, n.add(up, n.mul(n.sub(n.f(1), up), slope))) if n.need[0] else None
    dx = dx and n.broadcast_grad(dx, 0)
    ds = n.broadcast_grad(n.keep(n.op("Not", [positive]), n.mul(n.dy, x)), 1) if n.need[1] else None
    return [dx, ds]


# --------------------------------------------------------------------------- broadcasting arithmetic

@rule("Add")
def add(n):
    return [n.broadcast_grad(n.dy, i) if n.need[i] else None for i in range(2)]


@rule("Sub")
def sub(n):  # negated after the sum to b's shape, on the smaller tensor
    return [n.broadcast_grad(n.dy, 0) if n.need[0] else None,
            n.op("Neg", [n.broadcast_grad(n.dy, 1)]) if n.need[1] else None]


@rule("Mul")
def mul(n):
    a, b = n.node.input[:2]
    if a == b:  # a square: 2·a·dy, one gradient instead of two summed
        return [n.mul(n.mul(n.dy, a), n.f(2)), None]
    return [n.broadcast_grad(n.mul(n.dy, b), 0) if n.need[0] else None,
            n.broadcast_grad(n.mul(n.dy, a), 1) if n.need[1] else None]


@rule("Div")
def div(n):
    a, b = n.node.input[:2]
    da = n.broadcast_grad(n.div(n.dy, b), 0) if n.need[0] else None
    db = n.op("Neg", [n.div(n.broadcast_grad(n.mul(n.dy, n.y), 1), b)]) if n.need[1] else None
    return [da, db]


@rule("Pow")
def pow_(n):
    a, b = n.node.input[:2]
    da = db = None
    if n.need[0]:  # b·a^(b−1)
        da = n.broadcast_grad(n.mul(n.dy, n.mul(b, n.op("Pow", [a, n.sub(b, n.f(1))]))), 0)
    if n.need[1]:  # y·ln a (a > 0)
        db = n.broadcast_grad(n.mul(n.dy, n.mul(n.y, n.op("Log", [a]))), 1)
    return [da, db]


@rule("Where")
def where(n):
    c = n.node.input[0]
    return [None,
            n.unbroadcast(n.keep(c, n.dy), n.shape(n.y), n.shape(n.node.input[1])) if n.need[1] else None,
            n.unbroadcast(n.keep(n.op("Not", [c]), n.dy), n.shape(n.y), n.shape(n.node.input[2])) if n.need[2] else None]


@rule("Sum", "Mean")
def variadic_sum(n):
    g = n.dy if n.node.op_type == "Sum" else n.mul(n.dy, n.f(1 / len(n.node.input)))
    return [n.broadcast_grad(g, i) if n.need[i] else None for i in range(len(n.node.input))]


@rule("Max", "Min")
def variadic_extreme(n):
    """The gradient goes to the inputs equal to the result, split evenly where several are."""
    ins = list(n.node.input)
    hits = [n.op("Cast", [n.op("Equal", [i, n.y])], to=_float_type(n)) for i in ins]
    count = hits[0] if len(hits) == 1 else n.op("Sum", hits)
    share = n.div(n.dy, count)
    return [n.broadcast_grad(n.mul(share, h), k) if n.need[k] else None for k, h in enumerate(hits)]


def _float_type(n: Node) -> int:
    return helper.np_dtype_to_tensor_dtype(n.em.dtype)


# --------------------------------------------------------------------------- linear algebra

@rule("MatMul")
def matmul(n):
    a, b = n.node.input[:2]
    sa, sb, sy = n.shape(a), n.shape(b), n.shape(n.y)
    g = n.dy
    da = db = None
    if len(sa) == 1 or len(sb) == 1:  # vector operands: make them matrices, as the op does
        a2 = n.reshape(a, (1, sa[0])) if len(sa) == 1 else a
        b2 = n.reshape(b, (sb[0], 1)) if len(sb) == 1 else b
        sa2 = (1, sa[0]) if len(sa) == 1 else sa
        sb2 = (sb[0], 1) if len(sb) == 1 else sb
        sy2 = _matmul_shape(sa2, sb2)
        g2 = n.reshape(g, sy2)
        da2, db2 = _matmul_grads(n, a2, b2, g2, sa2, sb2, sy2)
        return [n.reshape(da2, sa) if da2 else None, n.reshape(db2, sb) if db2 else None]
    da, db = _matmul_grads(n, a, b, g, sa, sb, sy)
    return [da, db]


def _matmul_shape(sa, sb):
    batch = np.broadcast_shapes(tuple(sa[:-2]), tuple(sb[:-2]))
    return (*batch, sa[-2], sb[-1])


def _swap_last(rank: int) -> list[int]:
    return list(range(rank - 2)) + [rank - 1, rank - 2]


def _matmul_grads(n, a, b, g, sa, sb, sy):
    da = db = None
    if len(sb) == 2 and len(sa) >= 2:  # the common layer: activations [..., K] × weight [K, M]
        if n.need[0]:
            da = n.op("MatMul", [g, n.transpose(b, [1, 0])])
        if n.need[1]:  # one GEMM over every leading dim: Aᵀ·G
            a2 = n.reshape(a, (-1, sa[-1])) if len(sa) > 2 else a
            g2 = n.reshape(g, (-1, sy[-1])) if len(sy) > 2 else g
            db = n.op("Gemm", [a2, g2], transA=1)
        return da, db
    if n.need[0]:
        da = n.unbroadcast(n.op("MatMul", [g, n.transpose(b, _swap_last(len(sb)))]), (*sy[:-2], *sa[-2:]), sa)
    if n.need[1]:
        db = n.unbroadcast(n.op("MatMul", [n.transpose(a, _swap_last(len(sa))), g]), (*sy[:-2], *sb[-2:]), sb)
    return da, db


@rule("Gemm")
def gemm(n):
    a, b = n.node.input[:2]
    c = n.input(2)
    alpha, beta = n.attr("alpha", 1.0), n.attr("beta", 1.0)
    ta, tb = n.attr("transA", 0), n.attr("transB", 0)
    g = n.dy
    out = [None, None, None]
    if n.need[0]:  # dA' = α·G·B'ᵀ
        out[0] = (n.op("Gemm", [g, b], alpha=alpha, transB=1 - tb) if not ta
                  else n.op("Gemm", [b, g], alpha=alpha, transA=tb, transB=1))
    if n.need[1]:  # dB' = α·A'ᵀ·G
        out[1] = (n.op("Gemm", [a, g], alpha=alpha, transA=1 - ta) if not tb
                  else n.op("Gemm", [g, a], alpha=alpha, transA=1, transB=ta))
    if c and n.need[2]:
        gc = n.mul(g, n.f(beta)) if beta != 1 else g
        out[2] = n.unbroadcast(gc, n.shape(n.y), n.shape(c))
    return out


# --------------------------------------------------------------------------- convolution

def conv_geometry(n: Node, x_shape, y_shape, k_shape) -> tuple[list, list, list, list]:
    """strides, dilations, pads at the start and pads at the end (auto_pad resolved), per
    spatial axis, of a Conv/pool with input `x_shape`, output `y_shape` and kernel `k_shape`."""
    r = len(k_shape)
    s = list(n.attr("strides", [1] * r))
    d = list(n.attr("dilations", [1] * r))
    pads = list(n.attr("pads", [0] * 2 * r))
    auto = n.attr("auto_pad", "NOTSET")
    if auto in ("SAME_UPPER", "SAME_LOWER"):
        for i in range(r):
            total = max((y_shape[i] - 1) * s[i] + (k_shape[i] - 1) * d[i] + 1 - x_shape[i], 0)
            small, big = total // 2, total - total // 2
            pads[i], pads[r + i] = (small, big) if auto == "SAME_UPPER" else (big, small)
    elif auto == "VALID":
        pads = [0] * 2 * r
    return s, d, pads[:r], pads[r:]


def _leftover(x_len, y_len, k, s, d, pb, pe) -> int:
    """Input positions past the last window (ConvTranspose's output_padding that restores them)."""
    return x_len + pb + pe - ((y_len - 1) * s + (k - 1) * d + 1)


def conv_input_grad(n: Node, g: str, w: str, x_shape, y_shape, k_shape, group: int) -> str:
    """d x of y = Conv(x, w): the adjoint, a ConvTranspose of g with the same geometry."""
    s, d, pb, pe = conv_geometry(n, x_shape, y_shape, k_shape)
    extra = [_leftover(x_shape[i], y_shape[i], k_shape[i], s[i], d[i], pb[i], pe[i]) for i in range(len(s))]
    # output_padding must stay below the stride; larger leftovers are padded on after
    op_pad = [min(e, max(s[i], d[i]) - 1) for i, e in enumerate(extra)]
    dx = n.op("ConvTranspose", [g, w], strides=s, dilations=d, pads=pb + pe, group=group, output_padding=op_pad)
    rest = [e - o for e, o in zip(extra, op_pad)]
    if any(rest):
        r = len(s)
        dx = n.op("Pad", [dx, n.i64([0, 0] + [0] * r + [0, 0] + rest)])
    return dx


def conv_weight_grad(n: Node, x: str, g: str, x_shape, y_shape, w_shape, group: int) -> str:
    """d w of y = Conv(x, w), in whichever of two forms suits the kernel on ORT's CPU kernels
    (benchmarks/device.py --step-time): for kernels of 16 taps and more, a Conv of the input with
    batch and channels swapped and the output gradient as its kernel; for smaller ones, whose
    swapped Conv is a GEMM only Πk wide (3×3: 2.5× slower than the other form), the input unfolded
    into its windows (im2col by strided Slices, or the input itself for a 1×1 kernel) and one
    batched MatMul with the output gradient per group, summed over the batch."""
    if int(np.prod(w_shape[2:])) >= 16:
        return _weight_grad_swapped(n, x, g, x_shape, y_shape, w_shape, group)
    N, C = x_shape[:2]
    O, k = w_shape[0], list(w_shape[2:])
    r = len(k)
    s, d, pb, pe = conv_geometry(n, x_shape[2:], y_shape[2:], k)
    ys = list(y_shape[2:])
    length = int(np.prod(ys))
    cg, og = C // group, O // group
    if all(v == 1 for v in k + s) and not any(pb + pe):  # 1×1: the input is its own im2col
        cols = n.reshape(x, (N, group, cg, length))
    else:
        if any(pb + pe):
            x = n.op("Pad", [x, n.i64([0, 0] + pb + [0, 0] + pe)])
        axes = n.i64(list(range(2, 2 + r)))
        taps = []
        for tap in np.ndindex(*k):  # window position `tap` of every output: a strided Slice
            start = [t * d[i] for i, t in enumerate(tap)]
            end = [start[i] + (ys[i] - 1) * s[i] + 1 for i in range(r)]
            taps.append(n.op("Unsqueeze", [n.op("Slice", [x, n.i64(start), n.i64(end), axes, n.i64(s)]), n.i64([2])]))
        cols = n.op("Concat", taps, axis=2) if len(taps) > 1 else taps[0]  # [N, C, Πk, out…]
        cols = n.reshape(cols, (N, group, cg * int(np.prod(k)), length))  # [N, G, Cg·Πk, L]
    gt = n.transpose(n.reshape(g, (N, group, og, length)), [0, 1, 3, 2])  # [N, G, L, Og]
    dw = n.reduce_sum(n.op("MatMul", [cols, gt]), [0], keepdims=0)  # [G, Cg·Πk, Og]
    return n.reshape(n.transpose(dw, [0, 2, 1]), w_shape)


def _weight_grad_swapped(n: Node, x: str, g: str, x_shape, y_shape, w_shape, group: int) -> str:
    """A Conv of the input, batch and channels swapped, with the output gradient as its kernel
    (stride and dilation trade places), summing over the batch inside."""
    N, C = x_shape[:2]
    r = len(w_shape) - 2
    k = w_shape[2:]
    s, d, pb, pe = conv_geometry(n, x_shape[2:], y_shape[2:], k)
    cg = C // group
    # the swapped Conv's end pads that make its output exactly k; an input longer than the
    # windows reach is cut instead (pads cannot be negative)
    ends, cuts = [], []
    for i in range(r):
        need = (k[i] - 1) * d[i] + (y_shape[2 + i] - 1) * s[i] + 1 - x_shape[2 + i] - pb[i]
        ends.append(max(need, 0))
        cuts.append(x_shape[2 + i] + min(need, 0))
    if any(c < x_shape[2 + i] for i, c in enumerate(cuts)):
        x = n.op("Slice", [x, n.i64([0] * r), n.i64(cuts), n.i64(list(range(2, 2 + r)))])
    spatial = list(range(2, 2 + r))
    if group == 1:
        xt = n.transpose(x, [1, 0] + spatial)  # [C, N, …]
    else:  # [N, G, Cg, …] → [Cg, G, N, …] → [Cg, G·N, …]: group g reads its own N channels
        x5 = n.reshape(x, (N, group, cg, *x_shape[2:]))
        xt = n.reshape(n.transpose(x5, [2, 1, 0] + [3 + i for i in range(r)]), (cg, group * N, *x_shape[2:]))
    gt = n.transpose(g, [1, 0] + spatial)  # [O, N, …]
    dw = n.op("Conv", [xt, gt], strides=d, dilations=s, pads=pb + ends, group=group)  # [Cg, O, k…]
    return n.transpose(dw, [1, 0] + spatial)


def _one_hot_kernels(n: Node, channels: int, k: list[int]) -> str:
    """[channels·Πk, 1, *k]: output j of a Conv with group=channels copies tap j % Πk of its channel's window."""
    kk = int(np.prod(k))
    hot = np.zeros((channels * kk, 1, *k))
    for j in range(channels * kk):
        hot[(j, 0, *np.unravel_index(j % kk, k))] = 1
    return n.f(hot)


@rule("Conv")
def conv(n):
    x, w = n.node.input[:2]
    b = n.input(2)
    xs, ws, ys = n.shape(x), n.shape(w), n.shape(n.y)
    group = n.attr("group", 1)
    out = [None, None, None]
    if n.need[0]:
        out[0] = conv_input_grad(n, n.dy, w, xs[2:], ys[2:], ws[2:], group)
    if n.need[1]:
        out[1] = conv_weight_grad(n, x, n.dy, xs, ys, ws, group)
    if b and n.need[2]:
        out[2] = n.reduce_sum(n.dy, [0] + list(range(2, len(ys))), keepdims=0)
    return out


@rule("ConvTranspose")
def conv_transpose(n):
    """y = ConvTranspose(x, w) is the adjoint of z = Conv(y', w): dx = Conv(g, w), and dw is
    Conv's weight gradient with g as the input and x as the output gradient."""
    x, w = n.node.input[:2]
    b = n.input(2)
    xs, ws, ys = n.shape(x), n.shape(w), n.shape(n.y)
    group = n.attr("group", 1)
    r = len(ws) - 2
    s = list(n.attr("strides", [1] * r))
    d = list(n.attr("dilations", [1] * r))
    # the pads of the Conv whose adjoint this is: ConvTranspose's output spans
    # (x−1)·s + (k−1)·d + 1 + output_padding − pads, so the Conv from y back to x has these
    total = [(xs[2 + i] - 1) * s[i] + (ws[2 + i] - 1) * d[i] + 1 - ys[2 + i] for i in range(r)]
    pb = list(n.attr("pads", [0] * 2 * r))[:r]
    auto = n.attr("auto_pad", "NOTSET")
    if "output_shape" in n.attrs or auto in ("SAME_UPPER", "SAME_LOWER"):  # pads split as ORT splits them
        padding = [t + p for t, p in zip(total, n.attr("output_padding", [0] * r))]
        pb = [p // 2 if auto == "SAME_UPPER" else p - p // 2 for p in padding]
    elif auto == "VALID":
        pb = [0] * r
    pe = [total[i] - pb[i] for i in range(r)]  # output_padding beyond the windows makes it negative
    fwd = helper.make_node("Conv", [], [], strides=s, dilations=d, pads=pb + [max(p, 0) for p in pe])
    view = Node(fwd, [], [], n.shapes, n.em, n.values)
    out = [None, None, None]
    g = n.dy
    if any(p < 0 for p in pe):  # output_padding past the windows: those positions read nothing
        g = n.op("Slice", [g, n.i64([0] * r), n.i64([ys[2 + i] + min(pe[i], 0) for i in range(r)]),
                           n.i64(list(range(2, 2 + r)))])
        ys = (*ys[:2], *[ys[2 + i] + min(pe[i], 0) for i in range(r)])
    if n.need[0]:
        out[0] = n.op("Conv", [g, w], strides=s, dilations=d, pads=view.attr("pads"), group=group)
    if n.need[1]:  # Conv maps y's C_out channels to x's C_in: its weight is w, [C_in, C_out/g, k…]
        out[1] = conv_weight_grad(view, g, x, ys, xs, ws, group)
    if b and n.need[2]:
        out[2] = n.reduce_sum(n.dy, [0] + list(range(2, len(n.shape(n.y)))), keepdims=0)
    return out


# --------------------------------------------------------------------------- pooling

@rule("GlobalAveragePool")
def global_average_pool(n):
    xs = n.shape(n.x)
    return [n.expand(n.mul(n.dy, n.f(1 / int(np.prod(xs[2:])))), xs)]


@rule("GlobalMaxPool")
def global_max_pool(n):
    return [_to_extremes(n, n.x, n.y, n.dy)]


def _to_extremes(n: Node, x: str, y: str, g: str, axes=None) -> str:
    """g (of the reduced y, dims kept) to the elements of x equal to y, split evenly among ties."""
    xs = n.shape(x)
    axes = list(range(2, len(xs))) if axes is None else axes
    hit = n.op("Cast", [n.op("Equal", [x, y])], to=_float_type(n))
    count = n.reduce_sum(hit, axes, keepdims=1)
    return n.mul(hit, n.div(g, count))


@rule("AveragePool")
def average_pool(n):
    """A depthwise ConvTranspose of g/count with a kernel of ones."""
    xs, ys = n.shape(n.x), n.shape(n.y)
    k = list(n.attr("kernel_shape"))
    C, r = xs[1], len(k)
    s, d, pb, pe = conv_geometry(n, xs[2:], ys[2:], k)
    pe = [pe[i] + max(_extra_end(xs[2 + i], ys[2 + i], k[i], s[i], d[i], pb[i], pe[i]), 0) for i in range(r)]
    counts = _window_counts(xs[2:], ys[2:], k, s, d, pb, n.attr("count_include_pad", 0), pe)
    scaled = n.mul(n.dy, n.f(1 / counts))
    ones = n.f(np.ones((C, 1, *k)))
    view = helper.make_node("Conv", [], [], strides=s, dilations=d, pads=pb + pe)
    return [conv_input_grad(Node(view, [], [], n.shapes, n.em, n.values), scaled, ones, xs[2:], ys[2:], k, C)]


def _extra_end(x_len, y_len, k, s, d, pb, pe) -> int:
    """How far ceil_mode's last window reaches past the end pad."""
    return (y_len - 1) * s + (k - 1) * d + 1 - (x_len + pb + pe)


def _window_counts(x_sp, y_sp, k, s, d, pb, include_pad: int, pe) -> np.ndarray:
    """How many elements each output's window averages: real ones, or with pads too (but never
    ceil_mode's overhang)."""
    counts = np.ones(y_sp, np.float64)
    for i in range(len(k)):
        starts = np.arange(y_sp[i]) * s[i] - pb[i]
        taps = starts[:, None] + np.arange(k[i])[None, :] * d[i]
        hi = x_sp[i] + (pe[i] if include_pad else 0)
        lo = -pb[i] if include_pad else 0
        per = ((taps >= lo) & (taps < min(hi, x_sp[i] + pe[i]))).sum(1)
        shape = [1] * len(k)
        shape[i] = y_sp[i]
        counts = counts * per.reshape(shape)
    return counts


@rule("MaxPool")
def max_pool(n):
    """Each window's gradient to its first maximum: the windows unfolded by a one-hot grouped Conv
    (of the input padded with the most negative float), compared with y, the first hit kept, and
    folded back by the matching ConvTranspose."""
    if n.attr("storage_order", 0):
        n.fail("storage_order=1 is not supported")
    xs, ys = n.shape(n.x), n.shape(n.y)
    k = list(n.attr("kernel_shape"))
    C, r, kk = xs[1], len(k), int(np.prod(k))
    s, d, pb, pe = conv_geometry(n, xs[2:], ys[2:], k)
    if s == k and not any(pb + pe) and all(v == 1 for v in d) and list(xs[2:]) == [y * v for y, v in zip(ys[2:], k)]:
        return [_tiled_max_pool_grad(n, xs, ys, k)]
    pe = [pe[i] + max(_extra_end(xs[2 + i], ys[2 + i], k[i], s[i], d[i], pb[i], pe[i]), 0) for i in range(r)]
    onehot = _one_hot_kernels(n, C, k)
    low = float(np.finfo(n.em.dtype).min)
    x = n.x
    if any(pb) or any(pe):
        x = n.op("Pad", [x, n.i64([0, 0] + pb + [0, 0] + pe), n.f(low)])
    windows = n.op("Conv", [x, onehot], strides=s, dilations=d, group=C)  # [N, C·kk, out…]
    wide = (xs[0], C, kk, *ys[2:])
    hit = n.op("Cast", [n.op("Equal", [n.reshape(windows, wide), n.op("Unsqueeze", [n.y, n.i64([2])])])],
               to=_float_type(n))
    first = n.mul(hit, n.op("Cast", [n.op("Equal", [n.op("CumSum", [hit, n.i64(2)]), n.f(1)])],
                            to=_float_type(n)))
    routed = n.reshape(n.mul(first, n.op("Unsqueeze", [n.dy, n.i64([2])])), (xs[0], C * kk, *ys[2:]))
    padded_len = [xs[2 + i] + pb[i] + pe[i] for i in range(r)]
    view = helper.make_node("Conv", [], [], strides=s, dilations=d)
    dx = conv_input_grad(Node(view, [], [], n.shapes, n.em, n.values), routed, onehot, padded_len, ys[2:], k, C)
    if any(pb) or any(pe):
        dx = n.op("Slice", [dx, n.i64(pb), n.i64([pb[i] + xs[2 + i] for i in range(r)]),
                            n.i64(list(range(2, 2 + r)))])
    return [dx]


def _tiled_max_pool_grad(n: Node, xs, ys, k) -> str:
    """Windows that tile the input exactly (2×2 stride 2): each window's gradient to its maxima,
    split evenly among ties. y and the per-window share are brought to the input's size by an
    integer nearest-neighbour Resize (ORT's fast path; a broadcasting Equal over a 6-D view of the
    windows took 15× longer); ties are counted by an AveragePool of the hits."""
    scales = n.f([1.0, 1.0] + [float(v) for v in k])
    kk = int(np.prod(k))

    def up(t):
        return n.op("Resize", [t, "", scales], mode="nearest", coordinate_transformation_mode="asymmetric",
                    nearest_mode="floor")
    hit = n.cast(n.op("Equal", [n.x, up(n.y)]))
    count = n.mul(n.op("AveragePool", [hit], kernel_shape=k, strides=k), n.f(kk))
    return n.mul(hit, up(n.div(n.dy, count)))


# --------------------------------------------------------------------------- layout

@rule("Reshape", "Flatten", "Squeeze", "Unsqueeze")
def reshape(n):
    return [n.reshape(n.dy, n.shape(n.x))] + [None] * (len(n.node.input) - 1)


@rule("Transpose")
def transpose(n):
    perm = n.attr("perm") or list(range(len(n.shape(n.x))))[::-1]
    return [n.transpose(n.dy, list(np.argsort(perm)))]


@rule("Expand")
def expand(n):
    return [n.unbroadcast(n.dy, n.shape(n.y), n.shape(n.x)), None]


@rule("Tile")
def tile(n):
    xs = n.shape(n.x)
    reps = n.value(1)
    if reps is None:
        n.fail("its repeats are computed")
    split = [v for r, d in zip(reps, xs) for v in (int(r), d)]
    g = n.reshape(n.dy, split)
    return [n.reshape(n.reduce_sum(g, list(range(0, 2 * len(xs), 2)), keepdims=0), xs), None]


@rule("Concat")
def concat(n):
    axis = n.attr("axis") % len(n.shape(n.y))
    out, start = [], 0
    for i, name in enumerate(n.node.input):
        size = n.shape(name)[axis]
        out.append(n.op("Slice", [n.dy, n.i64([start]), n.i64([start + size]), n.i64([axis])]) if n.need[i] else None)
        start += size
    return out


@rule("Split")
def split(n):
    ys = [n.shape(o) for o in n.node.output]
    axis = n.attr("axis", 0) % len(ys[0])
    parts = [dy if dy is not None else n.zeros(s) for dy, s in zip(n.dys, ys)]
    return [n.op("Concat", parts, axis=axis) if len(parts) > 1 else parts[0], None]


@rule("Slice")
def slice_(n):
    """Constant starts, ends and steps: the gradient spread over the strides and padded back."""
    xs, ys = n.shape(n.x), n.shape(n.y)
    starts, ends, axes, steps = (n.value(i) for i in range(1, 5))
    if starts is None or ends is None or (n.input(3) and axes is None) or (n.input(4) and steps is None):
        n.fail("its starts, ends, axes or steps are computed")
    rank = len(xs)
    axes = [int(a) % rank for a in (axes if axes is not None else range(len(starts)))]
    steps = [int(t) for t in steps] if steps is not None else [1] * len(axes)
    g, cur = n.dy, list(ys)
    before, after = [0] * rank, [0] * rank
    for a, st, en, step in zip(axes, starts, ends, steps):
        lo = slice(int(st), int(en), step).indices(xs[a])[0]
        if ys[a] == 0:
            n.fail("it selects nothing")
        if step < 0:  # reversed: flip the gradient back; it then starts at the lowest index taken
            g = n.op("Slice", [g, n.i64([-1]), n.i64([-(2 ** 62)]), n.i64([a]), n.i64([-1])])
            step, lo = -step, lo + (ys[a] - 1) * step
        if step > 1:  # step − 1 zeros after each element, the last ones dropped
            g = n.op("Pad", [n.op("Unsqueeze", [g, n.i64([a + 1])]),
                             n.i64([0] * (rank + 1) + [step - 1 if i == a + 1 else 0 for i in range(rank + 1)])])
            cur[a] = cur[a] * step
            g = n.reshape(g, cur)
            cur[a] = (ys[a] - 1) * step + 1
            g = n.op("Slice", [g, n.i64([0]), n.i64([cur[a]]), n.i64([a])])
        before[a], after[a] = lo, xs[a] - lo - cur[a]
    if any(before) or any(after):
        g = n.op("Pad", [g, n.i64(before + after)])
    return [g] + [None] * (len(n.node.input) - 1)


@rule("Pad")
def pad(n):
    mode = n.attr("mode", "constant")
    if mode != "constant":
        n.fail(f"its gradient is written for constant padding, not {mode}")
    xs = n.shape(n.x)
    rank = len(xs)
    pads = n.value(1) if n.em.opset >= 11 else n.attr("pads")
    if pads is None:
        n.fail("its pads are computed")
    pads = [int(p) for p in pads]
    axes = n.value(3)
    if axes is not None:
        full = [0] * 2 * rank
        axes = [int(a) % rank for a in axes]
        for j, a in enumerate(axes):
            full[a], full[rank + a] = pads[j], pads[len(axes) + j]
        pads = full
    ys = n.shape(n.y)
    starts = [pads[i] for i in range(rank)]
    ends = [ys[i] - pads[rank + i] for i in range(rank)]
    # a negative pad cropped the input: those positions get no gradient, padded back with zeros
    g = n.op("Slice", [n.dy, n.i64([max(s, 0) for s in starts]), n.i64([min(e, ys[i]) for i, e in enumerate(ends)]),
                       n.i64(list(range(rank)))])
    crop = [max(-s, 0) for s in starts] + [max(-pads[rank + i], 0) for i in range(rank)]
    if any(crop):
        g = n.op("Pad", [g, n.i64(crop)])
    return [g] + [None] * (len(n.node.input) - 1)


@rule("Gather")
def gather(n):
    """Rows of a table: the gradient added back at the indices (ScatterND with reduction add at
    opset ≥ 16, a one-hot MatMul before)."""
    data, idx = n.node.input[:2]
    xs, ys = n.shape(data), n.shape(n.y)
    axis = n.attr("axis", 0) % len(xs)
    is_ = n.shape(idx)
    if axis != 0:  # move the gathered axis first and back
        perm = [axis] + [i for i in range(len(xs)) if i != axis]
        # y's layout: xs[:axis] + is_ + xs[axis+1:]; bring is_'s dims first
        k = len(is_)
        yperm = list(range(axis, axis + k)) + list(range(axis)) + list(range(axis + k, len(ys)))
        g = n.transpose(n.dy, yperm)
        inner = tuple(xs[p] for p in perm)
        d0 = _scatter_rows(n, g, idx, inner, is_)
        return [n.transpose(d0, list(np.argsort(perm))), None]
    return [_scatter_rows(n, n.dy, idx, xs, is_), None]


def _scatter_rows(n: Node, g: str, idx: str, xs, is_) -> str:
    m = int(np.prod(is_)) if is_ else 1
    rest = tuple(xs[1:])
    flat_g = n.reshape(g, (m, *rest))
    flat_i = n.reshape(idx, (m,))
    flat_i = n.op("Where", [n.op("Less", [flat_i, n.i64(0)]), n.add(flat_i, n.i64(xs[0])), flat_i])
    if n.em.opset >= 16:
        return n.op("ScatterND", [n.zeros(xs), n.op("Unsqueeze", [flat_i, n.i64([1])]), flat_g], reduction="add")
    hot = n.op("OneHot", [flat_i, n.i64(xs[0]), n.f([0, 1])], axis=-1)  # [m, rows]
    g2 = n.reshape(flat_g, (m, int(np.prod(rest)) if rest else 1))
    return n.reshape(n.op("Gemm", [hot, g2], transA=1), xs)


@rule("GatherElements")
def gather_elements(n):
    if n.em.opset < 16:
        n.fail("its gradient needs ScatterElements with reduction add (opset 16)")
    axis = n.attr("axis", 0)
    return [n.op("ScatterElements", [n.zeros(n.shape(n.x)), n.node.input[1], n.dy], axis=axis, reduction="add"),
            None]


@rule("TopK")
def top_k(n):
    axis = n.attr("axis", -1)
    return [n.op("ScatterElements", [n.zeros(n.shape(n.x)), n.node.output[1], n.dy], axis=axis), None]


@rule("DepthToSpace", "SpaceToDepth")
def depth_space(n):
    """Both are a Reshape, a Transpose and a Reshape: undone in reverse."""
    xs = n.shape(n.x)
    N, C, H, W = xs
    b = n.attr("blocksize")
    if n.node.op_type == "DepthToSpace":
        crd = n.attr("mode", "DCR") == "CRD"
        perm = [0, 1, 4, 2, 5, 3] if crd else [0, 3, 4, 1, 5, 2]
        shuffled = (N, C // (b * b), H, b, W, b)
    else:
        perm = [0, 3, 5, 1, 2, 4]
        shuffled = (N, b, b, C, H // b, W // b)
    g = n.reshape(n.dy, shuffled)
    g = n.transpose(g, list(np.argsort(perm)))
    return [n.reshape(g, xs)]


@rule("CumSum")
def cumsum(n):
    return [n.op("CumSum", [n.dy, n.node.input[1]], exclusive=n.attr("exclusive", 0),
                 reverse=1 - n.attr("reverse", 0)), None]


# --------------------------------------------------------------------------- reductions

def _reduce_axes(n: Node) -> list[int]:
    rank = len(n.shape(n.x))
    axes = n.attr("axes")
    if axes is None and n.input(1):
        axes = n.value(1)
        if axes is None:
            n.fail("its axes are computed")
    if axes is None or len(axes) == 0:
        axes = [] if n.attr("noop_with_empty_axes", 0) else list(range(rank))
    return sorted(int(a) % rank for a in axes)  # the gradient's shape does not depend on keepdims


def _kept(n: Node, g: str, axes) -> str:
    """g reshaped to the input's rank (reduced dims kept as 1)."""
    xs = n.shape(n.x)
    return n.reshape(g, [1 if i in axes else d for i, d in enumerate(xs)])


@rule("ReduceSum", "ReduceMean")
def reduce_sum(n):
    axes = _reduce_axes(n)
    xs = n.shape(n.x)
    g = _kept(n, n.dy, axes)
    if n.node.op_type == "ReduceMean":
        g = n.mul(g, n.f(1 / max(int(np.prod([xs[a] for a in axes])), 1)))
    return [n.expand(g, xs)] + [None] * (len(n.node.input) - 1)


@rule("ReduceSumSquare")
def reduce_sum_square(n):
    axes = _reduce_axes(n)
    return [n.mul(n.mul(n.x, n.f(2)), _kept(n, n.dy, axes))] + [None] * (len(n.node.input) - 1)


@rule("ReduceL2")
def reduce_l2(n):
    axes = _reduce_axes(n)
    y = _kept(n, n.y, axes)
    positive = n.op("Greater", [y, n.f(0)])
    safe = n.add(y, n.cast(n.op("Not", [positive])))  # the norm, or 1 where it is 0
    return [n.keep(positive, n.mul(n.div(n.x, safe), _kept(n, n.dy, axes)))] + [None] * (len(n.node.input) - 1)


@rule("ReduceLogSumExp")
def reduce_log_sum_exp(n):
    axes = _reduce_axes(n)
    return [n.mul(n.op("Exp", [n.sub(n.x, _kept(n, n.y, axes))]), _kept(n, n.dy, axes))] + \
        [None] * (len(n.node.input) - 1)


@rule("ReduceMax", "ReduceMin")
def reduce_max(n):
    axes = _reduce_axes(n)
    return [_to_extremes(n, n.x, _kept(n, n.y, axes), _kept(n, n.dy, axes), axes)] + \
        [None] * (len(n.node.input) - 1)


@rule("Softmax")
def softmax(n):
    axis = n.attr("axis", -1)  # training graphs are at opset ≥ 13: one axis
    gy = n.mul(n.dy, n.y)
    return [n.sub(gy, n.mul(n.y, n.reduce_sum(gy, [axis])))]


@rule("LogSoftmax")
def log_softmax(n):
    axis = n.attr("axis", -1)
    return [n.sub(n.dy, n.mul(n.op("Exp", [n.y]), n.reduce_sum(n.dy, [axis])))]


@rule("SoftmaxCrossEntropyLoss")
def softmax_cross_entropy(n):
    """Mean reduction over the labels (classes on axis 1): (softmax − onehot(label)) / count."""
    if n.attr("reduction", "mean") != "mean" or n.input(2) or "ignore_index" in n.attrs:
        n.fail("only the mean reduction without weights or ignore_index is supported")
    scores, labels = n.node.input[:2]
    ss = n.shape(scores)
    count = int(np.prod(ss)) // ss[1]
    if len(n.node.output) > 1:
        p = n.op("Exp", [n.node.output[1]])
    else:
        p = n.op("Softmax", [scores], axis=1)
        if len(ss) > 2:
            n.fail("needs its log_prob output for spatial labels")
    hot = n.op("OneHot", [labels, n.i64(ss[1]), n.f([0, 1])], axis=1)
    g = n.mul(n.sub(p, hot), n.mul(n.dy, n.f(1 / count)))
    if len(n.node.output) > 1 and n.dys[1] is not None:  # a loss that also reads log_prob
        g = n.add(g, n.sub(n.dys[1], n.mul(p, n.reduce_sum(n.dys[1], [1]))))
    return [g, None]
