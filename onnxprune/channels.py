"""Channel dependency analysis: which tensors' channels are coupled, so that filter and
channel pruning remove them together and the graph can be shrunk.

Every channel of every tracked tensor is a node in a union-find. How channels flow through
an op is that op's rule (oprules.py): a Conv/Gemm/MatMul makes fresh channels (its weight
rows and bias are their *out* members) and reads its input's channels (its weight columns
are *in* members); activations, pools and norms pass them on; an elementwise Add/Mul joins
two tensors' channels (residual connections); Concat and Split splice them. A channel that
reaches a graph output, comes from a graph input, or meets an op without a rule is blocked:
left whole, with the reason kept for the report.

Removing a channel = deleting all its members' slices, plus the fix-ups rules registered for
attributes and shape constants (shrink.py). Because every reader of a removed channel loses
its slice too, the shrunk graph computes exactly what the masked graph computes.
"""
from __future__ import annotations

from collections import Counter, defaultdict
from dataclasses import dataclass, field
from functools import cached_property
from typing import Callable

import numpy as np
import onnx
from onnx import helper

from .groups import GroupPlan
from .layers import PrunableLayer
from .oprules import RULES
from .plumbing import default_opset, initializer_map, names_used_in_subgraphs


@dataclass
class Member:
    tensor: str  # an initializer
    axis: int
    index: int
    kind: str  # 'out' makes the channel, 'in' reads it, 'aux' is only sliced (BN statistics, slopes)


# a fix-up run when channels are removed: (graph, node, channel graph, pruned roots, initializers, opset)
Edit = Callable[[onnx.GraphProto, onnx.NodeProto, "ChannelGraph", set, dict, int], None]


@dataclass
class ChannelGraph:
    parent: list[int] = field(default_factory=list)  # union-find over channel nodes
    tensors: dict[str, tuple[int, np.ndarray]] = field(default_factory=dict)  # tensor -> (axis, node ids)
    members: dict[int, list[Member]] = field(default_factory=lambda: defaultdict(list))
    blocked: dict[int, str] = field(default_factory=dict)  # node -> why it stays
    origin: dict[int, str] = field(default_factory=dict)  # node -> the op that made it
    edits: list[tuple[int, Edit]] = field(default_factory=list)  # (node index, fix-up) applied on shrinking
    param_shapes: dict[str, tuple[int, ...]] = field(default_factory=dict)
    uses: Counter = field(default_factory=Counter)  # how many node inputs read each tensor

    def add_members(self, ids, tensor: str, axis: int, kind: str, offset: int = 0) -> None:
        """Channel c of `ids` owns slice `offset + c` of the tensor's `axis` (an offset picks one
        gate's block of a recurrent weight)."""
        if self.uses[tensor] > 1:  # slicing a shared tensor would change its other reader
            self.block(ids, f"{tensor} is shared by several nodes")
        for c, i in enumerate(ids):
            if i >= 0:
                self.members[int(i)].append(Member(tensor, axis, offset + c, kind))

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


@dataclass
class Site:
    """One node as an op rule sees it."""

    index: int
    node: onnx.NodeProto
    name: str
    attrs: dict
    ins: list[str]
    tracked: list[str]  # inputs whose channels are tracked

    @property
    def op(self) -> str:
        return self.node.op_type

    @property
    def out(self) -> str:
        return self.node.output[0] if self.node.output else ""


