"""Task-loss blocks, in the manner of ORT's onnxblock: each term is a small class whose `build()`
adds its nodes to the training graph and returns the scalar it computes. `loss_terms()` picks
them: cross-entropy with labels; without, the dense model teaches the pruned one (KL divergence
to its softmax over the class axis, for [N, C] scores and at every position of an output under a
final Softmax such as a CTC head's [N, T, C]; mean squared error for any other output).
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import ClassVar

import numpy as np
import onnx
from onnx import helper

from .errors import OnnxPruneError
from .metrics import detections, is_classifier, softmax

PREFIX = "onnxprune"
CLASS_AXIS = f"{PREFIX}_class_axis"  # ReduceSum's axes input (opset ≥ 13, which training uses)
LABELS = "labels"
LOSS, TASK_LOSS, PENALTY = f"{PREFIX}_loss", f"{PREFIX}_task_loss", f"{PREFIX}_penalty"  # the training graph's outputs


@dataclass
class LossTerm:
    output: str  # the model output this term scores
    tensor: str  # what the loss reads: the output, or the logits under a final (Log)Softmax
    target: str  # the training input that feeds labels or teacher values
    target_dims: tuple = ()  # the target's dims after the sample axis
    weight: float = 1.0  # the term's share of the task loss

    what: ClassVar[str] = ""
    target_type: ClassVar[int] = onnx.TensorProto.FLOAT

    def describe(self) -> str:
        return f"{self.what} ({self.output})" + (f" × {self.weight:g}" if self.weight != 1 else "")

    def weighted(self, b, i: int) -> str:
        value = self.build(b, i)
        if self.weight == 1:
            return value
        return b.node("Mul", [value, b.const(f"{PREFIX}_term_weight{i}", np.array(self.weight, np.float32))],
                      [f"{PREFIX}_weighted{i}"])

    def target_info(self) -> onnx.ValueInfoProto:
        return helper.make_tensor_value_info(self.target, self.target_type, ["N", *self.target_dims])

    def build(self, b, i: int) -> str:
        """Add this term's nodes through the builder `b` (`b.node`, `b.const`); return its scalar."""
        raise NotImplementedError


class CrossEntropy(LossTerm):
    what = "cross-entropy on labels"
    target_type = onnx.TensorProto.INT64

    def build(self, b, i):  # log_prob output: its gradient needs it
        return b.node("SoftmaxCrossEntropyLoss", [self.tensor, self.target],
                      [f"{PREFIX}_ce{i}", f"{PREFIX}_logp{i}"], reduction="mean")


@dataclass
class KLDivergence(LossTerm):
    axis: int = -1  # the class axis; every other axis after the first holds positions (time steps, pixels)

    what: ClassVar[str] = "KL divergence to the dense model's softmax"

    def describe(self) -> str:
        return super().describe() + (f", over axis {self.axis} at every position" if len(self.target_dims) > 1 else "")

    def build(self, b, i):
        # Σ_c p_teacher·log p_student, averaged over samples and positions; KL up to the teacher's
        # (constant) entropy
        axes = b.const(f"{CLASS_AXIS}{i}", np.array([self.axis], np.int64))
        logp = b.node("LogSoftmax", [self.tensor], [f"{PREFIX}_logp{i}"], axis=self.axis)
        prod = b.node("Mul", [logp, self.target], [f"{PREFIX}_plogp{i}"])
        per_position = b.node("ReduceSum", [prod, axes], [f"{PREFIX}_plogp_sum{i}"], keepdims=0)
        mean = b.node("ReduceMean", [per_position], [f"{PREFIX}_kl_mean{i}"], keepdims=0)
        return b.node("Neg", [mean], [f"{PREFIX}_kl{i}"])


@dataclass
class MeanSquaredError(LossTerm):
    scale: np.ndarray | None = None  # weights broadcast over one sample's dims (see `relative_scale`)

    what: ClassVar[str] = "mean squared error to the dense model's output"

    def describe(self) -> str:
        return super().describe() + (", relative to its mean square" if self.scale is not None else "")

    def build(self, b, i):
        diff = b.node("Sub", [self.tensor, self.target], [f"{PREFIX}_diff{i}"])
        sq = b.node("Mul", [diff, diff], [f"{PREFIX}_diff_sq{i}"])
        if self.scale is not None:
            sq = b.node("Mul", [sq, b.const(f"{PREFIX}_mse_scale{i}", self.scale)], [f"{PREFIX}_diff_sq_scaled{i}"])
        return b.node("ReduceMean", [sq], [f"{PREFIX}_mse{i}"], keepdims=0)


