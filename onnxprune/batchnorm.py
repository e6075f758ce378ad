"""BatchNormalization in the train stage.

Frameworks train BatchNorm on each batch's own statistics and keep running averages for inference.
ORT 1.19's training API updates no running statistics (microsoft/onnxruntime#19370), so:
- `on_batch_statistics`: the training graph normalizes each batch itself (ReduceMean, Sub, Mul,
  Sqrt, Div: ops ORT differentiates), as the framework that trained the model did;
- `recalibrate`: after training, each BatchNorm's running mean and variance are recomputed from
  the training samples with the trained weights, as the written model will use them.
Frozen statistics under Adam cost a converged ResNet on MNIST at 10× about 1.3 points (PyTorch,
the same fine-tuning: 97.1% frozen vs 98.4% on batch statistics).

A batch of under MIN_BATCH samples gives no usable statistics (a fixed-batch model of 1): there
BatchNorm trains with its inference semantics, `as_affine`, statistics frozen.
"""
from __future__ import annotations

import numpy as np
import onnx
from onnx import helper, numpy_helper

from . import autodiff, standins
from .errors import OnnxPruneError
from .losses import PREFIX
from .plumbing import default_opset, first_line, session, tensor_shapes

MIN_BATCH = 16  # below it batch statistics are noise (Wu & He 2018: BatchNorm degrades under 16 per batch)


def trainable_norms(model: onnx.ModelProto, owned: set[str] | None = None) -> list[onnx.NodeProto]:
    """BatchNormalization nodes in inference form whose scale, bias, mean and variance are stored
    tensors (the ones training can own); with `owned`, only those whose mean and variance are
    among these (the written model's: a folded branch's or a view's constants are not)."""
    inits = {t.name for t in model.graph.initializer}
    return [n for n in model.graph.node if n.op_type == "BatchNormalization" and n.domain in ("", "ai.onnx")
            and all(i in inits for i in n.input[1:5]) and not any(n.output[1:])
            and (owned is None or all(i in owned for i in n.input[3:5]))]


def _epsilon(node: onnx.NodeProto) -> float:
    return next((a.f for a in node.attribute if a.name == "epsilon"), 1e-5)


def _rank(node: onnx.NodeProto, shapes: dict[str, tuple[int, ...]]) -> int:
    if node.input[0] not in shapes:
        raise OnnxPruneError(f"BatchNormalization {node.name}: the shape of its input {node.input[0]} is unknown")
    return len(shapes[node.input[0]])


def _replace(model: onnx.ModelProto, replaced: dict[str, list[onnx.NodeProto]]) -> None:
    """Each node whose first output is a key of `replaced` swapped for those nodes."""
    body = [m for n in model.graph.node for m in replaced.get(n.output[0] if n.output else "", [n])]
    del model.graph.node[:]
    model.graph.node.extend(body)


SWITCH = f"{PREFIX}_bn_on_batches"  # the frozen scalar `switchable` adds: 0 frozen statistics, 1 the batch's


def _affine(n: onnx.NodeProto, inits: dict, shapes, output: str) -> tuple[list, list]:
    """x·a + b with a = scale/√(var+ε) and b = bias − mean·a: the op's inference semantics in
    plain ops, statistics frozen. Returns the nodes and their constants."""
    x, scale, bias, mean, var = n.input[:5]
    p = f"{PREFIX}_bn/{n.output[0]}"  # outputs are unique; node names need not be
    inv = 1.0 / np.sqrt(numpy_helper.to_array(inits[var]).astype(np.float64) + _epsilon(n))
    shape = [-1] + [1] * (_rank(n, shapes) - 2)
    consts = [numpy_helper.from_array(inv.astype(np.float32), f"{p}/inv"),
              numpy_helper.from_array(np.array(shape, np.int64), f"{p}/shape")]
    return [helper.make_node("Mul", [scale, f"{p}/inv"], [f"{p}/a"], name=f"{p}/a"),
            helper.make_node("Mul", [mean, f"{p}/a"], [f"{p}/ma"], name=f"{p}/ma"),
            helper.make_node("Sub", [bias, f"{p}/ma"], [f"{p}/b"], name=f"{p}/b"),
            helper.make_node("Reshape", [f"{p}/a", f"{p}/shape"], [f"{p}/a4"], name=f"{p}/a4"),
            helper.make_node("Reshape", [f"{p}/b", f"{p}/shape"], [f"{p}/b4"], name=f"{p}/b4"),
            helper.make_node("Mul", [x, f"{p}/a4"], [f"{p}/xa"], name=f"{p}/xa"),
            helper.make_node("Add", [f"{p}/xa", f"{p}/b4"], [output], name=f"{p}/y")], consts


