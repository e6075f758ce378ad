"""The training graph the train stage runs: the user's graph plus, for every prunable weight W,
a mask M (forward uses W·M, so pruned weights are exactly zero) and a penalty
coefficient P (loss += Σ P·W²), then the task loss. M and P are frozen tensors of the step
graph (`stepgraph.Trainer`), rewritten between steps, so one graph serves every phase:
dense (P=0, M=1), reweighted (P refreshed), masked fine-tuning (P=0, M fixed).
"""
from __future__ import annotations

import copy

import numpy as np
import onnx
from onnx import helper, numpy_helper

from . import batchnorm
from .losses import LOSS, PENALTY, PREFIX, TASK_LOSS, LossTerm
from .stepgraph import Trainer


def mask_name(weight: str) -> str:
    return f"{weight}__{PREFIX}_mask"


def coef_name(weight: str) -> str:
    return f"{weight}__{PREFIX}_coef"


def correction_name(weight: str) -> str:
    return f"{weight}__{PREFIX}_qcorr"


class Builder:
    """What a loss block adds nodes and constants through."""

    def __init__(self, graph: onnx.GraphProto) -> None:
        self.graph, self.nodes = graph, []

    def node(self, op, inputs, outputs, **attrs) -> str:
        self.nodes.append(helper.make_node(op, inputs, outputs, name=f"{PREFIX}/{outputs[0]}", **attrs))
        return outputs[0]

    def const(self, name: str, value: np.ndarray) -> str:
        if not any(t.name == name for t in self.graph.initializer):
            self.graph.initializer.append(numpy_helper.from_array(value, name))
        return name


def build_training_graph(base: onnx.ModelProto, tensors: dict[str, tuple[int, ...]], penalized: set[str],
                         terms: list[LossTerm], shapes: dict[str, tuple[int, ...]],
                         corrected: set[str] = frozenset(), norms: str = "batch",
                         owned: set[str] | None = None) -> onnx.ModelProto:
    """`tensors`: every masked tensor (prunable weights, and the biases and norms that
    channel groups take with them); `penalized`: those the group penalty covers; `shapes`: real
    tensor shapes (ORT's, on a probe batch); `corrected`: those trained against a quantizer.
    Their forward value is W·M + C, with C = Q(W·M) − W·M a frozen tensor refreshed after every
    step: the forward pass sees the quantized weight and the gradient reaches W unchanged (a
    straight-through estimator; ORT has no stop-gradient). `norms`: BatchNorm trains on each
    batch's statistics ("batch"), on its frozen running ones ("frozen"), or on either as the
    frozen scalar `batchnorm.SWITCH` says ("switch"); see `batchnorm`. Only BatchNorms whose
    statistics are `owned` (stored by the written model) can leave their frozen ones."""
    model = copy.deepcopy(base)
    graph = model.graph
    if norms != "frozen":
        {"batch": batchnorm.fused_batch_statistics, "switch": batchnorm.switchable}[norms](model, shapes, owned)
    batchnorm.as_affine(model, shapes)  # the rest
    weights = set(tensors)
    b = Builder(graph)
    node = b.node

    # forward pass reads W·M instead of W
    for n in graph.node:
        for i, name in enumerate(n.input):
            if name in weights:
                n.input[i] = f"{name}__{PREFIX}_masked"
    masked_nodes = []
    for w, shape in tensors.items():
        graph.initializer.append(numpy_helper.from_array(np.ones(shape, np.float32), mask_name(w)))
        if w in penalized:
            graph.initializer.append(numpy_helper.from_array(np.zeros(shape, np.float32), coef_name(w)))
        if w in corrected:
            graph.initializer.append(numpy_helper.from_array(np.zeros(shape, np.float32), correction_name(w)))
            masked_nodes.append(helper.make_node("Mul", [w, mask_name(w)], [f"{w}__{PREFIX}_premask"],
                                                 name=f"{PREFIX}/mask/{w}"))
            masked_nodes.append(helper.make_node("Add", [f"{w}__{PREFIX}_premask", correction_name(w)],
                                                 [f"{w}__{PREFIX}_masked"], name=f"{PREFIX}/quant/{w}"))
            continue
        masked_nodes.append(helper.make_node("Mul", [w, mask_name(w)], [f"{w}__{PREFIX}_masked"], name=f"{PREFIX}/mask/{w}"))
    body = list(graph.node)
    del graph.node[:]
    graph.node.extend(masked_nodes + body)  # they read only initializers, so they may come first

    # penalty Σ P·W·W
    penalty = None
    for w in (t for t in tensors if t in penalized):
        sq = node("Mul", [w, w], [f"{w}__{PREFIX}_sq"])
        weighted = node("Mul", [sq, coef_name(w)], [f"{w}__{PREFIX}_psq"])
        term = node("ReduceSum", [weighted], [f"{w}__{PREFIX}_pen"], keepdims=0)
        penalty = term if penalty is None else node("Add", [penalty, term], [f"{w}__{PREFIX}_pacc"])

    if penalty is None:  # nothing penalized (dense training): a constant zero keeps the outputs alike
        penalty = f"{PREFIX}_no_penalty"
        graph.initializer.append(numpy_helper.from_array(np.zeros((), np.float32), penalty))
    task = None
    for i, t in enumerate(terms):
        value = t.weighted(b, i)
        task = value if task is None else node("Add", [task, value], [f"{PREFIX}_task_acc{i}"])
    node("Identity", [task], [TASK_LOSS])
    node("Identity", [penalty], [PENALTY])
    node("Add", [TASK_LOSS, PENALTY], [LOSS])
    graph.node.extend(b.nodes)
    graph.input.extend(t.target_info() for t in terms)
    del graph.output[:]
    for name in (LOSS, TASK_LOSS, PENALTY):  # the first output is the loss ORT differentiates
        graph.output.append(helper.make_tensor_value_info(name, onnx.TensorProto.FLOAT, []))
    return model


__all__ = ["Trainer", "build_training_graph", "mask_name", "coef_name", "correction_name", "LOSS", "TASK_LOSS",
           "PENALTY"]
