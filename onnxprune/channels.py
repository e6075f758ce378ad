"""Channel dependency analysis: which tensors' channels are coupled, so that filter and
channel pruning remove them together and the graph can be shrunk.

Every channel of every tracked tensor is a node in a union-find. A Conv/Gemm/MatMul
makes fresh channels (its weight rows and bias are their *out* members) and reads its
input's channels (its weight columns are *in* members). Ops that keep channels in place
(activations, pools, BatchNorm, Pad, Resize…) pass them on; an elementwise Add/Mul of
two tensors joins their channels (residual connections); Concat and Split splice them;
Flatten/Reshape into a Gemm spreads each channel over its block of columns. A channel
that reaches a graph output, comes from a graph input, or meets an op the analysis does
not model is blocked: left alone, with the reason kept for the report.

Removing a channel = deleting all its members' slices. Because every reader of a
removed channel loses its slice too, the shrunk graph computes exactly what the masked
graph computes, whatever the ops in between do to a zero channel.
"""
from __future__ import annotations

import copy
from collections import Counter, defaultdict
from dataclasses import dataclass, field

import numpy as np
import onnx
import onnxruntime as ort
from onnx import helper, numpy_helper

from .layers import PrunableLayer, _names_used_in_subgraphs
from .loading import default_opset, initializer_map

# ops that act on each channel separately and keep the channel axis where it is
PASS_THROUGH = {
    "Relu", "LeakyRelu", "Elu", "Selu", "Celu", "Sigmoid", "HardSigmoid", "HardSwish", "Tanh", "Softplus",
    "Softsign", "Gelu", "Erf", "Exp", "Log", "Abs", "Neg", "Sqrt", "Reciprocal", "Floor", "Ceil", "Round",
    "Clip", "Dropout", "Identity", "Cast", "MaxPool", "AveragePool", "LpPool", "GlobalAveragePool",
    "GlobalMaxPool", "GlobalLpPool", "Pad", "Resize", "Upsample", "PRelu", "ThresholdedRelu", "Mish",
    "Softmax", "LogSoftmax", "Hardmax", "BatchNormalization", "InstanceNormalization",
}
ELEMENTWISE = {"Add", "Sub", "Mul", "Div", "Max", "Min", "Sum", "Mean"}
REDUCE = {"ReduceMean", "ReduceMax", "ReduceMin", "ReduceSum", "ReduceL1", "ReduceL2", "ReduceLogSumExp",
          "ReduceProd", "ReduceSumSquare"}
# a constant operand of these ops may be zeroed with its channel (not a divisor or a bound)
MASKABLE_CONSTANT = {"Add", "Sub", "Mul", "Sum"}


@dataclass
class Member:
    tensor: str  # an initializer
    axis: int
    index: int
    kind: str  # 'out' makes the channel, 'in' reads it, 'aux' is only sliced (BN statistics, slopes)


