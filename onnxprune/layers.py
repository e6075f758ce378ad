"""Finding prunable weights (part of the load stage): constant float weights of Conv,
ConvTranspose, Gemm and MatMul, the input and recurrent weights (W, R) of LSTM, GRU and RNN, and
the other float parameters training may adjust (biases, norms).
"""
from __future__ import annotations

import fnmatch
from dataclasses import dataclass

import numpy as np
import onnx

from .plumbing import initializer_map, names_used_in_subgraphs

FLOAT = onnx.TensorProto.FLOAT
FLOATS = (FLOAT, onnx.TensorProto.FLOAT16)  # float16 weights train in float32
# ops that show a stored weight in another layout or type (old PyTorch Linear: Transpose(W) → MatMul)
WEIGHT_VIEWS = ("Identity", "Transpose", "Reshape", "Squeeze", "Unsqueeze", "Flatten", "Cast")
STORED_VIEWS = (*WEIGHT_VIEWS, "Slice", "Concat", "Split", "Gather")  # rearrange stored values, make none

# Inputs of these ops that are learnable parameters when they are float initializers.
# Everything else (Clip bounds, Resize scales, Pad values, BN running stats…) stays constant.
PARAMETER_INPUTS = {
    "Conv": (1, 2), "ConvTranspose": (1, 2), "Gemm": (0, 1, 2), "MatMul": (0, 1),
    "Add": (0, 1), "Sub": (0, 1), "BatchNormalization": (1, 2), "PRelu": (1,),
    "LayerNormalization": (1, 2), "InstanceNormalization": (1, 2),
    "LSTM": (1, 2, 3), "GRU": (1, 2, 3), "RNN": (1, 2, 3),
}
RECURRENT = {"LSTM": 4, "GRU": 3, "RNN": 1}  # gates: W is [directions, gates·hidden, input]


@dataclass
class PrunableLayer:
    name: str  # the node's name (or op_index when the node has none)
    op: str
    weight: str  # initializer name
    shape: tuple[int, ...]
    out_axis: int  # weight axis that indexes output features (the GEMM view's rows)
    node: str = ""  # the node that reads the weight (its name; an LSTM's W and R share one)

    def __post_init__(self) -> None:
        self.node = self.node or self.name

    @property
    def size(self) -> int:
        return int(np.prod(self.shape))


@dataclass
class Skipped:
    name: str
    op: str
    weight: str
    reason: str


def find_prunable(model: onnx.ModelProto, exclude: tuple[str, ...] = (),
                  computed: frozenset[str] | set[str] = frozenset()) -> tuple[list[PrunableLayer], list[Skipped]]:
    """`computed`: names the input graph computed at run time (`PreparedModel.computed`)."""
    graph = model.graph
    inits = initializer_map(graph)
    in_subgraphs = names_used_in_subgraphs(graph)
    layers: list[PrunableLayer] = []
    skipped: list[Skipped] = []
    seen: dict[str, str] = {}
    activations = {i.name for i in graph.input if i.name not in inits}  # what inputs flow into: Q·Kᵀ has no weight
    for node in graph.node:
        if any(i in activations for i in node.input):
            activations.update(node.output)
    for index, node in enumerate(graph.node):
        node_name = node.name or f"{node.op_type}_{index}"
        found = weights_of(node, inits)
        for weight, out_axis, rank_ok, part in found:
            name = f"{node_name}.{part}" if part else node_name

            def skip(reason: str) -> None:
                skipped.append(Skipped(name, node.op_type, weight, reason))

            if weight in activations:
                continue
            if weight not in inits:
                skip("weight is computed at run time, not a stored constant")
            elif weight in computed:
                skip("weight is made when the model runs (e.g. by ConstantOfShape), not stored trained values")
            elif inits[weight].data_type not in FLOATS:
                skip(f"weight type is {onnx.TensorProto.DataType.Name(inits[weight].data_type)}, not a float")
            elif not rank_ok(len(inits[weight].dims)):
                skip(f"weight has rank {len(inits[weight].dims)}, not a plain layer weight")
            elif any(fnmatch.fnmatchcase(p, x) for p in (node_name, name, weight) for x in exclude):
                skip("excluded by --exclude")
            elif weight in in_subgraphs:
                skip("weight is also used inside an If/Loop/Scan subgraph")
            elif weight in seen:
                skip(f"weight shared with layer {seen[weight]}, pruned there")
            else:
                seen[weight] = name
                layers.append(PrunableLayer(name, node.op_type, weight, tuple(inits[weight].dims), out_axis,
                                            node_name))
    return layers, skipped


