"""Op rules of the channel analysis (channels.py), one small handler per op family, registered
by op type. A rule says how channels flow through its op: which output carries the input's
channels and on which axis (`a.ch[out] = (axis, ids)`), which initializers are sliced with a
channel (`cg.add_members`), and which attributes or shape constants must be fixed up when
channels are removed (`cg.edits`, applied by shrink.py). A rule that cannot follow its op
blocks the channels it reads, with a reason; an op without a rule does the same, so a new op
is safe by default and supported by adding one handler.

    @rule("Relu", "Tanh", ...)            # ops whose channels pass through unchanged
    def channelwise(a: Analysis, s: Site) -> None:
        a.ch[s.out] = a.ch[s.ins[0]]

Rules run only for nodes that read a tracked tensor, except those registered with
`makes_channels=True` (the layers), which start channels.
"""
from __future__ import annotations

from typing import TYPE_CHECKING, Callable

import numpy as np
from onnx import helper, numpy_helper

from .layers import RECURRENT

if TYPE_CHECKING:
    from .channels import Analysis, Site

RULES: dict[str, Callable] = {}


def rule(*ops: str, makes_channels: bool = False):
    def register(fn):
        fn.makes_channels = makes_channels
        for op in ops:
            if op in RULES:
                raise ValueError(f"op {op} already has a channel rule ({RULES[op].__name__})")
            RULES[op] = fn
        return fn
    return register


# ---- layers: make channels, read channels -------------------------------------------------

@rule("Conv", "ConvTranspose", makes_channels=True)
def convolution(a: Analysis, s: Site) -> None:
    x, w = s.ins[0], s.ins[1]
    b = s.ins[2] if len(s.ins) > 2 and s.ins[2] else None
    layer, group = a.prunable.get(w), s.attrs.get("group", 1)
    if layer is None or (b is not None and b not in a.inits):
        a.block_tensor(x, f"read by {s.name}, whose weight is not pruned")
        return
    in_axis, out_axis = (1, 0) if s.op == "Conv" else (0, 1)
    cin, cout = a.shapes[x][1], a.shapes[s.out][1]
    if group == 1:
        if x in a.ch:
            a.cg.add_members(a.ch[x][1], w, in_axis, "in")
        ids = a.cg.new(cout, s.name)
    elif s.op == "Conv" and group == cin == cout and x in a.ch:  # depthwise: channel c stays channel c
        ids = a.ch[x][1]
        a.cg.edits.append((s.index, _depthwise_group(s.out)))
    else:
        a.block_tensor(x, f"read by grouped convolution {s.name} (group={group})")
        return
    a.cg.add_members(ids, w, out_axis, "out")
    if b is not None:
        a.cg.add_members(ids, b, 0, "out")
    a.ch[s.out] = (1, ids)


def _depthwise_group(out: str):
    def fix(graph, node, cg, pruned, inits, opset):  # a depthwise Conv's group is its channel count
        for attr in node.attribute:
            if attr.name == "group":
                attr.i = len(cg.kept(out, pruned))
    return fix


