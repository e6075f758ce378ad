"""Where a model keeps its samples (part of the data stage). Inside onnxprune every array holds
samples on axis 0; models do not always: a recurrent state is `[layers, batch, hidden]`, a CTC
recognizer answers `[time, batch, classes]`, and a sample rate is one scalar for every sample.

A `Layout` records, per input, the axis that holds samples (found from the graph's declared
dimensions), the inputs that hold one value for all samples (constants), and per output its
sample axis (measured). It converts arrays both ways, wraps sessions so they take and give
samples first, and makes the samples-first *view* of a graph that training runs on.
"""
from __future__ import annotations

import copy
from collections import Counter
from dataclasses import dataclass, field

import numpy as np
import onnx

from .plumbing import move_axis, sample_axes

SUFFIX = "__model_layout"  # the tensor in the model's own layout, inside a view


@dataclass
class Layout:
    inputs: dict[str, int]  # sampled inputs -> the axis their samples lie on
    constants: dict[str, np.ndarray] = field(default_factory=dict)  # inputs with one value for every sample
    outputs: dict[str, int | None] = field(default_factory=dict)  # None: not per sample
    ranks: dict[str, int] = field(default_factory=dict)  # of the outputs
    fixed_batch: int | None = None

    @property
    def plain(self) -> bool:
        """Samples on axis 0 everywhere and no constant inputs: nothing to convert."""
        return (not self.constants and all(a == 0 for a in self.inputs.values())
                and all(a in (0, None) for a in self.outputs.values()))

    def to_model(self, arrays: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
        """Samples-first arrays of the sampled inputs → the model's own feed (constants added)."""
        feed = {k: np.moveaxis(v, 0, self.inputs[k]) if self.inputs.get(k, 0) else v for k, v in arrays.items()}
        return {**feed, **self.constants}

    def to_samples(self, name: str, value: np.ndarray) -> np.ndarray:
        axis = self.outputs.get(name)
        return np.moveaxis(value, axis, 0) if axis else value

    def view(self, model: onnx.ModelProto) -> onnx.ModelProto:
        """`model` taking and giving samples first: a Transpose after each input whose samples lie
        elsewhere and before each such output (graph input and output names kept; the tensor in
        the model's layout is renamed with SUFFIX), constant inputs bound as initializers."""
        if self.plain:
            return model
        m = copy.deepcopy(model)
        g = m.graph
        moved_in = {k: a for k, a in self.inputs.items() if a}
        moved_out = {k: a for k, a in self.outputs.items() if a}
        rename = {k: k + SUFFIX for k in [*moved_in, *moved_out]}
        for n in g.node:
            n.input[:] = [rename.get(i, i) for i in n.input]
            n.output[:] = [rename.get(o, o) if o in moved_out else o for o in n.output]
            rename_in_bodies(n, rename)
        front = []
        for vi in g.input:
            if vi.name in moved_in:
                dims = list(vi.type.tensor_type.shape.dim)
                rank, axis = len(dims), moved_in[vi.name]
                front.append(move_axis(vi.name, 0, axis, rank, rename[vi.name]))
                order = [dims[axis], *dims[:axis], *dims[axis + 1:]]
                copies = [copy.deepcopy(d) for d in order]
                del vi.type.tensor_type.shape.dim[:]
                vi.type.tensor_type.shape.dim.extend(copies)
        back = []
        for vi in g.output:
            if vi.name in moved_out:
                back.append(move_axis(rename[vi.name], moved_out[vi.name], 0, self.ranks[vi.name], vi.name))
                vi.type.tensor_type.ClearField("shape")
        nodes = front + list(g.node) + back
        del g.node[:]
        g.node.extend(nodes)
        dtypes = {vi.name: onnx.helper.tensor_dtype_to_np_dtype(vi.type.tensor_type.elem_type) for vi in g.input
                  if vi.name in self.constants}  # the graph's own type (a half model trains in float32)
        for vi in [vi for vi in g.input if vi.name in self.constants]:
            g.input.remove(vi)
        g.initializer.extend(onnx.numpy_helper.from_array(np.asarray(v).astype(dtypes.get(k, v.dtype)), k)
                             for k, v in self.constants.items())
        del g.value_info[:]
        return m

    def view_shapes(self, shapes: dict[str, tuple[int, ...]]) -> dict[str, tuple[int, ...]]:
        """Tensor shapes of the model (its own layout) as the view has them."""
        out = dict(shapes)
        for name, axis in [*self.inputs.items(), *self.outputs.items()]:
            if axis and name in shapes:
                s = list(shapes[name])
                out[name + SUFFIX] = tuple(s)
                out[name] = (s.pop(axis), *s)
        return out


def rename_in_bodies(node: onnx.NodeProto, rename: dict[str, str]) -> None:
    """Outer tensors read inside If/Loop bodies follow a rename (bodies see the outer scope)."""
    for a in node.attribute:
        for sub in ([a.g] if a.type == onnx.AttributeProto.GRAPH else list(a.graphs)):
            for n in sub.node:
                n.input[:] = [rename.get(i, i) for i in n.input]
                rename_in_bodies(n, rename)
            for o in sub.output:  # a body may pass an outer tensor straight out
                o.name = rename.get(o.name, o.name)


class LayoutSession:
    """An ORT session that takes and gives samples first (constants fed by itself)."""

    def __init__(self, sess, layout: Layout) -> None:
        self.sess, self.layout = sess, layout
        self.fixed_batch = layout.fixed_batch

    def run(self, names, feed):
        names = names or [o.name for o in self.sess.get_outputs()]
        outs = self.sess.run(names, self.layout.to_model(feed))
        return [self.layout.to_samples(n, o) for n, o in zip(names, outs)]

    def get_outputs(self):
        return self.sess.get_outputs()

    def get_inputs(self):
        return [i for i in self.sess.get_inputs() if i.name in self.layout.inputs]


def input_axes(specs) -> dict[str, int | None]:
    """The sample axis of each input, from its declared dimensions: the dimension name the inputs
    share (`batch` in input [batch, T] and state [2, batch, 128]); without one, the axis whose size
    is the first input's fixed batch, or each input's first dynamic dimension. None: the input has
    no sample axis (a scalar, a fixed-shape flag), so it holds one value for every sample."""
    counts = Counter(d for s in specs for d in dict.fromkeys(x for x in s.dims if isinstance(x, str)))
    shared = [p for p, c in counts.items() if c >= 2]
    if shared:
        first = {p: min((s.dims.index(p) for s in specs if p in s.dims)) for p in shared}
        batch = max(shared, key=lambda p: (counts[p], -first[p]))
        return {s.name: s.dims.index(batch) if batch in s.dims else _first_dynamic(s.dims) for s in specs}
    lead = next((s.dims[0] for s in specs if s.dims), None)  # scalars (a sample rate) have no batch
    if isinstance(lead, int):
        out = {}
        for s in specs:
            hits = [k for k, d in enumerate(s.dims) if d == lead]
            if hits[:1] == [0]:
                out[s.name] = 0
            else:
                out[s.name] = hits[0] if len(hits) == 1 else _first_dynamic(s.dims)
        return out
    return {s.name: _first_dynamic(s.dims) for s in specs}


def _first_dynamic(dims) -> int | None:
    return next((k for k, d in enumerate(dims) if not isinstance(d, int)), None)


def output_axes(run, sample: dict[str, np.ndarray], names: list[str],
                fixed: int | None) -> tuple[dict[str, int | None], dict[str, int]]:
    """The sample axis of each output, measured: the axis that grows from one sample to two (or,
    with a fixed batch b, the axis of size b, axis 0 first), and each output's rank. `run(feed)`:
    outputs on a feed of samples-first inputs. None: the output does not hold samples."""
    if fixed is None:
        one = run({k: v[:1] for k, v in sample.items()})
        two = run({k: np.concatenate([v[:1], v[:1]]) for k, v in sample.items()})
        grew = sample_axes({n: a.shape for n, a in zip(names, one)}, {n: b.shape for n, b in zip(names, two)})
        return {n: grew.get(n) for n in names}, {name: a.ndim for name, a in zip(names, one)}
    got = run({k: np.resize(v, (fixed, *v.shape[1:])) for k, v in sample.items()})
    return ({name: batch_axis(o.shape, fixed) for name, o in zip(names, got)},
            {name: o.ndim for name, o in zip(names, got)})


def batch_axis(shape, batch: int) -> int | None:
    """With a fixed batch size, the axis of that size: axis 0 first, else the only one."""
    hits = [k for k, d in enumerate(shape) if d == batch]
    return 0 if hits[:1] == [0] else (hits[0] if len(hits) == 1 else None)