def _on_batch(n: onnx.NodeProto, shapes, opset: int, output: str) -> tuple[list, list, str, str]:
    """Normalization with the batch's mean and (biased) variance over every axis but the channel,
    then scale and shift. Returns the nodes, their constants, and the tensors ([1, C, 1…]) that
    hold the batch's mean and variance."""
    scale, bias = n.input[1:3]
    rank = _rank(n, shapes)
    s = standins.Sub(n, shapes, opset)
    # (x − mean)·(scale/√(var + ε)) + bias: the per-channel factor is folded before it meets the
    # activations, so the backward pass has two fewer full-size products
    nodes = standins.normalize(s, [0, *range(2, rank)], _epsilon(n), folded=True)
    per_channel = s.const("per_channel", np.array([-1] + [1] * (rank - 2), np.int64))
    nodes += [s.op("Reshape", [scale, per_channel], "scale"), s.op("Reshape", [bias, per_channel], "bias"),
              s.op("Mul", [s.name("inv_std"), s.name("scale")], "factor"),
              s.op("Mul", [s.name("centered"), s.name("factor")], "scaled"),
              s.op("Add", [s.name("scaled"), s.name("bias")], "y", output=output)]
    return nodes, s.consts, s.name("mean"), s.name("var")


BATCH_NORM = "BatchStatNorm"  # the training graph's fused form: (x, scale, bias) -> (y, centered, 1/std)


def _fused(n: onnx.NodeProto, output: str, rank: int) -> onnx.NodeProto:
    """Batch-statistics normalization as one node of the training graph's own domain, whose
    gradient is one analytic rule (`_batch_norm_grad`): the backward of its primitive form takes
    about 13 full-size passes, this one 5. Expanded into primitives (`_expand`) once the backward
    pass is built."""
    p = f"{PREFIX}_bn/{output}/"
    return helper.make_node(BATCH_NORM, list(n.input[:3]), [output, f"{p}centered", f"{p}inv_std"], name=f"{p}fused",
                            domain=autodiff.PRIVATE_DOMAIN, epsilon=_epsilon(n), rank=rank)


def _expand(n: onnx.NodeProto, opset: int) -> tuple[list, list]:
    x, scale, bias = n.input
    y, centered, inv_std = n.output
    attrs = {a.name: helper.get_attribute_value(a) for a in n.attribute}
    rank, eps = attrs["rank"], attrs["epsilon"]
    reduce_axes = [0, *range(2, rank)]
    p = n.name.removesuffix("fused")
    axes, per_channel = f"{p}axes", f"{p}per_channel"
    consts = [numpy_helper.from_array(np.array(reduce_axes, np.int64), axes),
              numpy_helper.from_array(np.array([-1] + [1] * (rank - 2), np.int64), per_channel),
              numpy_helper.from_array(np.array(eps, np.float32), f"{p}eps")]
    mk = helper.make_node

    def mean(t, out):  # axes are an input from opset 18 on
        return (mk("ReduceMean", [t, axes], [out], name=out, keepdims=1) if opset >= 18
                else mk("ReduceMean", [t], [out], name=out, axes=reduce_axes, keepdims=1))
    nodes = [mean(x, f"{p}mean"),
             mk("Sub", [x, f"{p}mean"], [centered], name=centered),
             mk("Mul", [centered, centered], [f"{p}sq"], name=f"{p}sq"),
             mean(f"{p}sq", f"{p}var"),
             mk("Add", [f"{p}var", f"{p}eps"], [f"{p}var_eps"], name=f"{p}var_eps"),
             mk("Sqrt", [f"{p}var_eps"], [f"{p}std"], name=f"{p}std"),
             mk("Reciprocal", [f"{p}std"], [inv_std], name=inv_std),
             mk("Reshape", [scale, per_channel], [f"{p}scale"], name=f"{p}scale"),
             mk("Reshape", [bias, per_channel], [f"{p}bias"], name=f"{p}bias"),
             mk("Mul", [inv_std, f"{p}scale"], [f"{p}factor"], name=f"{p}factor"),
             mk("Mul", [centered, f"{p}factor"], [f"{p}scaled"], name=f"{p}scaled"),
             mk("Add", [f"{p}scaled", f"{p}bias"], [y], name=f"{p}y")]
    return nodes, consts


