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
from .layers import PrunableLayer
from .losses import MeanSquaredError
from .plumbing import initializer_map, session, with_outputs
from .schedule import Phase, current_weights, reweighted
from .training import Trainer, build_training_graph, coef_name, correction_name, mask_name

CALIBRATION_SAMPLES = 8192
# one layer's reconstruction is a small, well-conditioned problem: both of its phases train at 10x
# the end-to-end --lr (LeNet-5 at 0.9: 94.3% vs 92.6% at 1x, same epochs)
LR_SCALE = 10.0
# ops a layer's output may pass through before it is compared: cheap, with ORT gradients, and the
# same in training and inference (not BatchNorm or Dropout)
FOLLOWERS = {"Relu", "LeakyRelu", "Sigmoid", "Tanh", "Elu", "Selu", "HardSigmoid", "Softplus", "MaxPool",
             "AveragePool", "GlobalAveragePool", "Flatten", "Reshape", "Squeeze", "Unsqueeze", "Transpose",
             "Identity"}


def capture(model: onnx.ModelProto, names: list[str], arrays: dict[str, np.ndarray],
            input_names: list[str]) -> list[np.ndarray]:
    """The values of tensors `names` of `model` on `arrays` (graph outputs added for them)."""
    sess = session(with_outputs(model, names, only=True), f"the model to capture {names[0]}")
    return run_model(sess, arrays, input_names)


def layer_model(model: onnx.ModelProto, node: onnx.NodeProto, x: np.ndarray,
                stop: set[str], cut: frozenset[str] = frozenset()) -> tuple[onnx.ModelProto, str]:
    """The node and the cheap ops after it (activation, pooling, reshape: each with one
    non-constant input, reading a tensor nothing else reads) up to the next layer in `stop` or a
    graph output, or a node in `cut` (one ORT cannot train through); its activation input is the
    graph input, constant inputs are initializers.
    Reconstructing what the next layer reads (after ReLU, after pooling) ignores differences the
    model itself discards. Returns the model and the tensor to reconstruct."""
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
                or len(nxt.output) != 1):
            break
        chain.append(nxt)
        out = nxt.output[0]
    data = next(i for i in node.input if i not in inits)
    consts = dict.fromkeys(i for n in chain for i in n.input if i in inits)
    g = helper.make_graph(
        [copy.deepcopy(n) for n in chain], f"layer {node.name}",
        [helper.make_tensor_value_info(data, helper.np_dtype_to_tensor_dtype(x.dtype), ["N", *x.shape[1:]])],
        [onnx.ValueInfoProto(name=out)], [copy.deepcopy(inits[i]) for i in consts])
    return helper.make_model(g, opset_imports=model.opset_import, ir_version=model.ir_version), out


def run(model: onnx.ModelProto, layers: list[PrunableLayer], plan_of, select_of, arrays: dict[str, np.ndarray],
        input_names: list[str], sched, rng, progress, workdir: Path, threads, shapes, quantizer=None):
    """Prune `layers` of `model` one by one. `plan_of(layer)`: its GroupPlan; `select_of(plan)`:
    its hard-pruning rule; `shapes`: the model's tensor shapes. Returns (masks, new weights by
    name, phases)."""
    n = len(arrays[input_names[0]])
    rows = np.sort(rng.permutation(n)[:CALIBRATION_SAMPLES])
    calib = {k: arrays[k][rows] for k in input_names}
    nodes = {nd.name: nd for nd in model.graph.node}
    stop = {layer.name for layer in layers}
    cuts = {layer.name: window_cut(model, nodes[layer.name], stop, shapes) for layer in layers}
    current = model
    masks: dict[str, np.ndarray] = {}
    weights: dict[str, np.ndarray] = {}
    phases: list[Phase] = []
    for i, layer in enumerate(layers):
        node = nodes[layer.name]
        inits = initializer_map(current.graph)
        data = next(x for x in node.input if x not in inits)
        x = calib[data] if data in calib else capture(current, [data], calib, input_names)[0]
        small, out = layer_model(current, node, x, stop, cuts[layer.name])
        y = capture(model, [out], calib, input_names)[0].astype(np.float32)  # what the dense model computes
        plan = plan_of(layer)
        target = "onnxprune_layer_target"
        corrected = {layer.weight} if quantizer and layer.weight in quantizer.names else set()
        small, _ = standins.apply(small, shapes)
        standins.check_crashes(small, [layer.weight], [out])
        graph = build_training_graph(small, plan.tensors, set(plan.penalized),
                                     [MeanSquaredError(out, out, target, y.shape[1:])], shapes, corrected)
        trainable = [t.name for t in small.graph.initializer if t.name in node.input
                     and t.data_type == onnx.TensorProto.FLOAT]  # the layer's weight and bias only
        frozen = ([mask_name(w) for w in plan.tensors] + [coef_name(w) for w in plan.penalized]
                  + [correction_name(w) for w in corrected])
        layer_arrays = {data: x, target: y}
        rows = np.resize(np.arange(len(x)), sched.batch_size)
        trainer = Trainer(graph, trainable, frozen, workdir / f"layer{i}", sched.lr * LR_SCALE, threads,
                          probe={k: v[rows] for k, v in layer_arrays.items()})
        # λ in units of the output's mean square, so one setting suits every layer's scale
        scale = float(np.mean(y.astype(np.float64) ** 2)) or 1.0
        layer_sched = dataclasses.replace(sched, lam=sched.lam * scale, lr=sched.lr * LR_SCALE,
                                          finetune_lr=sched.lr * LR_SCALE)
        sub_quantizer = _only(quantizer, corrected)
        m, ph = reweighted(trainer, layer_arrays, plan, select_of(plan), layer_sched, rng, _labelled(progress, layer.name),
                           sub_quantizer)
        masks.update(m)
        new = {name: trainer.get(name) for name in trainable}
        new.update(current_weights(trainer, plan))
        if sub_quantizer:
            for w in sub_quantizer.names:
                new[w] = sub_quantizer(w, new[w], m[w])
        weights.update(new)
        current = with_weights(current, new)
        for p in ph:
            p.name = f"{layer.name} {p.name}"
        phases.extend(ph)
    return masks, weights, phases


def window_cut(model: onnx.ModelProto, node: onnx.NodeProto, stop: set[str], shapes) -> frozenset[str]:
    """The followers the layer's window must stop before: those ORT cannot train through even
    with a stand-in. Checked for every layer before any is trained, so a layer that cannot be
    trained at all is named in seconds, not after the layers before it."""
    inits = initializer_map(model.graph)
    data = next(i for i in node.input if i not in inits)
    probe = np.empty((1, *shapes[data][1:]), np.float32)
    cut: set[str] = set()
    while True:
        small, out = layer_model(model, node, probe, stop, frozenset(cut))
        trainable, _ = standins.apply(small, shapes)
        bad = [n for n in trainable.graph.node if n.op_type not in standins.KNOWN_TRAINABLE
               and not n.name.startswith(standins.PREFIX)]
        if not bad:
            return frozenset(cut)
        if any(n.name == node.name for n in bad) or all(n.name in cut for n in bad):
            raise OnnxPruneError(f"layer {node.name} ({node.op_type}) cannot be trained by ONNX Runtime 1.19, even "
                                 f"alone; prune it one-shot with --method magnitude, or leave it out with "
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