@rule("LSTM", "GRU", "RNN", makes_channels=True)
def recurrent(a: Analysis, s: Site) -> None:
    """Hidden unit h is one channel: rows g·H + h of W and R for every gate (both directions, so
    a unit goes whole), its biases, and column h of R, which feeds it back. A unit whose gate rows
    and biases are zero outputs 0 from a zero initial state, and nothing reads it once its R
    column and its readers' slices are gone, so the shrunk layer computes what the masked one
    does. Outputs carry units on the hidden axis: Y [T, D, N, H] axis 3, Y_h and Y_c axis 2."""
    ins = s.ins + [""] * (8 - len(s.ins))
    x, w, r, b = ins[:4]
    states = [t for t in ins[5:7] if t] if s.op == "LSTM" else [t for t in ins[5:6] if t]
    if (a.prunable.get(w) is None or a.prunable.get(r) is None or (b and b not in a.inits)
            or s.attrs.get("layout", 0) or (s.op == "LSTM" and ins[7] and ins[7] not in a.inits)):
        a.block_tensor(x, f"read by {s.name}, whose weights are not pruned whole")
        return
    gates, hidden = RECURRENT[s.op], s.attrs["hidden_size"]
    if x in a.ch:
        if a.ch[x][0] == 2:
            a.cg.add_members(a.ch[x][1], w, 2, "in")
        else:
            a.block_tensor(x, f"read by {s.name} on an axis other than its features")
    ids = a.cg.new(hidden, s.name)
    for g in range(gates):
        a.cg.add_members(ids, w, 1, "out", g * hidden)
        a.cg.add_members(ids, r, 1, "out", g * hidden)
    a.cg.add_members(ids, r, 2, "in")
    if b:
        for k in range(2 * gates):
            a.cg.add_members(ids, b, 1, "out", k * hidden)
    if s.op == "LSTM" and ins[7]:  # peepholes [D, 3H]: only sliced
        for k in range(3):
            a.cg.add_members(ids, ins[7], 1, "aux", k * hidden)
    for t in states:
        if t in a.inits:
            a.cg.add_members(ids, t, 2, "aux")
        else:
            a.cg.block(ids, f"{s.name}'s initial state {t} is computed by the graph")
    outs = [o for o in s.node.output[:3] if o]
    for k, o in enumerate(s.node.output[:3]):
        if o:
            a.ch[o] = (3 if k == 0 else 2, ids)
    a.cg.edits.append((s.index, _hidden_size(outs[0])))


def _hidden_size(out: str):
    def fix(graph, node, cg, pruned, inits, opset):
        for attr in node.attribute:
            if attr.name == "hidden_size":
                attr.i = len(cg.kept(out, pruned))
    return fix


@rule("Gemm", makes_channels=True)
def gemm(a: Analysis, s: Site) -> None:
    x, w = s.ins[0], s.ins[1]
    c = s.ins[2] if len(s.ins) > 2 and s.ins[2] else None
    layer, trans_b = a.prunable.get(w), s.attrs.get("transB", 0)
    if layer is None or s.attrs.get("transA", 0) or len(a.shapes[x]) != 2:
        a.block_tensor(x, f"read by {s.name}, whose weight is not pruned")
        return
    if x in a.ch:
        a.cg.add_members(a.ch[x][1], w, 1 if trans_b else 0, "in")
    ids = a.cg.new(a.shapes[s.out][1], s.name)
    a.cg.add_members(ids, w, 0 if trans_b else 1, "out")
    if c is not None and (c not in a.inits or not a.const_members(ids, c, 2, 1, "out")):
        a.cg.block(ids, f"{s.name} has a bias the analysis cannot slice")
        a.block_tensor(c, f"added inside {s.name}")
    a.ch[s.out] = (1, ids)


@rule("MatMul", makes_channels=True)
def matmul(a: Analysis, s: Site) -> None:
    x, w = s.ins
    rank = len(a.shapes[x])
    if x not in a.inits and w not in a.inits:
        _activations_product(a, s)
        return
    if a.prunable.get(w) is None or x in a.inits or (x in a.ch and a.ch[x][0] != rank - 1):
        a.block_all(s, f"read by {s.name}, whose weight is not pruned")
        return
    if x in a.ch:
        a.cg.add_members(a.ch[x][1], w, 0, "in")
    ids = a.cg.new(a.shapes[s.out][-1], s.name)
    a.cg.add_members(ids, w, 1, "out")
    a.ch[s.out] = (len(a.shapes[s.out]) - 1, ids)


def _activations_product(a: Analysis, s: Site) -> None:
    """A product of two computed tensors (attention: Q·Kᵀ, P·V): channels on a batch axis (a
    head) that both operands share pass through, joined; any other tracked axis blocks."""
    rank = len(a.shapes[s.out])
    axes = {a.ch[t][0] for t in s.tracked}
    ranks_ok = all(len(a.shapes[t]) == rank for t in s.ins)
    if len(axes) != 1 or not ranks_ok or next(iter(axes)) >= rank - 2:
        a.block_all(s, f"multiplied by {s.name} with another computed tensor along its channels")
        return
    axis = next(iter(axes))
    a.ch[s.out] = (axis, a.join(s.ins, axis, s.name, rank))