class Analysis:
    """The state op rules read and write: the channel graph, real tensor shapes, constants."""

    def __init__(self, model: onnx.ModelProto, shapes: dict[str, tuple[int, ...]], layers: list[PrunableLayer]):
        graph = model.graph
        self.shapes = shapes
        self.inits = initializer_map(graph)
        self.prunable = {layer.weight: layer for layer in layers}
        self.opset = default_opset(model)
        self.producer = {o: n for n in graph.node for o in n.output}
        self.index_of = {o: k for k, n in enumerate(graph.node) for o in n.output}  # producer's position
        self.cg = ChannelGraph(uses=Counter(i for n in graph.node for i in n.input if i))

    @property
    def ch(self) -> dict[str, tuple[int, np.ndarray]]:
        return self.cg.tensors

    def block_tensor(self, t: str, reason: str) -> None:
        if t in self.ch:
            self.cg.block(self.ch[t][1], reason)

    def block_all(self, site: Site, reason: str) -> None:
        for t in site.tracked:
            self.block_tensor(t, reason)

    def const_members(self, ids, const: str, out_rank: int, axis: int, kind: str) -> bool:
        return self.cg.add_constant(ids, const, tuple(self.inits[const].dims), out_rank, axis, kind)

    def join(self, ins, axis, name, rank=None, maskable=False) -> np.ndarray:
        """Channels of operands combined elementwise become one channel each (residual Add).
        Constants along the channel axis are sliced with them; anything else blocks."""
        cg, ch, shapes = self.cg, self.ch, self.shapes
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
            if t in self.inits:
                ok = cg.add_constant(ids, t, tuple(shapes[t]), rank, axis, "out" if maskable else "aux")
            else:  # a computed operand must broadcast over the channels
                a = axis - (rank - len(shapes[t]))
                ok = not 0 <= a < len(shapes[t]) or shapes[t][a] == 1
            if not ok:
                cg.block(ids, f"combined by {name} with a tensor whose channels are not tracked")
        return ids


def analyze(model: onnx.ModelProto, shapes: dict[str, tuple[int, ...]], layers: list[PrunableLayer]) -> ChannelGraph:
    """Run every node's op rule in graph order; ops without a rule keep their channels whole."""
    a = Analysis(model, shapes, layers)
    for k, node in enumerate(model.graph.node):
        ins = list(node.input)
        site = Site(k, node, node.name or f"{node.op_type}_{k}",
                    {x.name: helper.get_attribute_value(x) for x in node.attribute}, ins,
                    [i for i in ins if i in a.ch])
        if node.domain not in ("", "ai.onnx"):
            a.block_all(site, f"read by {node.op_type} node {site.name} (domain {node.domain})")
            continue
        rule = RULES.get(node.op_type)
        if rule is None:
            a.block_all(site, f"read by {node.op_type} node {site.name}, which the analysis does not model")
        elif site.tracked or rule.makes_channels:
            rule(a, site)
    cg = a.cg
    for o in model.graph.output:
        a.block_tensor(o.name, f"reaches the graph output {o.name}")
    for t in names_used_in_subgraphs(model.graph):
        a.block_tensor(t, "read inside an If/Loop/Scan subgraph")
    cg.param_shapes = {m.tensor: tuple(a.inits[m.tensor].dims) for ms in cg.members.values() for m in ms}
    return cg


@dataclass
class ChannelPlan(GroupPlan):
    """Groups of filter/channel pruning: one per removable channel, spanning layers."""

    removes: list = field(default_factory=list)  # per group, [(tensor, flat indices)] zeroed with it
    channels: ChannelGraph | None = None  # the analysis behind the plan (for shrinking)
    roots: list[int] = field(default_factory=list)  # per group: its channel in `channels`

    @cached_property
    def removal_sizes(self) -> np.ndarray:
        """Counted weights (or MACs) each group takes with it: its rows and its readers' columns."""
        counted = set(self.counted)
        return np.array([sum(len(idx) * self.cost.get(t, 1.0) for t, idx in slices if t in counted)
                         for slices in self.removes])

    def masks(self, pruned: np.ndarray) -> dict[str, np.ndarray]:
        out = {name: m.ravel() for name, m in super().masks(pruned).items()}
        for g in np.flatnonzero(pruned):
            for name, idx in self.removes[g]:
                out[name][idx] = 0
        return {name: m.reshape(self.tensors[name]) for name, m in out.items()}

    def pruned_roots(self, masks: dict[str, np.ndarray]) -> set[int]:
        """The channels whose every slice the masks zero."""
        return {root for g, root in enumerate(self.roots)
                if all(not masks[t].ravel()[idx].any() for t, idx in self.removes[g])}


def channel_plan(cg: ChannelGraph, layers: list[PrunableLayer], side: str) -> ChannelPlan:
    """The plan of filter (side 'out') or channel (side 'in') pruning: one group per removable
    channel; its penalty covers its `side` slices, its removal all but 'aux' ones."""
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
    return ChannelPlan(tensors, ids, len(chosen), np.array(unit, np.int64), unit_names, tuple(weights),
                       notes=notes, removes=removes, channels=cg, roots=[r for r, _ in chosen])
