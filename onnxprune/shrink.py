"""Physical shrinking after filter/channel pruning: delete the removed channels from
every weight, bias, BatchNorm parameter and constant that carries them, and fix the
attributes and shape constants that spell channel counts (depthwise `group`, Split
sizes, Reshape targets). The result is a smaller dense model in the user's own graph.
"""
from __future__ import annotations

import copy
from collections import defaultdict

import numpy as np
import onnx
from onnx import helper, numpy_helper

from .channels import ChannelGraph
from .loading import default_opset, initializer_map


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

    for k, kind in cg.edits:
        node = graph.node[k]
        if kind == "split":
            sizes = np.array([len(cg.kept(o, pruned)) for o in node.output], np.int64)
            _set_split(graph, node, sizes, inits, default_opset(m))
        elif kind == "reshape":
            out = node.output[0]
            axis, _ = cg.tensors[out]
            target = numpy_helper.to_array(inits[node.input[1]]).copy()
            if target[axis] > 0:  # -1 and 0 already adapt
                target[axis] = len(cg.kept(out, pruned))
                name = f"{node.input[1]}__onnxprune_{k}"  # the shape may be shared: give this node its own
                graph.initializer.append(numpy_helper.from_array(target, name))
                node.input[1] = name
    for node in graph.node:  # a depthwise Conv's group is its channel count
        if node.op_type == "Conv" and node.input[1] in arrays:
            for a in node.attribute:
                if a.name == "group" and a.i > 1:
                    a.i = arrays[node.input[1]].shape[0]
    del graph.value_info[:]  # stale shapes; ONNX Runtime infers them again
    return m


def _set_split(graph, node, sizes: np.ndarray, inits, opset: int) -> None:
    if opset >= 13:
        for a in list(node.attribute):
            if a.name == "num_outputs":  # opset 18: sizes and a count cannot both be given
                node.attribute.remove(a)
        name = f"{node.output[0]}__onnxprune_split"
        graph.initializer.append(numpy_helper.from_array(sizes, name))
        if len(node.input) > 1:
            node.input[1] = name
        else:
            node.input.append(name)
        return
    for a in list(node.attribute):
        if a.name == "split":
            node.attribute.remove(a)
    node.attribute.append(helper.make_attribute("split", sizes.tolist()))