def _attr_or_input(a: Analysis, s: Site, attr: str) -> list | None:
    """A list that older opsets give as an attribute and newer ones as a constant second input."""
    value = s.attrs.get(attr)
    if value is None and len(s.ins) > 1 and s.ins[1] in a.inits:
        value = numpy_helper.to_array(a.inits[s.ins[1]]).tolist()
    return value


# ---- ops that act on each channel alone ---------------------------------------------------

@rule("Relu", "LeakyRelu", "Elu", "Selu", "Celu", "Sigmoid", "HardSigmoid", "HardSwish", "Tanh", "Softplus",
      "Softsign", "Gelu", "Erf", "Exp", "Log", "Abs", "Neg", "Sqrt", "Reciprocal", "Floor", "Ceil", "Round",
      "Clip", "Dropout", "Identity", "Cast", "MaxPool", "AveragePool", "LpPool", "GlobalAveragePool",
      "GlobalMaxPool", "GlobalLpPool", "ThresholdedRelu", "Mish")
def channelwise(a: Analysis, s: Site) -> None:
    a.ch[s.out] = a.ch[s.ins[0]]


@rule("BatchNormalization", "InstanceNormalization")
def normalization(a: Analysis, s: Site) -> None:
    axis, ids = a.ch[s.ins[0]]
    params = [p for p in s.ins[1:] if p]
    if axis != 1 or any(p not in a.inits for p in params):
        a.block_tensor(s.ins[0], f"{s.op} {s.name} has parameters the analysis cannot slice")
        return
    for j, p in enumerate(params):  # scale and shift make the channel; statistics ride along
        a.cg.add_members(ids, p, 0, "out" if j < 2 else "aux")
    a.ch[s.out] = (axis, ids)


@rule("PRelu")
def prelu(a: Analysis, s: Site) -> None:
    x, slope = s.ins[0], s.ins[1]
    axis, ids = a.ch[x]
    if slope not in a.inits:
        a.block_tensor(x, f"PRelu {s.name} has a computed slope")
    elif not a.const_members(ids, slope, len(a.shapes[x]), axis, "aux"):
        a.block_tensor(x, f"PRelu {s.name} has a slope the analysis cannot slice")
    else:
        a.ch[s.out] = (axis, ids)


@rule("Softmax", "LogSoftmax", "Hardmax")
def softmax(a: Analysis, s: Site) -> None:
    x = s.ins[0]
    axis, _ = a.ch[x]
    rank = len(a.shapes[x])
    new = a.opset >= 13  # before 13, Softmax flattened everything from `axis` on
    at = s.attrs.get("axis", -1 if new else 1) % rank
    if (at == axis) if new else (axis >= at):
        a.block_tensor(x, f"{s.op} normalizes over the channel axis ({s.name})")
    else:
        a.ch[s.out] = a.ch[x]


@rule("Pad")
def pad(a: Analysis, s: Site) -> None:
    x = s.ins[0]
    axis, _ = a.ch[x]
    rank = len(a.shapes[x])
    pads = _attr_or_input(a, s, "pads")
    if pads is None or len(pads) != 2 * rank or pads[axis] or pads[axis + rank]:
        a.block_tensor(x, f"Pad may pad the channel axis ({s.name})")
    else:
        a.ch[s.out] = a.ch[x]


@rule("Resize", "Upsample")
def resize(a: Analysis, s: Site) -> None:
    x = s.ins[0]
    axis, _ = a.ch[x]
    if a.shapes[s.out][axis] != a.shapes[x][axis]:
        a.block_tensor(x, f"{s.op} resizes the channel axis ({s.name})")
    else:
        a.ch[s.out] = a.ch[x]


@rule("ReduceMean", "ReduceMax", "ReduceMin", "ReduceSum", "ReduceL1", "ReduceL2", "ReduceLogSumExp",
      "ReduceProd", "ReduceSumSquare")
def reduce(a: Analysis, s: Site) -> None:
    x = s.ins[0]
    axis, ids = a.ch[x]
    rank = len(a.shapes[x])
    axes = _attr_or_input(a, s, "axes")
    axes = [d % rank for d in axes] if axes else list(range(rank))
    if axis in axes:
        a.block_tensor(x, f"reduced over the channel axis by {s.name}")
        return
    a.ch[s.out] = (axis if s.attrs.get("keepdims", 1) else axis - sum(d < axis for d in axes), ids)