@dataclass
class ChannelGraph:
    parent: list[int] = field(default_factory=list)  # union-find over channel nodes
    tensors: dict[str, tuple[int, np.ndarray]] = field(default_factory=dict)  # tensor -> (axis, node ids)
    members: dict[int, list[Member]] = field(default_factory=lambda: defaultdict(list))
    blocked: dict[int, str] = field(default_factory=dict)  # node -> why it stays
    origin: dict[int, str] = field(default_factory=dict)  # node -> the op that made it
    edits: list[tuple[int, str]] = field(default_factory=list)  # (node index, kind) fixed up on shrinking
    param_shapes: dict[str, tuple[int, ...]] = field(default_factory=dict)
    uses: Counter = field(default_factory=Counter)  # how many node inputs read each tensor

    def add_members(self, ids, tensor: str, axis: int, kind: str) -> None:
        if self.uses[tensor] > 1:  # slicing a shared tensor would change its other reader
            self.block(ids, f"{tensor} is shared by several nodes")
        for c, i in enumerate(ids):
            if i >= 0:
                self.members[int(i)].append(Member(tensor, axis, c, kind))

    def add_constant(self, ids, const: str, dims: tuple[int, ...], out_rank: int, axis: int, kind: str) -> bool:
        """A constant operand broadcast against a channel tensor: slice its channel dim.
        False when its channel dim neither matches nor broadcasts."""
        a = axis - (out_rank - len(dims))
        if int(np.prod(dims)) == 1 or a < 0 or dims[a] == 1:
            return True  # broadcast over the channels: nothing to slice
        if dims[a] != len(ids):
            return False
        self.add_members(ids, const, a, kind)
        return True

    def new(self, n: int, where: str) -> np.ndarray:
        start = len(self.parent)
        self.parent.extend(range(start, start + n))
        for i in range(start, start + n):
            self.origin[i] = where
        return np.arange(start, start + n)

    def find(self, i: int) -> int:
        while self.parent[i] != i:
            self.parent[i] = self.parent[self.parent[i]]
            i = self.parent[i]
        return i

    def union(self, a: int, b: int) -> None:
        ra, rb = self.find(a), self.find(b)
        if ra != rb:
            self.parent[max(ra, rb)] = min(ra, rb)  # the older node is the root: deterministic

    def block(self, ids, reason: str) -> None:
        for i in np.asarray(ids).ravel():
            if i >= 0:
                self.blocked.setdefault(int(i), reason)

    def roots(self) -> dict[int, list[int]]:
        out = defaultdict(list)
        for i in range(len(self.parent)):
            out[self.find(i)].append(i)
        return out

    def blocked_roots(self) -> dict[int, str]:
        out = {}
        for i, reason in sorted(self.blocked.items()):
            out.setdefault(self.find(i), reason)
        return out

    def kept(self, tensor: str, pruned: set[int]) -> np.ndarray:
        """Indices of the tensor's channels that survive removing the `pruned` roots."""
        _, ids = self.tensors[tensor]
        return np.array([c for c, i in enumerate(ids) if i < 0 or self.find(int(i)) not in pruned], np.int64)


def tensor_shapes(model: onnx.ModelProto, feed: dict[str, np.ndarray]) -> dict[str, tuple[int, ...]]:
    """The shape of every tensor, as ONNX Runtime computes it on `feed` (declared shapes
    may be symbolic or wrong)."""
    m = copy.deepcopy(model)
    have = {o.name for o in m.graph.output}
    for node in m.graph.node:
        for out in node.output:
            if out and out not in have:
                m.graph.output.append(helper.ValueInfoProto(name=out))
                have.add(out)
    so = ort.SessionOptions()
    so.log_severity_level = 3
    so.graph_optimization_level = ort.GraphOptimizationLevel.ORT_DISABLE_ALL  # keep every tensor
    sess = ort.InferenceSession(m.SerializeToString(), so, providers=["CPUExecutionProvider"])
    names = [o.name for o in sess.get_outputs()]
    values = sess.run(names, feed)
    shapes = {n: tuple(np.shape(v)) for n, v in zip(names, values)}
    shapes.update({k: tuple(v.shape) for k, v in feed.items()})
    shapes.update({t.name: tuple(t.dims) for t in model.graph.initializer})
    return shapes


