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


@standin("GlobalMaxPool")
def global_max_pool(s: Sub):
    """A MaxPool whose window is the whole spatial extent (MaxPool has a gradient)."""
    shape = s.shapes.get(s.x)
    if shape is None or len(shape) < 3:
        return None
    return [s.op("MaxPool", [s.x], "pool", output=s.y, kernel_shape=list(shape[2:]))]


@standin("Resize")
def resize_nearest(s: Sub):
    """Nearest upsampling by whole factors as Reshape → Expand → Reshape: each value repeated
    f times along each spatial axis (Expand's gradient is a sum)."""
    a = s.attrs
    mode = a.get("mode", b"nearest")
    mode = mode.decode() if isinstance(mode, bytes) else mode
    src, dst = s.shapes.get(s.x), s.shapes.get(s.y)
    if mode != "nearest" or src is None or dst is None or len(src) != len(dst) or len(src) < 3:
        return None
    if src[:2] != dst[:2] or any(d % c for c, d in zip(src[2:], dst[2:])):
        return None
    factors = [d // c for c, d in zip(src[2:], dst[2:])]
    spread = [0, 0] + [v for c in src[2:] for v in (c, 1)]
    grid = [1, 1] + [v for f in factors for v in (1, f)]
    return [s.op("Reshape", [s.x, s.const("spread", np.array(spread, np.int64))], "spread"),
            s.op("Expand", [s.name("spread"), s.const("grid", np.array(grid, np.int64))], "repeat"),
            s.op("Reshape", [s.name("repeat"), s.const("out", np.array([0, 0, *dst[2:]], np.int64))], "y",
                 output=s.y)]


def apply(model: onnx.ModelProto, shapes: dict[str, tuple[int, ...]]) -> tuple[onnx.ModelProto, list[str]]:
    """A copy of `model` with every op that has a stand-in replaced by it (where the stand-in
    reproduces the op on the real shapes), and what was replaced."""
    m = copy.deepcopy(model)
    graph, opset = m.graph, default_opset(m)
    inits = {t.name: t for t in graph.initializer}
    body, done, checked = [], {}, {}
    for node in graph.node:
        fn = STANDINS.get(node.op_type) if node.domain in ("", "ai.onnx") else None
        s = Sub(node, shapes, opset)
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


def _same(node, nodes, consts, inits, shapes, model, tolerance: float = 1e-5) -> bool:
    """Do `nodes` compute what `node` computes, on random inputs of the real shape?"""
    x, y = node.input[0], node.output[0]
    if x not in shapes:
        return False
    rng = np.random.default_rng(0)
    feed = {x: (3 * rng.standard_normal(shapes[x])).astype(np.float32)}
    needed = [copy.deepcopy(inits[i]) for i in node.input[1:] if i in inits]

    def run(body):
        g = helper.make_graph(body, "check", [helper.make_tensor_value_info(x, onnx.TensorProto.FLOAT, None)],
                              [onnx.ValueInfoProto(name=y)], needed + list(consts))
        mm = helper.make_model(g, opset_imports=model.opset_import, ir_version=model.ir_version)
        return session(mm, f"the {node.op_type} check", session_options(optimize=False)).run(None, feed)[0]
    try:
        want, got = run([node]), run(nodes)
    except Exception as e:  # a stand-in that cannot run here is not used
        log.debug("stand-in for %s not used: %s", node.op_type, first_line(e))
        return False
    return want.shape == got.shape and float(np.abs(want - got).max()) <= tolerance * max(1.0, float(np.abs(want).max()))