# ---- ops that move the channel axis -------------------------------------------------------

@rule("Flatten", "Reshape")
def flatten(a: Analysis, s: Site) -> None:
    """Three reshapes keep channels whole: flattening from the channel axis on (each channel owns
    a block of the features); reshaping only the axes before it (the channel axis and what
    follows unchanged: [N·T, C] ↔ [N, T, C]); splitting the channel axis into (heads, D), which
    makes each head one channel (a transformer's per-head attention)."""
    x = s.ins[0]
    axis, ids = a.ch[x]
    src, dst = tuple(a.shapes[x]), tuple(a.shapes[s.out])
    if src == dst:
        a.ch[s.out] = (axis, ids)
        return
    tail = len(src) - axis  # the channel axis and what follows
    start = next((d for d in range(len(src)) if src[:d] + (int(np.prod(src[d:])),) == dst), None)
    if start is not None and start <= axis:
        kind, pos = "flatten", start
    elif dst and int(np.prod(src[axis:])) == dst[-1] and int(np.prod(src[:axis])) == int(np.prod(dst[:-1])):
        kind, pos, start = "flatten", len(dst) - 1, axis  # leading axes merged too: [N, T, h, D] → [N·T, h·D]
    elif len(dst) >= tail and dst[len(dst) - tail:] == src[axis:]:
        kind, pos = "suffix", len(dst) - tail
    elif (len(dst) == len(src) + 1 and dst[:axis] == src[:axis] and dst[axis + 2:] == src[axis + 1:]
          and dst[axis] * dst[axis + 1] == src[axis] and dst[axis] > 1):
        kind, pos = "heads", axis
    else:
        a.block_tensor(x, f"reshaped by {s.name} in a way that splits or moves the channel axis")
        return
    if s.op == "Reshape":
        why = _follow_shape_entry(a, s, pos)
        if why:
            a.block_tensor(x, why)
            return
    if kind == "flatten":
        owner = np.indices(src[start:])[axis - start].ravel()
        a.ch[s.out] = (pos, ids[owner])
    elif kind == "suffix":
        a.ch[s.out] = (pos, ids)
    else:  # each head's D channels become one
        per_head = ids.reshape(dst[axis], dst[axis + 1])
        for row in per_head:
            for i in row[1:]:
                if row[0] >= 0 and i >= 0:
                    a.cg.union(int(row[0]), int(i))
                elif row[0] >= 0 or i >= 0:
                    a.cg.block([row[0], i], f"head split by {s.name} mixes tracked and untracked channels")
        a.ch[s.out] = (axis, per_head[:, 0].copy())


def _follow_shape_entry(a: Analysis, s: Site, pos: int) -> str | None:
    """Find the constant that spells the flattened size at `pos` of a Reshape's target shape and
    register its fix-up; a reason when it cannot be found. The target is an initializer, or (a
    dynamic batch: PyTorch's `x.view(x.size(0), -1)`) a Concat of 1-D pieces, some computed."""
    shape, reader, slot = s.ins[1], s.index, 1
    if shape not in a.inits:
        cat = a.producer.get(shape)
        if cat is None or cat.op_type != "Concat" or a.cg.uses[shape] > 1:
            return f"Reshape {s.name} has a computed target shape the analysis cannot follow"
        offset = 0
        for slot, part in enumerate(cat.input):
            n = a.shapes[part][0] if len(a.shapes.get(part, ())) == 1 else 0
            if offset <= pos < offset + n:
                break
            offset += n
        else:
            return f"Reshape {s.name} has a computed target shape the analysis cannot follow"
        if part not in a.inits:
            return f"Reshape {s.name} computes its flattened size when it runs ({cat.name})"
        shape, reader, pos = part, a.index_of[shape], pos - offset
    value = int(numpy_helper.to_array(a.inits[shape]).reshape(-1)[pos])
    if value > 0:  # -1 and 0 adapt by themselves
        a.cg.edits.append((reader, _shape_entry(shape, slot, pos, s.out)))
    return None