autodiff.EXPANSIONS[BATCH_NORM] = _expand


@autodiff.rule(BATCH_NORM)
def _batch_norm_grad(n):
    """With x̂ = c·inv, y = γ·x̂ + β over m values per channel:
    dβ = Σg, dγ = inv·Σ(g·c), dx = a·g − a·dβ/m − c·(a·inv²·Σ(g·c)/m), a = γ·inv."""
    x, scale, _ = n.node.input
    _, c, inv = n.node.output
    xs = n.shape(x)
    axes = [0, *range(2, len(xs))]
    m = float(np.prod([xs[i] for i in axes]))
    per_channel = [1, xs[1]] + [1] * (len(xs) - 2)
    g = n.dy
    dbeta = n.reduce_sum(g, axes, keepdims=1)
    gc = n.reduce_sum(n.mul(g, c), axes, keepdims=1)
    a = n.mul(inv, n.reshape(scale, per_channel))
    out = [None, None, None]
    if n.need[0]:
        shift = n.mul(a, n.mul(dbeta, n.f(1 / m)))
        slope = n.mul(n.mul(a, n.mul(inv, inv)), n.mul(gc, n.f(1 / m)))
        out[0] = n.sub(n.sub(n.mul(g, a), shift), n.mul(c, slope))
    if n.need[1]:
        out[1] = n.reshape(n.mul(gc, inv), [xs[1]])
    if n.need[2]:
        out[2] = n.reshape(dbeta, [xs[1]])
    return out


def as_affine(model: onnx.ModelProto, shapes: dict[str, tuple[int, ...]]) -> None:
    """In place: each BatchNorm trains with its inference semantics, statistics frozen (ORT's own
    op would train on batch statistics that nothing carries into the written model). scale and
    bias stay trainable (and maskable)."""
    inits = {t.name: t for t in model.graph.initializer}
    replaced = {}
    for n in trainable_norms(model):
        replaced[n.output[0]], consts = _affine(n, inits, shapes, n.output[0])
        model.graph.initializer.extend(consts)
    _replace(model, replaced)


def fused_batch_statistics(model: onnx.ModelProto, shapes: dict[str, tuple[int, ...]],
                           owned: set[str] | None = None) -> None:
    """In place, for the training graph: each BatchNorm (of `owned` statistics) normalizes with its
    batch's statistics, as one fused node (`_fused`)."""
    replaced = {n.output[0]: [_fused(n, n.output[0], _rank(n, shapes))] for n in trainable_norms(model, owned)}
    _add_private_domain(model, replaced)
    _replace(model, replaced)


def _add_private_domain(model: onnx.ModelProto, replaced: dict) -> None:
    if replaced and not any(o.domain == autodiff.PRIVATE_DOMAIN for o in model.opset_import):
        model.opset_import.append(helper.make_opsetid(autodiff.PRIVATE_DOMAIN, 1))


def on_batch_statistics(model: onnx.ModelProto, shapes: dict[str, tuple[int, ...]],
                        owned: set[str] | None = None) -> list[tuple[str, str, str, str]]:
    """In place: each BatchNorm (of `owned` statistics) normalizes with its batch's statistics, in
    primitive ops. Returns, per BatchNorm, its running mean and variance initializers and the
    tensors that hold the batch's."""
    opset = default_opset(model)
    replaced, stats = {}, []
    for n in trainable_norms(model, owned):
        replaced[n.output[0]], consts, batch_mean, batch_var = _on_batch(n, shapes, opset, n.output[0])
        model.graph.initializer.extend(consts)
        stats.append((n.input[3], n.input[4], batch_mean, batch_var))
    _replace(model, replaced)
    return stats


