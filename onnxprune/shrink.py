"""Physical shrinking after filter/channel pruning: delete the removed channels from every
weight, bias, BatchNorm parameter and constant that carries them, then run the fix-ups the op
rules registered (depthwise `group`, Split sizes, Reshape targets). The result is a smaller
dense model in the user's own graph.
"""
from __future__ import annotations

import copy
from collections import defaultdict

import numpy as np
import onnx
from onnx import numpy_helper

from .channels import ChannelGraph
from .plumbing import default_opset, initializer_map, names_used_in_subgraphs


def shrink(model: onnx.ModelProto, cg: ChannelGraph, pruned: set[int]) -> onnx.ModelProto:
    """`model` without the channels whose roots are in `pruned`."""
    m = copy.deepcopy(model)
    graph = m.graph
    inits = initializer_map(graph)
    cut: dict[tuple[str, int], set[int]] = defaultdict(set)
    for root, nodes in cg.roots().items():
        if root in pruned:
            for i in nodes:
                for mem in cg.members.get(i, []):
                    cut[(mem.tensor, mem.axis)].add(mem.index)
    arrays = {}
    for (name, axis), idx in sorted(cut.items()):
        arr = arrays.get(name, numpy_helper.to_array(inits[name]))
        arrays[name] = np.delete(arr, sorted(idx), axis=axis)
    for name, arr in arrays.items():
        inits[name].CopyFrom(numpy_helper.from_array(np.ascontiguousarray(arr), name))
    opset = default_opset(m)
    for k, fix in cg.edits:
        fix(graph, graph.node[k], cg, pruned, inits, opset)
    # shape constants a fix-up replaced by a node's own copy are read by nobody now
    used = {i for n in graph.node for i in n.input} | names_used_in_subgraphs(graph) | {o.name for o in graph.output}
    for t in [t for t in graph.initializer if t.name not in used]:
        graph.initializer.remove(t)
    del graph.value_info[:]  # stale shapes; ONNX Runtime infers them again
    return m