def _shape_entry(tensor: str, slot: int, pos: int, out: str):
    def fix(graph, node, cg, pruned, inits, opset):
        target = numpy_helper.to_array(inits[tensor]).copy()
        target.reshape(-1)[pos] = len(cg.kept(out, pruned))
        name = f"{tensor}__onnxprune_{node.name}"  # the constant may be shared: this node gets its own
        graph.initializer.append(numpy_helper.from_array(target, name))
        node.input[slot] = name
    return fix


@rule("Squeeze", "Unsqueeze")
def squeeze(a: Analysis, s: Site) -> None:
    x = s.ins[0]
    axis, ids = a.ch[x]
    src, dst = a.shapes[x], a.shapes[s.out]
    # the channel axis is the one whose position among non-1 dims is unchanged
    before = sum(1 for d in src[:axis] if d != 1)
    pos = [i for i, d in enumerate(dst) if d != 1]
    if src[axis] == 1 or before >= len(pos):
        a.block_tensor(x, f"{s.op} {s.name} drops the channel axis")
    else:
        a.ch[s.out] = (pos[before], ids)


@rule("Transpose")
def transpose(a: Analysis, s: Site) -> None:
    axis, ids = a.ch[s.ins[0]]
    perm = s.attrs.get("perm", list(range(len(a.shapes[s.ins[0]]) - 1, -1, -1)))
    a.ch[s.out] = (list(perm).index(axis), ids)


# ---- ops that combine or split tensors ----------------------------------------------------

@rule("Concat")
def concat(a: Analysis, s: Site) -> None:
    rank = len(a.shapes[s.out])
    cat = s.attrs["axis"] % rank
    axes = {a.ch[t][0] for t in s.tracked}
    if len(axes) != 1:
        a.block_all(s, f"concatenated by {s.name} with channels on different axes")
        return
    axis = axes.pop()
    if cat == axis:
        parts = [a.ch[t][1] if t in a.ch else np.full(a.shapes[t][cat], -1) for t in s.ins]
        a.ch[s.out] = (axis, np.concatenate(parts))
    else:
        a.ch[s.out] = (axis, a.join(s.ins, axis, s.name))


@rule("Split")
def split(a: Analysis, s: Site) -> None:
    x = s.ins[0]
    axis, ids = a.ch[x]
    cut = s.attrs.get("axis", 0) % len(a.shapes[x])
    if cut != axis:
        for o in s.node.output:
            a.ch[o] = (axis, ids)
        return
    offset = 0
    for o in s.node.output:
        n = a.shapes[o][axis]
        a.ch[o] = (axis, ids[offset:offset + n])
        offset += n
    a.cg.edits.append((s.index, _split_sizes))


def _split_sizes(graph, node, cg, pruned, inits, opset) -> None:
    sizes = np.array([len(cg.kept(o, pruned)) for o in node.output], np.int64)
    if opset >= 13:
        for attr in list(node.attribute):
            if attr.name == "num_outputs":  # opset 18: sizes and a count cannot both be given
                node.attribute.remove(attr)
        name = f"{node.output[0]}__onnxprune_split"
        graph.initializer.append(numpy_helper.from_array(sizes, name))
        if len(node.input) > 1:
            node.input[1] = name
        else:
            node.input.append(name)
        return
    for attr in list(node.attribute):
        if attr.name == "split":
            node.attribute.remove(attr)
    node.attribute.append(helper.make_attribute("split", sizes.tolist()))


# a constant operand of these ops may be zeroed with its channel (not a divisor or a bound)
MASKABLE_CONSTANT = {"Add", "Sub", "Mul", "Sum"}


@rule("Add", "Sub", "Mul", "Div", "Max", "Min", "Sum", "Mean")
def elementwise(a: Analysis, s: Site) -> None:
    rank = len(a.shapes[s.out])
    axes = {a.ch[t][0] + rank - len(a.shapes[t]) for t in s.tracked}
    if len(axes) != 1:
        a.block_all(s, f"combined by {s.name} with channels on different axes")
        return
    axis = axes.pop()
    a.ch[s.out] = (axis, a.join(s.ins, axis, s.name, rank=rank, maskable=s.op in MASKABLE_CONSTANT))


@rule("Shape")
def shape(a: Analysis, s: Site) -> None:
    """Reads the shape, not the values: removing channels changes nothing a Shape feeds
    except through Reshape targets, which the Reshape rule follows."""