def analyze(model: onnx.ModelProto, shapes: dict[str, tuple[int, ...]], layers: list[PrunableLayer]) -> ChannelGraph:
    graph = model.graph
    inits = initializer_map(graph)
    prunable = {layer.weight: layer for layer in layers}
    cg = ChannelGraph(uses=Counter(i for n in graph.node for i in n.input if i))
    ch = cg.tensors
    opset = default_opset(model)

    def block_tensor(t: str, reason: str) -> None:
        if t in ch:
            cg.block(ch[t][1], reason)

    add_members = cg.add_members

    def const_members(ids, const: str, out_rank: int, axis: int, kind: str) -> bool:
        return cg.add_constant(ids, const, tuple(inits[const].dims), out_rank, axis, kind)

    for k, node in enumerate(graph.node):
        op, name = node.op_type, node.name or f"{node.op_type}_{k}"
        attrs = {a.name: helper.get_attribute_value(a) for a in node.attribute}
        ins = list(node.input)
        tracked = [i for i in ins if i in ch]
        out = node.output[0] if node.output else ""
        if node.domain not in ("", "ai.onnx"):
            for t in tracked:
                block_tensor(t, f"read by {op} node {name} (domain {node.domain})")
            continue

        if op in ("Conv", "ConvTranspose"):
            x, w = ins[0], ins[1]
            b = ins[2] if len(ins) > 2 and ins[2] else None
            layer, group = prunable.get(w), attrs.get("group", 1)
            if layer is None or (b is not None and b not in inits):
                block_tensor(x, f"read by {name}, whose weight is not pruned")
                continue
            in_axis, out_axis = (1, 0) if op == "Conv" else (0, 1)
            cin, cout = shapes[x][1], shapes[out][1]
            if group == 1:
                if x in ch:
                    add_members(ch[x][1], w, in_axis, "in")
                ids = cg.new(cout, name)
            elif op == "Conv" and group == cin == cout and x in ch:  # depthwise: channel c stays channel c
                ids = ch[x][1]
            else:
                block_tensor(x, f"read by grouped convolution {name} (group={group})")
                continue
            add_members(ids, w, out_axis, "out")
            if b is not None:
                add_members(ids, b, 0, "out")
            ch[out] = (1, ids)
        elif op == "Gemm":
            a, bw = ins[0], ins[1]
            c = ins[2] if len(ins) > 2 and ins[2] else None
            layer, trans_b = prunable.get(bw), attrs.get("transB", 0)
            if layer is None or attrs.get("transA", 0) or len(shapes[a]) != 2:
                block_tensor(a, f"read by {name}, whose weight is not pruned")
                continue
            if a in ch:
                add_members(ch[a][1], bw, 1 if trans_b else 0, "in")
            ids = cg.new(shapes[out][1], name)
            add_members(ids, bw, 0 if trans_b else 1, "out")
            if c is not None and (c not in inits or not const_members(ids, c, 2, 1, "out")):
                cg.block(ids, f"{name} has a bias the analysis cannot slice")
                block_tensor(c, f"added inside {name}")
            ch[out] = (1, ids)
        elif op == "MatMul":
            x, w = ins
            layer = prunable.get(w)
            rank = len(shapes[x])
            if layer is None or x in inits or (x in ch and ch[x][0] != rank - 1):
                for t in tracked:
                    block_tensor(t, f"read by {name}, whose weight is not pruned")
                continue
            if x in ch:
                add_members(ch[x][1], w, 0, "in")
            ids = cg.new(shapes[out][-1], name)
            add_members(ids, w, 1, "out")
            ch[out] = (len(shapes[out]) - 1, ids)
        elif not tracked:
            continue
        elif op in PASS_THROUGH:
            x = ins[0]
            axis, ids = ch[x]
            why = _pass_through_problem(node, op, attrs, axis, shapes, inits, opset)
            if why:
                block_tensor(x, f"{why} ({name})")
                continue
            if op in ("BatchNormalization", "InstanceNormalization"):
                params = [p for p in ins[1:] if p]
                if axis != 1 or any(p not in inits for p in params):
                    block_tensor(x, f"{op} {name} has parameters the analysis cannot slice")
                    continue
                for j, p in enumerate(params):  # scale and shift make the channel; statistics ride along
                    add_members(ids, p, 0, "out" if j < 2 else "aux")
            elif op == "PRelu" and ins[1] in inits:
                if not const_members(ids, ins[1], len(shapes[x]), axis, "aux"):
                    block_tensor(x, f"PRelu {name} has a slope the analysis cannot slice")
                    continue
            elif op == "PRelu":
                block_tensor(x, f"PRelu {name} has a computed slope")
                continue
            ch[out] = (axis, ids)
        elif op in REDUCE:
            x = ins[0]
            axis, ids = ch[x]
            rank = len(shapes[x])
            axes = attrs.get("axes")
            if axes is None and len(ins) > 1 and ins[1] in inits:
                axes = numpy_helper.to_array(inits[ins[1]]).tolist()
            axes = [a % rank for a in axes] if axes else list(range(rank))
            if axis in axes:
                block_tensor(x, f"reduced over the channel axis by {name}")
                continue
            keep = attrs.get("keepdims", 1)
            ch[out] = (axis if keep else axis - sum(a < axis for a in axes), ids)
        elif op in ("Flatten", "Reshape"):
            x = ins[0]
            axis, ids = ch[x]
            src, dst = shapes[x], shapes[out]
            if src == dst:
                ch[out] = (axis, ids)
                continue
            start = next((a for a in range(len(src)) if tuple(src[:a]) + (int(np.prod(src[a:])),) == tuple(dst)), None)
            if start is None or start > axis:
                block_tensor(x, f"reshaped by {name} in a way that splits or moves the channel axis")
                continue
            # each channel owns a block of the flattened features
            owner = np.indices(src[start:])[axis - start].ravel()
            ch[out] = (start, ids[owner])
            if op == "Reshape":
                cg.edits.append((k, "reshape"))
        elif op in ("Squeeze", "Unsqueeze"):
            x = ins[0]
            axis, ids = ch[x]
            src, dst = shapes[x], shapes[out]
            # the channel axis is the one whose position among non-1 dims is unchanged
            before = sum(1 for d in src[:axis] if d != 1)
            pos = [i for i, d in enumerate(dst) if d != 1]
            if src[axis] == 1 or before >= len(pos):
                block_tensor(x, f"{op} {name} drops the channel axis")
                continue
            ch[out] = (pos[before], ids)
        elif op == "Transpose":
            x = ins[0]
            axis, ids = ch[x]
            perm = attrs.get("perm", list(range(len(shapes[x]) - 1, -1, -1)))
            ch[out] = (list(perm).index(axis), ids)
        elif op == "Concat":
            rank = len(shapes[out])
            cat = attrs["axis"] % rank
            axes = {ch[t][0] for t in tracked}
            if len(axes) != 1:
                for t in tracked:
                    block_tensor(t, f"concatenated by {name} with channels on different axes")
                continue
            axis = axes.pop()
            if cat == axis:
                parts = [ch[t][1] if t in ch else np.full(shapes[t][cat], -1) for t in ins]
                ch[out] = (axis, np.concatenate(parts))
            else:
                ch[out] = (axis, _join(cg, ins, ch, shapes, axis, inits, name))
        elif op == "Split":
            x = ins[0]
            axis, ids = ch[x]
            cut = attrs.get("axis", 0) % len(shapes[x])
            if cut != axis:
                for o in node.output:
                    ch[o] = (axis, ids)
                continue
            offset = 0
            for o in node.output:
                n = shapes[o][axis]
                ch[o] = (axis, ids[offset:offset + n])
                offset += n
            cg.edits.append((k, "split"))
        elif op in ELEMENTWISE:
            rank = len(shapes[out])
            axes = {ch[t][0] + rank - len(shapes[t]) for t in tracked}
            if len(axes) != 1:
                for t in tracked:
                    block_tensor(t, f"combined by {name} with channels on different axes")
                continue
            axis = axes.pop()
            ids = _join(cg, ins, ch, shapes, axis, inits, name, rank=rank, maskable=op in MASKABLE_CONSTANT)
            ch[out] = (axis, ids)
        elif op == "Shape":
            continue  # reads the shape, not the values
        else:
            for t in tracked:
                block_tensor(t, f"read by {op} node {name}, which the analysis does not model")

    for o in graph.output:
        block_tensor(o.name, f"reaches the graph output {o.name}")
    for t in _names_used_in_subgraphs(graph):
        block_tensor(t, "read inside an If/Loop/Scan subgraph")
    cg.param_shapes = {m.tensor: tuple(inits[m.tensor].dims) for ms in cg.members.values() for m in ms}
    return cg