def switchable(model: onnx.ModelProto, shapes: dict[str, tuple[int, ...]], owned: set[str] | None = None) -> bool:
    """In place: each BatchNorm computes both forms, y = frozen + s·(batch − frozen), with s the
    frozen scalar SWITCH (0 at first): one set of training artifacts serves a phase that trains
    on frozen statistics and one on the batch's. Returns whether there was any BatchNorm."""
    inits = {t.name: t for t in model.graph.initializer}
    replaced = {}
    for n in trainable_norms(model, owned):
        y = n.output[0]
        p = f"{PREFIX}_bn/{y}/"
        frozen, consts = _affine(n, inits, shapes, f"{p}frozen")
        batch, more = [_fused(n, f"{p}batch", _rank(n, shapes))], []
        mix = [helper.make_node("Sub", [f"{p}batch", f"{p}frozen"], [f"{p}delta"], name=f"{p}delta"),
               helper.make_node("Mul", [f"{p}delta", SWITCH], [f"{p}step"], name=f"{p}step"),
               helper.make_node("Add", [f"{p}frozen", f"{p}step"], [y], name=f"{p}mix")]
        replaced[y] = frozen + batch + mix
        model.graph.initializer.extend(consts + more)
    if replaced:
        model.graph.initializer.append(numpy_helper.from_array(np.zeros(1, np.float32), SWITCH))
    _add_private_domain(model, replaced)
    _replace(model, replaced)
    return bool(replaced)


def recalibrate(model: onnx.ModelProto, arrays: dict[str, np.ndarray], batch_size: int, seed: int = 0,
                max_batches: int = 64, owned: set[str] | None = None,
                shapes: dict[str, tuple[int, ...]] | None = None) -> dict[str, np.ndarray]:
    """Running mean and variance for each BatchNorm of `model` (trained weights in place; `owned`:
    only those whose statistics are among these tensors), over the samples in `arrays` (the model's
    inputs, samples first) in shuffled full batches, as training drew them (samples repeated when
    there are fewer than a batch): every BatchNorm normalizes on batch statistics, as in training,
    and each channel's batch means and variances are pooled over up to `max_batches` batches into
    the population's (mean of the variances plus the variance of the means). `shapes`: the graph's
    tensor shapes at any batch size, when the caller has them (only ranks are read)."""
    stats_model = onnx.ModelProto()
    stats_model.CopyFrom(model)
    n = len(next(iter(arrays.values())))
    order = np.random.default_rng(seed).permutation(n)
    order = np.resize(order, max(batch_size, n - n % batch_size))[:max_batches * batch_size]
    batches = [order[s:s + batch_size] for s in range(0, len(order), batch_size)]
    shapes = shapes or tensor_shapes(model, {k: v[batches[0]] for k, v in arrays.items()})
    stats = on_batch_statistics(stats_model, shapes, owned)
    if not stats:
        return {}
    names = [t for _, _, m, v in stats for t in (m, v)]
    del stats_model.graph.output[:]
    stats_model.graph.output.extend(helper.ValueInfoProto(name=t) for t in names)
    sess = session(stats_model, "the model to recompute its BatchNorm statistics")
    feeds = [i.name for i in sess.get_inputs()]
    try:
        runs = [sess.run(names, {k: arrays[k][idx] for k in feeds}) for idx in batches]
    except Exception as e:
        raise OnnxPruneError(f"ONNX Runtime could not recompute the BatchNorm statistics: {first_line(e)}") from None
    per = {t: np.stack([r[i].reshape(-1) for r in runs]).astype(np.float64) for i, t in enumerate(names)}
    out = {}
    for mean, var, batch_mean, batch_var in stats:
        means, variances = per[batch_mean], per[batch_var]
        out[mean] = means.mean(0).astype(np.float32)
        out[var] = (variances.mean(0) + means.var(0)).astype(np.float32)
    return out
