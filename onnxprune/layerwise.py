"""Layer-wise reconstruction (`--mode layerwise`), the training stage for graphs ONNX Runtime
cannot train end to end. Layer after layer, in graph order: capture the layer's input from the
model as pruned so far and its output from the dense model, then train that one node alone (its
weight and bias) to reproduce the dense output (mean squared error) under the reweighted
penalty, hard-prune it to the rate and fine-tune it with the mask held. No labels and no
gradient through the rest of the graph are needed, and memory holds one layer's activations.
"""
from __future__ import annotations

import copy
import dataclasses
from pathlib import Path

import numpy as np
import onnx
from onnx import helper

from . import standins
from .data import run_model
from .errors import OnnxPruneError
from .export import with_weights
from .layers import FLOATS, PARAMETER_INPUTS, PrunableLayer
from .losses import MeanSquaredError
from .layout import batch_axis
from .plumbing import initializer_map, move_axis, sample_axes, session, shapes_at, tensor_shapes, with_outputs
from .schedule import Phase, current_weights, reweighted
from .training import Trainer, build_training_graph, coef_name, correction_name, mask_name

CALIBRATION_SAMPLES = 8192
SAMPLES_FIRST = "__samples_first"
# one layer's reconstruction is a small, well-conditioned problem: both of its phases train at 10x
# the end-to-end --lr (LeNet-5 at 0.9: 94.3% vs 92.6% at 1x, same epochs)
LR_SCALE = 10.0
# ops a layer's output may pass through before it is compared: cheap, with ORT gradients, and the
# same in training and inference (not BatchNorm or Dropout)
FOLLOWERS = {"Relu", "LeakyRelu", "Sigmoid", "Tanh", "Elu", "Selu", "HardSigmoid", "Softplus", "MaxPool",
             "AveragePool", "GlobalAveragePool", "Flatten", "Reshape", "Squeeze", "Unsqueeze", "Transpose",
             "Identity"}


def capture(model: onnx.ModelProto, names: list[str], arrays: dict[str, np.ndarray],
            input_names: list[str], axes: dict[str, int] | None = None, shapes=None) -> list[np.ndarray]:
    """The values of tensors `names` of `model` on `arrays` (graph outputs added for them), samples
    first: a tensor with its samples on another axis (`axes`, with its rank from `shapes`) is
    transposed in the graph."""
    axes = axes or {}
    m = copy.deepcopy(model)
    for name in names:
        if axes.get(name, 0):
            m.graph.node.append(move_axis(name, axes[name], 0, len(shapes[name]), samples_first(name, axes)))
    sess = session(with_outputs(m, [samples_first(n, axes) for n in names], only=True),
                   f"the model to capture {names[0]}")
    return run_model(sess, arrays, input_names, rows_are_samples=True)


def samples_first(name: str, axes: dict[str, int]) -> str:
    """The name a tensor has once its samples are moved to axis 0 (itself when they are there)."""
    return f"{name}{SAMPLES_FIRST}" if axes.get(name, 0) else name


def layer_model(model: onnx.ModelProto, node: onnx.NodeProto, xs: dict[str, np.ndarray],
                stop: set[str], cut: frozenset[str] = frozenset(),
                axes: dict[str, int] | None = None, shapes=None) -> tuple[onnx.ModelProto, str]:
    """The node and the cheap ops after it (activation, pooling, reshape: each with one
    non-constant input, reading a tensor nothing else reads) up to the next layer in `stop` or a
    graph output, or a node in `cut` (one ORT cannot train through). The node's computed inputs
    (`xs`: its activation, and a recurrent layer's initial state) are the graph inputs, constant
    inputs are initializers. Every input and the output have their samples first: a tensor whose
    samples are on another axis (`axes`: a recurrent layer's time-major input; ranks from
    `shapes`) is transposed inside the small model, and `xs` holds it samples first.
    Reconstructing what the next layer reads (after ReLU, after pooling) ignores differences the
    model itself discards. Returns the model and the tensor to reconstruct."""
    axes = axes or {}
    inits = initializer_map(model.graph)
    readers: dict[str, list[onnx.NodeProto]] = {}
    for n in model.graph.node:
        for i in n.input:
            readers.setdefault(i, []).append(n)
    outputs = {o.name for o in model.graph.output}
    chain, out = [node], node.output[0]
    while out not in outputs and len(readers.get(out, [])) == 1:
        nxt = readers[out][0]
        dynamic = [i for i in nxt.input if i and i not in inits]
        if (nxt.op_type not in FOLLOWERS or nxt.name in stop or nxt.name in cut or dynamic != [out]
                or len(nxt.output) != 1 or _moves_samples(nxt, out, shapes)):
            break
        chain.append(nxt)
        out = nxt.output[0]
    consts = dict.fromkeys(i for n in chain for i in n.input if i in inits)
    nodes = [move_axis(samples_first(t, axes), 0, axes[t], x.ndim, t) for t, x in xs.items() if axes.get(t, 0)]
    nodes += [copy.deepcopy(n) for n in chain]
    if axes.get(out, 0):
        nodes.append(move_axis(out, axes[out], 0, len(shapes[out]), samples_first(out, axes)))
        out = samples_first(out, axes)
    g = helper.make_graph(
        nodes, f"layer {node.name}",
        [helper.make_tensor_value_info(samples_first(name, axes), helper.np_dtype_to_tensor_dtype(x.dtype),
                                       ["N", *x.shape[1:]]) for name, x in xs.items()],
        [onnx.ValueInfoProto(name=out)], [copy.deepcopy(inits[i]) for i in consts])
    return helper.make_model(g, opset_imports=model.opset_import, ir_version=model.ir_version), out