def _pass_through_problem(node, op, attrs, axis, shapes, inits, opset) -> str | None:
    rank = len(shapes[node.input[0]])
    if op in ("Softmax", "LogSoftmax", "Hardmax"):
        new = opset >= 13  # before 13, Softmax flattened everything from `axis` on
        a = attrs.get("axis", -1 if new else 1) % rank
        mixes = a == axis if new else axis >= a
        return f"{op} normalizes over the channel axis" if mixes else None
    if op == "Pad":
        pads = attrs.get("pads")
        if pads is None and len(node.input) > 1:
            pads = numpy_helper.to_array(inits[node.input[1]]).tolist() if node.input[1] in inits else None
        if pads is None or len(pads) != 2 * rank or pads[axis] or pads[axis + rank]:
            return "Pad may pad the channel axis"
    if op in ("Resize", "Upsample") and shapes[node.output[0]][axis] != shapes[node.input[0]][axis]:
        return f"{op} resizes the channel axis"
    return None


def _join(cg: ChannelGraph, ins, ch, shapes, axis, inits, name, rank=None, maskable=False) -> np.ndarray:
    """Channels of operands combined elementwise become one channel each (residual Add).
    Constants along the channel axis are sliced with them; anything else blocks."""
    rank = rank if rank is not None else len(shapes[ins[0]])
    tracked = [t for t in ins if t in ch]
    ids = ch[tracked[0]][1]
    for t in tracked[1:]:
        if len(ch[t][1]) != len(ids):
            cg.block(ids, f"{name} broadcasts channels")
            cg.block(ch[t][1], f"{name} broadcasts channels")
            return ids
        for a, b in zip(ids, ch[t][1]):
            if a >= 0 and b >= 0:
                cg.union(int(a), int(b))
            elif a >= 0 or b >= 0:
                cg.block([a, b], f"combined by {name} with channels from a graph input")
    for t in ins:
        if not t or t in ch:
            continue
        if t in inits:
            ok = cg.add_constant(ids, t, tuple(shapes[t]), rank, axis, "out" if maskable else "aux")
        else:  # a computed operand must broadcast over the channels
            a = axis - (rank - len(shapes[t]))
            ok = not 0 <= a < len(shapes[t]) or shapes[t][a] == 1
        if not ok:
            cg.block(ids, f"combined by {name} with a tensor whose channels are not tracked")
    return ids