@dataclass
class SigmoidCrossEntropy(LossTerm):
    """For an output made by a final Sigmoid (a speech probability, a mask): cross-entropy of the
    pruned model's Bernoulli to the dense model's, on the logits under the Sigmoid,
    mean(softplus(z) − p·z), whose gradient σ(z) − p does not vanish where the probability
    saturates (squared error on the probability does: silero-vad's frames near 0 and 1)."""
    what: ClassVar[str] = "cross-entropy to the dense model's sigmoid probabilities"

    def build(self, b, i):  # the logits may differ from the output by a reshape: both are flattened
        flat = b.const(f"{PREFIX}_flat{i}", np.array([-1], np.int64))
        z = b.node("Reshape", [self.tensor, flat], [f"{PREFIX}_z{i}"])
        p = b.node("Reshape", [self.target, flat], [f"{PREFIX}_p{i}"])
        soft = b.node("Softplus", [z], [f"{PREFIX}_softplus{i}"])
        pz = b.node("Mul", [p, z], [f"{PREFIX}_pz{i}"])
        return b.node("ReduceMean", [b.node("Sub", [soft, pz], [f"{PREFIX}_bce{i}"])], [f"{PREFIX}_bce_mean{i}"],
                      keepdims=0)


@dataclass
class ProbabilityCrossEntropy(LossTerm):
    """For an output that averages sigmoid probabilities (silero-vad's ReduceMean over its
    frames): the same cross-entropy on the probability q itself, mean(−p·log q − (1−p)·log(1−q)),
    q kept inside (ε, 1−ε)."""
    what: ClassVar[str] = "cross-entropy to the dense model's probabilities"
    EPS: ClassVar[float] = 1e-6

    def build(self, b, i):
        lo = b.const(f"{PREFIX}_q_lo{i}", np.array(self.EPS, np.float32))
        hi = b.const(f"{PREFIX}_q_hi{i}", np.array(1 - self.EPS, np.float32))
        one = b.const(f"{PREFIX}_one{i}", np.array(1, np.float32))
        q = b.node("Clip", [self.tensor, lo, hi], [f"{PREFIX}_q{i}"])
        on = b.node("Mul", [self.target, b.node("Log", [q], [f"{PREFIX}_logq{i}"])], [f"{PREFIX}_plogq{i}"])
        p_off = b.node("Sub", [one, self.target], [f"{PREFIX}_p_off{i}"])
        q_off = b.node("Sub", [one, q], [f"{PREFIX}_q_off{i}"])
        off = b.node("Mul", [p_off, b.node("Log", [q_off], [f"{PREFIX}_logq_off{i}"])], [f"{PREFIX}_plogq_off{i}"])
        both = b.node("Add", [on, off], [f"{PREFIX}_ll{i}"])
        return b.node("Neg", [b.node("ReduceMean", [both], [f"{PREFIX}_ll_mean{i}"], keepdims=0)],
                      [f"{PREFIX}_pce{i}"])


RESHAPES = ("Reshape", "Squeeze", "Unsqueeze", "Flatten", "Identity")  # they keep the order of elements


def _sigmoid_under(model: onnx.ModelProto, output: str, through: tuple[str, ...]):
    """The Sigmoid node that makes `output` through ops of `through` only, or None."""
    made = {o: n for n in model.graph.node for o in n.output}
    node = made.get(output)
    while node is not None and node.op_type in through:
        node = made.get(node.input[0])
    return node if node is not None and node.op_type == "Sigmoid" else None


def averaged_sigmoid(model: onnx.ModelProto, output: str) -> bool:
    """Whether `output` is a Sigmoid's probabilities averaged (ReduceMean) and reshaped."""
    return _sigmoid_under(model, output, RESHAPES + ("ReduceMean",)) is not None


def sigmoid_logits(model: onnx.ModelProto, output: str) -> str | None:
    """The tensor under the Sigmoid that makes `output` through reshapes only; None where the
    output is not a sigmoid's."""
    node = _sigmoid_under(model, output, RESHAPES)
    return node.input[0] if node is not None else None


def relative_scale(out: np.ndarray) -> np.ndarray:
    """Weights that make the squared error of `out` relative to its mean square, so the loss is
    on the scale of the reported relative error whatever the output's units, and λ means the
    same for every model. A detector's scores and coordinates each count half: in pixels the
    coordinates would otherwise drown the scores, and training would lose every detection."""
    out = out.astype(np.float64)
    split = detections(out)
    if split is None:
        return np.array(1 / max(float(np.mean(out ** 2)), 1e-12), np.float32)
    axis, unit = split
    shape = [1] * (out.ndim - 1)
    shape[axis - 1] = len(unit)
    scale = np.empty(len(unit))
    for group in (unit, ~unit):
        mean_square = float(np.mean(np.compress(group, out, axis) ** 2))
        scale[group] = len(unit) / (2 * group.sum() * max(mean_square, 1e-12))
    return scale.reshape(shape).astype(np.float32)