def _sample_axes(model, calib, input_names, shapes) -> tuple[dict[str, int], dict]:
    """Where each tensor keeps its samples, when not on axis 0 (the graph's inputs are given
    samples first): the axis that grows from one sample to two, or with a fixed batch size b,
    the axis of size b (a time-major [T, 1, H] inside a batch-1 model). Also the shapes at two
    samples (the same shapes when the batch is fixed)."""
    try:
        two = tensor_shapes(model, {k: np.resize(calib[k], (2, *calib[k].shape[1:])) for k in input_names})
        found = sample_axes(shapes, two)
    except OnnxPruneError:  # a fixed batch size
        b = shapes[input_names[0]][0]
        two, found = shapes, {t: batch_axis(s, b) for t, s in shapes.items()}
    return {t: a for t, a in found.items() if a and t not in input_names}, two


def _moves_samples(node: onnx.NodeProto, x: str, shapes) -> bool:
    """A reshape that changes the first axis (un-merging [N·T, C] into [N, T, C]): the window's
    rows would no longer be its input's rows."""
    if node.op_type not in ("Reshape", "Flatten", "Squeeze", "Unsqueeze", "Transpose") or not shapes:
        return False
    a, b = shapes.get(x), shapes.get(node.output[0])
    return a is None or b is None or not a or not b or a[0] != b[0]


def computed_inputs(model: onnx.ModelProto, node: onnx.NodeProto) -> list[str]:
    """The node's inputs that the graph computes (not initializers, not omitted)."""
    inits = initializer_map(model.graph)
    return list(dict.fromkeys(i for i in node.input if i and i not in inits))