def trainable_parameters(model: onnx.ModelProto, layers: list[PrunableLayer]) -> list[str]:
    """Prunable weights plus the float parameters of the ops in PARAMETER_INPUTS."""
    inits = initializer_map(model.graph)
    names = {layer.weight for layer in layers}
    for node in model.graph.node:
        for i in PARAMETER_INPUTS.get(node.op_type, ()):
            if i < len(node.input) and node.input[i] in inits:
                t = inits[node.input[i]]
                if t.data_type in FLOATS and int(np.prod(t.dims)) > 1:
                    names.add(t.name)
    names -= names_used_in_subgraphs(model.graph)  # ORT cannot train what an If/Loop body reads
    # keep the graph's own order, so artifacts and checkpoints are deterministic
    return [t.name for t in model.graph.initializer if t.name in names]


def weights_of(node: onnx.NodeProto, inits) -> list[tuple[str, int, object, str]]:
    """(weight input name, output axis, rank check, part) for each weight of a prunable op. `part`
    names the weight when a node has several (an LSTM's input weights W and recurrent weights R)."""
    attrs = {a.name: onnx.helper.get_attribute_value(a) for a in node.attribute}
    if node.domain not in ("", "ai.onnx") or len(node.input) < 2:
        return []
    if node.op_type == "Conv":
        return [(node.input[1], 0, lambda r: r >= 3, "")]
    if node.op_type == "ConvTranspose":
        return [(node.input[1], 1, lambda r: r >= 3, "")]
    if node.op_type == "Gemm":  # Y = A·B (+C), B is [K, N], or [N, K] with transB
        return [(node.input[1], 0 if attrs.get("transB", 0) else 1, lambda r: r == 2, "")]
    if node.op_type == "MatMul":  # X·W with W [K, N]; a constant left operand W·X has W [M, K]
        if node.input[0] in inits and node.input[1] not in inits:
            return [(node.input[0], 0, lambda r: r == 2, "")]
        return [(node.input[1], 1, lambda r: r == 2, "")]
    if node.op_type in RECURRENT and len(node.input) > 2:  # W [D, G·H, I], R [D, G·H, H]: rows are gates
        return [(node.input[k], 1, lambda r: r == 3, part) for k, part in ((1, "W"), (2, "R"))]
    return []


def made_at_run_time(model: onnx.ModelProto) -> list[str]:
    """The layers of a graph that stores none of its layer weights (every weight is computed when
    it runs, e.g. by ConstantOfShape, as in the onnx wheel's `light` model-zoo files): checked
    before onnxsim, which would materialise such weights at full size only to find nothing
    trained. Empty when any layer reads a stored weight (directly or through one cheap op)."""
    stored = {t.name for t in model.graph.initializer} | {
        o for n in model.graph.node if n.op_type == "Constant" for o in n.output}
    producer = {o: n for n in model.graph.node for o in n.output}
    made = []
    for node in model.graph.node:
        for weight, *_ in weights_of(node, stored):
            src = producer.get(weight)
            if weight in stored or (src is not None and src.op_type in WEIGHT_VIEWS and src.input
                                    and src.input[0] in stored):
                return []
            if src is not None:  # a weight fed as a graph input is the caller's business, not "made"
                made.append(f"{node.name or node.op_type}: {src.op_type}")
    return made


def fixed_transforms(layers: list[PrunableLayer], weights: dict[str, np.ndarray]) -> dict[str, str]:
    """Layers whose weight looks like a fixed transform, not learned (an STFT or DCT basis stored
    as a Conv weight): most of its GEMM-view rows are single tones, nearly all their energy in a
    few frequency bins. Pruning such a layer breaks the transform; the report flags it."""
    out = {}
    for layer in layers:
        w = np.moveaxis(weights[layer.weight], layer.out_axis, 0).reshape(layer.shape[layer.out_axis], -1)
        if w.shape[1] < 16 or w.shape[0] < 4:
            continue
        power = np.abs(np.fft.rfft(w.astype(np.float64), n=2 * w.shape[1], axis=1)) ** 2
        total = power.sum(axis=1)
        live = total > 0
        if live.sum() < 4:
            continue
        top = np.sort(power[live], axis=1)[:, -6:].sum(axis=1) / total[live]
        if np.median(top) > 0.9:
            out[layer.name] = (f"its rows are single tones ({np.median(top):.0%} of their energy in a few "
                               f"frequencies): a fixed transform such as an STFT basis, not a learned layer")
    return out