def channel_plan(cg: ChannelGraph, layers: list[PrunableLayer], side: str):
    """The GroupPlan of filter (side 'out') or channel (side 'in') pruning: one group per
    removable channel; its penalty covers its `side` slices, its removal all but 'aux' ones."""
    from .groups import GroupPlan

    weights = {layer.weight: layer.shape for layer in layers}
    blocked = cg.blocked_roots()
    chosen = []
    for root, nodes in sorted(cg.roots().items()):
        members = [m for i in nodes for m in cg.members.get(i, [])]
        if root not in blocked and any(m.kind == side and m.tensor in weights for m in members):
            chosen.append((root, members))
    tensors = dict(weights)
    for _, members in chosen:
        for m in members:
            if m.kind != "aux":
                tensors.setdefault(m.tensor, cg.param_shapes[m.tensor])
    ids = {t: np.full(int(np.prod(s)), -1, np.int64) for t, s in tensors.items()}
    flat = {t: np.arange(int(np.prod(s))).reshape(s) for t, s in tensors.items()}
    removes, unit, unit_names = [], [], []
    for g, (root, members) in enumerate(chosen):
        slices = []
        for m in members:
            if m.kind == "aux":
                continue
            idx = np.take(flat[m.tensor], m.index, axis=m.axis).ravel()
            slices.append((m.tensor, idx))
            if m.kind == side:
                ids[m.tensor][idx] = g
        removes.append(slices)
        if cg.origin[root] not in unit_names:
            unit_names.append(cg.origin[root])
        unit.append(unit_names.index(cg.origin[root]))
    reasons = Counter((cg.origin[r], why) for r, why in blocked.items())
    notes = [f"{where}: {n} channel{'s' if n > 1 else ''} left whole: {why}" for (where, why), n in reasons.items()]
    return GroupPlan(tensors, ids, len(chosen), np.array(unit, np.int64), unit_names, tuple(weights),
                     removes=removes, notes=notes, channels=cg, roots=[r for r, _ in chosen])