def run(model: onnx.ModelProto, layers: list[PrunableLayer], plan_of, select_of, arrays: dict[str, np.ndarray],
        input_names: list[str], sched, rng, progress, workdir: Path, threads, shapes, quantizer=None):
    """Prune `layers` of `model` node by node (an LSTM's W and R together). `plan_of(layers)`:
    their GroupPlan; `select_of(plan)`: its hard-pruning rule; `shapes`: the model's tensor
    shapes. Returns (masks, new weights by name, phases)."""
    n = len(arrays[input_names[0]])
    rows = np.sort(rng.permutation(n)[:CALIBRATION_SAMPLES])
    calib = {k: arrays[k][rows] for k in input_names}
    nodes = {nd.name: nd for nd in model.graph.node}
    by_node: dict[str, list[PrunableLayer]] = {}
    for layer in layers:
        by_node.setdefault(layer.node, []).append(layer)
    stop = set(by_node)
    axes, two = _sample_axes(model, calib, input_names, shapes)
    train_shapes = shapes_at(shapes, two, sched.batch_size)  # what stand-ins are built for
    cuts = {name: window_cut(model, nodes[name], stop, shapes, axes) for name in by_node}
    current = model
    masks: dict[str, np.ndarray] = {}
    weights: dict[str, np.ndarray] = {}
    phases: list[Phase] = []
    for i, (name, group) in enumerate(by_node.items()):
        node = nodes[name]
        wanted = computed_inputs(current, node)
        missing = [t for t in wanted if t not in calib]
        got = dict(zip(missing, capture(current, missing, calib, input_names, axes, shapes))) if missing else {}
        xs = {t: calib[t] if t in calib else got[t] for t in wanted}
        small, out = layer_model(current, node, xs, stop, cuts[name], axes, shapes)
        # what the dense model computes
        y = capture(model, [out.removesuffix(SAMPLES_FIRST)], calib, input_names, axes, shapes)[0].astype(np.float32)
        plan = plan_of(group)
        target = "onnxprune_layer_target"
        own = {layer.weight for layer in group}
        corrected = own & set(quantizer.names) if quantizer else set()
        slots = PARAMETER_INPUTS.get(node.op_type, ())
        params = {node.input[k] for k in slots if k < len(node.input)}  # the layer's weights and bias only
        trainable = [t.name for t in small.graph.initializer if t.name in params and t.data_type in FLOATS]
        frozen = ([mask_name(w) for w in plan.tensors] + [coef_name(w) for w in plan.penalized]
                  + [correction_name(w) for w in corrected])
        layer_arrays = {**{samples_first(t, axes): x for t, x in xs.items()}, target: y}
        rows = np.resize(np.arange(len(y)), sched.batch_size)

        expanded, _ = standins.apply(small, train_shapes)
        graph = build_training_graph(expanded, plan.tensors, set(plan.penalized),
                                     [MeanSquaredError(out, out, target, y.shape[1:])], train_shapes, corrected)
        trainer = Trainer(graph, trainable, frozen, workdir / f"layer{i}", sched.lr * LR_SCALE, threads,
                          probe={k: v[rows] for k, v in layer_arrays.items()})
        # λ in units of the output's mean square, so one setting suits every layer's scale
        scale = float(np.mean(y.astype(np.float64) ** 2)) or 1.0
        layer_sched = dataclasses.replace(sched, lam=sched.lam * scale, lr=sched.lr * LR_SCALE,
                                          finetune_lr=sched.lr * LR_SCALE)
        sub_quantizer = _only(quantizer, corrected)
        label = group[0].name if len(group) == 1 else name
        m, ph = reweighted(trainer, layer_arrays, plan, select_of(plan), layer_sched, rng, _labelled(progress, label),
                           sub_quantizer)
        masks.update(m)
        new = {t: trainer.get(t) for t in trainable}
        new.update(current_weights(trainer, plan))
        if sub_quantizer:
            for w in sub_quantizer.names:
                new[w] = sub_quantizer(w, new[w], m[w])
        weights.update(new)
        current = with_weights(current, new)
        for p in ph:
            p.name = f"{label} {p.name}"
        phases.extend(ph)
    return masks, weights, phases


def window_cut(model: onnx.ModelProto, node: onnx.NodeProto, stop: set[str], shapes,
               axes: dict[str, int] | None = None) -> frozenset[str]:
    """The followers the layer's window must stop before: those no gradient rule covers, even
    after expansion. Checked for every layer before any is trained, so a layer that cannot be
    trained at all is named in seconds, not after the layers before it."""
    axes = axes or {}
    probe = {}
    for t in computed_inputs(model, node):
        dims = list(shapes[t])
        dims.insert(0, dims.pop(axes.get(t, 0)))
        probe[t] = np.empty(dims, np.float32)
    cut: set[str] = set()
    while True:
        small, out = layer_model(model, node, probe, stop, frozenset(cut), axes, shapes)
        expanded, _ = standins.apply(small, shapes)
        bad = standins.without_rule(expanded)
        if not bad:
            return frozenset(cut)
        if any(n.name == node.name for n in bad) or all(n.name in cut for n in bad):
            raise OnnxPruneError(f"layer {node.name} ({node.op_type}) cannot be trained even alone (no gradient "
                                 f"rule for {', '.join(sorted({n.op_type for n in bad}))}); prune it one-shot with --method magnitude, or leave it out with "
                                 f"--exclude {node.name}")
        cut.update(n.name for n in bad)


def _only(quantizer, names):
    """The quantizer restricted to `names`; a shallow copy, so codebooks it fits land in the
    original's `books` too and the pipeline's final snap uses them."""
    if not quantizer or not names:
        return None
    q = copy.copy(quantizer)
    q.names = [n for n in quantizer.names if n in names]
    return q


def _labelled(progress, name):
    def bars(total, label):
        return progress(total, f"{name} {label}"[:24])
    return bars