def class_axis(model: onnx.ModelProto, output: str, rank: int) -> int | None:
    """The axis a final Softmax/LogSoftmax normalizes `output` over (as a negative index), or
    None. Before opset 13 Softmax flattens from its axis on, which means one class axis only
    when that axis is the last or the output is [N, C]."""
    opset = next((o.version for o in model.opset_import if o.domain in ("", "ai.onnx")), 13)
    for node in model.graph.node:
        if output in node.output and node.op_type in ("Softmax", "LogSoftmax"):
            axis = next((a.i for a in node.attribute if a.name == "axis"), -1 if opset >= 13 else 1) % rank
            return axis - rank if opset >= 13 or axis == rank - 1 else None
    return None


def logits_of(model: onnx.ModelProto, output: str, rank: int = 2) -> str:
    """An output under a final Softmax/LogSoftmax is trained on the logits under it:
    softmax-cross-entropy (or KL) on probabilities would be wrong."""
    if class_axis(model, output, rank) is None:
        return output
    return next(n.input[0] for n in model.graph.node if output in n.output)


def loss_terms(model: onnx.ModelProto, selected: list[str], labels: np.ndarray | None,
               dense: dict[str, np.ndarray], classes=None, distill: float = 0.0) -> tuple[list[LossTerm], dict[str, np.ndarray]]:
    """The terms for `selected` outputs of `model`, and the arrays that feed their targets:
    `labels` (or None) and the dense model's outputs on the training samples. `classes`: the
    outputs that hold class scores (None: judged by shape). `distill`: with labels, the weight
    of a KL term to the dense model's softmax beside the cross-entropy (0: labels alone); the
    dense model's soft targets keep what it knew, which a few thousand labels alone erode."""
    terms, targets = [], {}
    for i, name in enumerate(selected):
        out = dense[name]
        target = f"{PREFIX}_target{i}"
        tensor = logits_of(model, name, out.ndim)
        axis = class_axis(model, name, out.ndim)
        if labels is not None:
            labels = labels.astype(np.int64)
            if out.ndim < 2 or labels.shape != (out.shape[0], *out.shape[2:]):
                raise OnnxPruneError(f"labels of shape {labels.shape} do not fit output {name} of shape {out.shape} "
                                     "(want one class id per sample, classes on axis 1)")
            terms.append(CrossEntropy(name, tensor, target, labels.shape[1:]))
            targets[target] = labels
            if distill > 0 and out.ndim == 2 and (is_classifier(out) if classes is None else name in classes):
                soft = f"{PREFIX}_soft{i}"
                terms.append(KLDivergence(name, tensor, soft, out.shape[1:], distill))
                targets[soft] = _as_probabilities(model, name, tensor, out)
        elif is_classifier(out) if classes is None else name in classes:
            terms.append(KLDivergence(name, tensor, target, out.shape[1:]))
            targets[target] = _as_probabilities(model, name, tensor, out)
        elif axis is not None and out.ndim > 2:  # per-position classes: [N, T, C] (CTC), [N, C, H, W]
            terms.append(KLDivergence(name, tensor, target, out.shape[1:], axis=axis))
            targets[target] = _as_probabilities(model, name, tensor, out)
        elif logits := sigmoid_logits(model, name):
            terms.append(SigmoidCrossEntropy(name, logits, target, out.shape[1:]))
            targets[target] = out.astype(np.float32)
        elif averaged_sigmoid(model, name):
            terms.append(ProbabilityCrossEntropy(name, name, target, out.shape[1:]))
            targets[target] = out.astype(np.float32)
        else:
            terms.append(MeanSquaredError(name, name, target, out.shape[1:], scale=relative_scale(out)))
            targets[target] = out.astype(np.float32)
    return terms, targets


def _as_probabilities(model, name: str, logits: str, out: np.ndarray) -> np.ndarray:
    """The dense output as class probabilities: softmax of logits, or as produced under a final
    Softmax (already probabilities) or LogSoftmax (log-probabilities)."""
    if logits == name:
        return softmax(out)
    final = next(n for n in model.graph.node if name in n.output)
    return (np.exp(out) if final.op_type == "LogSoftmax" else out).astype(np.float32)
