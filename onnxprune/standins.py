"""Expansions: composite ops (recurrent layers, normalizations, Resize, LRN) replaced in the
*training graph only* by an equal composition of primitive ops that have gradient rules
(`autodiff.RULES`); the written model keeps the user's own ops. Unrolling an LSTM over its real
sequence length once is simpler, and as fast, as a hand-written rule for its whole recurrence.

One function per op, registered by op type. It gets the node, the real tensor shapes and a
builder for constants, and returns the nodes that compute the same output (or None when it
cannot, e.g. a Resize that is not a whole-number nearest upsampling). Every replacement is checked
on random inputs of the real shape against the original op before it is used; one that differs is
not used, and the op is then refused by name as any op without a rule.

    @standin("LRN")
    def lrn(s: Sub) -> list[NodeProto]:   # x / (bias + α/size · Σ_window x²)^β
"""
from __future__ import annotations

import copy
from dataclasses import dataclass, field
from typing import Callable

import numpy as np
import onnx
from onnx import helper, numpy_helper

from . import autodiff
from .plumbing import default_opset, first_line, log, session, session_options

STANDINS: dict[str, Callable] = {}
PREFIX = "onnxprune_standin"


def standin(*ops: str):
    def register(fn):
        for op in ops:
            STANDINS[op] = fn
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


def _reduce(s: Sub, op: str, x: str, axes: list[int], what: str, output: str | None = None) -> onnx.NodeProto:
    """A keepdims reduction over `axes`: an attribute before opset 18, an input from 18 on
    (ReduceSum from 13)."""
    if s.opset >= 18 or (op == "ReduceSum" and s.opset >= 13):
        return s.op(op, [x, s.const(f"{what}_axes", np.array(axes, np.int64))], what, output=output, keepdims=1)
    return s.op(op, [x], what, output=output, axes=axes, keepdims=1)


def normalize(s: Sub, axes: list[int], eps: float, folded: bool = False) -> list:
    """(x − mean) / √(var + ε) over `axes`, as ReduceMean, Sub, Mul, Sqrt and Div. `folded`: stop
    at `centered` and `inv_std` = 1/√(var + ε), for a caller that folds a scale into the latter."""
    nodes = [_reduce(s, "ReduceMean", s.x, axes, "mean"), s.op("Sub", [s.x, s.name("mean")], "centered"),
             s.op("Mul", [s.name("centered"), s.name("centered")], "sq"),
             _reduce(s, "ReduceMean", s.name("sq"), axes, "var"),
             s.op("Add", [s.name("var"), s.const("eps", np.float32(eps))], "var_eps"),
             s.op("Sqrt", [s.name("var_eps")], "std")]
    if folded:
        return nodes + [s.op("Reciprocal", [s.name("std")], "inv_std")]
    return nodes + [s.op("Div", [s.name("centered"), s.name("std")], "normed")]


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


def apply(model: onnx.ModelProto, shapes: dict[str, tuple[int, ...]]) -> tuple[onnx.ModelProto, list[str]]:
    """A copy of `model` with every op that has a stand-in replaced by it (where the stand-in
    reproduces the op on the real shapes), and what was replaced."""
    table = STANDINS
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
    return m, [f"{op}×{n} trained as its expansion into primitive ops (the written model keeps {op})"
               for op, n in sorted(done.items())]


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


def without_rule(model: onnx.ModelProto) -> list[onnx.NodeProto]:
    """The nodes of `model` (after its expansions) that no gradient rule covers."""
    return [n for n in model.graph.node if n.domain not in ("", "ai.onnx")
            or (n.op_type not in autodiff.RULES and n.op_type not in autodiff.NO_GRADIENT)]
