"""Every op between a trained Conv weight and the loss, as training sees it (expanded where it is a
composite, through its gradient rule otherwise): the expansion computes what the op computes, and the
gradient of the whole training graph matches finite differences of the original op."""
import numpy as np
import onnx
import pytest
from onnx import TensorProto, helper, numpy_helper

import onnxprune
from onnxprune.losses import MeanSquaredError
from onnxprune.plumbing import session, tensor_shapes
from onnxprune import autodiff
from onnxprune.losses import LOSS
from onnxprune.standins import STANDINS, apply
from onnxprune.training import build_training_graph

RNG = np.random.default_rng(0)
W = (0.5 * RNG.standard_normal((4, 3, 1, 1))).astype(np.float32)
X = RNG.standard_normal((2, 3, 4, 4)).astype(np.float32)


def _model(op, attrs=None, extra_inputs=(), extra_inits=(), opset=17, w_as_input=False):
    """x -> Conv(w) -> h -> op -> y."""
    nodes = [helper.make_node("Conv", ["x", "w"], ["h"], name="conv"),
             helper.make_node(op, ["h", *extra_inputs], ["y"], name="the_op", **(attrs or {}))]
    inputs = [helper.make_tensor_value_info("x", TensorProto.FLOAT, ["N", 3, 4, 4])]
    inits = list(extra_inits)
    if w_as_input:
        inputs.append(helper.make_tensor_value_info("w", TensorProto.FLOAT, list(W.shape)))
    else:
        inits.append(numpy_helper.from_array(W, "w"))
    g = helper.make_graph(nodes, "g", inputs, [helper.make_tensor_value_info("y", TensorProto.FLOAT, None)], inits)
    return helper.make_model(g, opset_imports=[helper.make_opsetid("", opset)], ir_version=8)


def _const(name, value):
    return numpy_helper.from_array(np.asarray(value, np.float32), name)


def _grad(graph: onnx.ModelProto, w: str, feed: dict) -> np.ndarray:
    """d loss / d w of a training graph, through autodiff's backward pass, run by ORT."""
    em, grads = autodiff.backward(graph, LOSS, [w], tensor_shapes(graph, feed))
    m = onnx.ModelProto()
    m.CopyFrom(graph)
    m.graph.node.extend(em.nodes)
    m.graph.initializer.extend(em.consts)
    del m.graph.output[:]
    m.graph.output.append(helper.make_tensor_value_info(grads[w], TensorProto.FLOAT, None))
    return session(m).run(None, feed)[0]


def _finite_differences(loss, w: np.ndarray, eps: float) -> np.ndarray:
    """Central differences of `loss` at `w`, element by element."""
    fd = np.zeros(w.shape)
    for i in np.ndindex(w.shape):
        up, down = w.astype(np.float64), w.astype(np.float64)
        up[i] += eps
        down[i] -= eps
        fd[i] = (loss(up) - loss(down)) / (2 * eps)
    return fd


RESIZE_SCALES = numpy_helper.from_array(np.array([1, 1, 2, 2], np.float32), "scales")
CASES = {
    "HardSigmoid": dict(attrs={"alpha": 0.3, "beta": 0.4}),
    "HardSwish": dict(),
    "GlobalMaxPool": dict(),
    "Elu": dict(attrs={"alpha": 0.7}),
    "Selu": dict(),
    "Celu": dict(attrs={"alpha": 1.5}),
    "Softplus": dict(),
    "Softsign": dict(),
    "Mish": dict(opset=18),
    "ThresholdedRelu": dict(attrs={"alpha": 0.3}),
    "ConvTranspose": dict(extra_inputs=["k", "kb"], extra_inits=[_const("k", RNG.standard_normal((4, 3, 3, 3))),
                                                                 _const("kb", RNG.standard_normal(3))]),
    "ConvTranspose/stride": dict(op="ConvTranspose", attrs={"strides": [2, 2], "pads": [1, 1, 1, 1],
                                                            "output_padding": [1, 1]},
                                 extra_inputs=["k"], extra_inits=[_const("k", RNG.standard_normal((4, 3, 3, 3)))]),
    "ConvTranspose/groups": dict(op="ConvTranspose", attrs={"strides": [2, 2], "group": 2, "dilations": [2, 1]},
                                 extra_inputs=["k"], extra_inits=[_const("k", RNG.standard_normal((4, 2, 2, 3)))]),
    "PRelu": dict(extra_inputs=["slope"], extra_inits=[_const("slope", np.array([[[0.1]], [[0.2]], [[-0.3]], [[0.5]]]))]),
    "LayerNormalization": dict(attrs={"axis": -2}, extra_inputs=["s", "b"],
                               extra_inits=[_const("s", RNG.random((4, 4)) + 0.5), _const("b", RNG.random((4, 4)))]),
    "InstanceNormalization": dict(extra_inputs=["s", "b"],
                                  extra_inits=[_const("s", RNG.random(4) + 0.5), _const("b", RNG.random(4))]),
    "Sum": dict(extra_inputs=["h", "h"]),
    "Mean": dict(extra_inputs=["h"]),
    "ReduceSumSquare": dict(attrs={"axes": [2, 3], "keepdims": 0}),
    "ReduceSumSquare/18": dict(op="ReduceSumSquare", opset=18, extra_inputs=["axes"],
                               extra_inits=[numpy_helper.from_array(np.array([1, 3], np.int64), "axes")]),
    "ReduceMax": dict(attrs={"axes": [2, 3]}),
    "ReduceMax/channels": dict(op="ReduceMax", attrs={"axes": [1, 3], "keepdims": 0}),
    "ReduceMin/18": dict(op="ReduceMin", opset=18, attrs={"keepdims": 0}, extra_inputs=["axes"],
                         extra_inits=[numpy_helper.from_array(np.array([-1], np.int64), "axes")]),
    "DepthToSpace": dict(attrs={"blocksize": 2, "mode": "CRD"}),
    "SpaceToDepth": dict(attrs={"blocksize": 2}),
    "AveragePool": dict(attrs={"kernel_shape": [2, 2]}),
    "AveragePool/pads": dict(op="AveragePool", attrs={"kernel_shape": [3, 3], "strides": [2, 2], "pads": [1, 1, 1, 1]}),
    "AveragePool/same": dict(op="AveragePool", attrs={"kernel_shape": [3, 3], "strides": [2, 2],
                                                      "auto_pad": "SAME_LOWER"}),
    "AveragePool/ceil": dict(op="AveragePool", attrs={"kernel_shape": [3, 3], "strides": [2, 2], "pads": [1, 1, 0, 0],
                                                      "ceil_mode": 1, "count_include_pad": 1}),
    "Resize": dict(attrs={"mode": "nearest"}, extra_inputs=["", "scales"], extra_inits=[RESIZE_SCALES]),
    "Resize/linear": dict(op="Resize", attrs={"mode": "linear"}, extra_inputs=["", "scales"], extra_inits=[RESIZE_SCALES]),
    "Resize/linear-align-corners": dict(op="Resize", attrs={"mode": "linear", "coordinate_transformation_mode":
                                                            "align_corners"},
                                        extra_inputs=["", "", "sizes"],
                                        extra_inits=[numpy_helper.from_array(np.array([2, 4, 7, 5], np.int64), "sizes")]),
    "Resize/cubic-1.5": dict(op="Resize", attrs={"mode": "cubic"}, extra_inputs=["", "scales15"],
                             extra_inits=[_const("scales15", [1, 1, 1.5, 1.5])]),
    "LRN": dict(attrs={"size": 3, "alpha": 0.5, "beta": 0.75, "bias": 1.0}),
    "LRN/wide": dict(op="LRN", attrs={"size": 5, "alpha": 0.3, "beta": 0.5, "bias": 2.0}),
    "MaxPool": dict(attrs={"kernel_shape": [2, 2], "strides": [2, 2]}),
    "MaxPool/pads": dict(op="MaxPool", attrs={"kernel_shape": [3, 3], "strides": [2, 2], "pads": [1, 1, 1, 1]}),
}


@pytest.mark.parametrize("op", list(CASES))
def test_training_matches_the_op_and_its_gradient(op, tmp_path):
    kw = dict(CASES[op])
    op = kw.pop("op", op)
    model = _model(op, **kw)
    shapes = tensor_shapes(model, {"x": X})
    replaced, notes = apply(model, shapes)
    if op in STANDINS:  # a composite: expanded into primitives
        assert notes and op in notes[0] and op not in {n.op_type for n in replaced.graph.node}
    else:  # trained through its own rule
        assert not notes and op in autodiff.RULES
    want = session(model).run(None, {"x": X})[0]
    got = session(replaced).run(None, {"x": X})[0]
    assert want.shape == got.shape and np.allclose(want, got, atol=1e-6)

    target = RNG.standard_normal(want.shape).astype(np.float32)
    graph = build_training_graph(replaced, {"w": W.shape}, set(), [MeanSquaredError("y", "y", "t", want.shape[1:])],
                                 shapes)
    grad = _grad(graph, "w", {"x": X, "t": target})

    probe = session(_model(op, **kw, w_as_input=True))  # finite differences of the original op

    def loss(w):
        return float(np.mean((probe.run(None, {"x": X, "w": w.astype(np.float32)})[0].astype(np.float64) - target) ** 2))
    fd = _finite_differences(loss, W, 1e-3)  # small: a max or a clamp must not switch sides within ±eps
    assert np.linalg.norm(grad - fd) <= 0.03 * np.linalg.norm(fd), (grad.ravel(), fd.ravel())


def test_a_resize_that_crops_keeps_its_op():
    roi = numpy_helper.from_array(np.array([0, 0, 0.1, 0.1, 1, 1, 0.9, 0.9], np.float32), "roi")
    model = _model("Resize", attrs={"mode": "linear", "coordinate_transformation_mode": "tf_crop_and_resize"},
                   extra_inputs=["roi", "scales"], extra_inits=[roi, RESIZE_SCALES])
    replaced, notes = apply(model, tensor_shapes(model, {"x": X}))
    assert not notes and "Resize" in {n.op_type for n in replaced.graph.node}


def test_hardswish_model_trains_end_to_end_and_keeps_its_op(tmp_path):
    """Refused by ORT 1.19's training API ('cannot differentiate op HardSwish'); trained through its
    rule, and written with HardSwish."""
    model = _model("HardSwish")
    model.graph.node.append(helper.make_node("GlobalAveragePool", ["y"], ["p"], name="gap"))
    model.graph.node.append(helper.make_node("Flatten", ["p"], ["f"], name="flat"))
    model.graph.initializer.append(numpy_helper.from_array(RNG.standard_normal((4, 5)).astype(np.float32), "fc_w"))
    model.graph.node.append(helper.make_node("MatMul", ["f", "fc_w"], ["logits"], name="fc"))
    del model.graph.output[:]
    model.graph.output.append(helper.make_tensor_value_info("logits", TensorProto.FLOAT, ["N", 5]))
    x = RNG.standard_normal((64, 3, 4, 4)).astype(np.float32)
    out = tmp_path / "o.onnx"
    r = onnxprune.prune(model, 0.5, data={"x": x}, out=out, latency=False,
                        schedule=onnxprune.Schedule(epochs=2, finetune_epochs=1, batch_size=16))
    assert r.report["phases"] and r.report["phases"][0]["steps"] > 0
    assert np.isfinite(r.report["phases"][-1]["final_task_loss"])
    assert "HardSwish" in {n.op_type for n in onnx.load(str(out)).graph.node}


def test_an_op_without_a_rule_is_refused_in_one_line_with_the_routes():
    from onnxprune.errors import OnnxPruneError

    model = _model("Round")
    model.graph.node.append(helper.make_node("Flatten", ["y"], ["f"], name="flat"))
    del model.graph.output[:]
    model.graph.output.append(helper.make_tensor_value_info("f", TensorProto.FLOAT, ["N", 64]))
    with pytest.raises(OnnxPruneError, match="op Round \\(node the_op\\).*--mode layerwise.*--method magnitude"):
        onnxprune.prune(model, 0.5, data={"x": RNG.standard_normal((16, 3, 4, 4)).astype(np.float32)},
                        latency=False, schedule=onnxprune.Schedule(epochs=1, finetune_epochs=1))


def test_the_gradient_table_agrees_with_the_rules():
    """docs/gradients.md (made by benchmarks/probe_gradients.py) lists what the rules and expansions cover."""
    from conftest import ROOT

    rows = [line.split("|") for line in (ROOT / "docs" / "gradients.md").read_text().splitlines()
            if line.startswith("| ") and not line.startswith("| op ")]
    by_rule = {r[1].strip().split(" ")[0] for r in rows if r[2].strip() == "rule"}
    expanded = {r[1].strip().split(" ")[0] for r in rows if r[2].strip() == "expansion"}
    assert by_rule and by_rule <= set(autodiff.RULES)
    assert expanded and expanded <= set(STANDINS)


@pytest.mark.parametrize("attrs", [{}, {"strides": [2, 2], "pads": [1, 0, 1, 0], "output_padding": [1, 0]},
                                   {"strides": [2, 1], "group": 2}], ids=["plain", "stride-pads", "groups"])
def test_conv_transpose_kernel_gets_its_gradient(attrs, tmp_path):
    """ConvTranspose is a prunable layer: its own kernel must get the right gradient."""
    k = (0.5 * RNG.standard_normal((4, 2 if attrs.get("group") else 3, 3, 3))).astype(np.float32)
    x = RNG.standard_normal((2, 4, 5, 5)).astype(np.float32)

    def build(k_as_input):
        g = helper.make_graph([helper.make_node("ConvTranspose", ["x", "k"], ["y"], name="up", **attrs)], "g",
                              [helper.make_tensor_value_info("x", TensorProto.FLOAT, ["N", 4, 5, 5])]
                              + ([helper.make_tensor_value_info("k", TensorProto.FLOAT, list(k.shape))] if k_as_input else []),
                              [helper.make_tensor_value_info("y", TensorProto.FLOAT, None)],
                              [] if k_as_input else [numpy_helper.from_array(k, "k")])
        return helper.make_model(g, opset_imports=[helper.make_opsetid("", 17)], ir_version=8)
    model = build(False)
    shapes = tensor_shapes(model, {"x": x})
    target = RNG.standard_normal(shapes["y"]).astype(np.float32)
    graph = build_training_graph(model, {"k": k.shape}, set(), [MeanSquaredError("y", "y", "t", shapes["y"][1:])],
                                 shapes)
    grad = _grad(graph, "k", {"x": x, "t": target})
    probe = session(build(True))
    # the loss is quadratic in k: central differences are exact up to rounding
    fd = _finite_differences(lambda v: float(np.mean((probe.run(None, {"x": x, "k": v.astype(np.float32)})[0]
                                                      - target) ** 2)), k, 1e-2)
    assert np.linalg.norm(grad - fd) <= 0.01 * np.linalg.norm(fd)


def test_layerwise_window_stops_before_an_op_without_gradient(monkeypatch):
    """Without Softplus's rule, the layer's window ends before it instead of refusing."""
    from onnxprune import layerwise

    model = _model("Softplus")
    shapes = tensor_shapes(model, {"x": X})
    conv = model.graph.node[0]
    assert layerwise.window_cut(model, conv, {"conv"}, shapes) == frozenset()
    small, out = layerwise.layer_model(model, conv, {"x": X}, {"conv"})
    assert out == "y"  # with the rule, the window reaches the op
    monkeypatch.delitem(autodiff.RULES, "Softplus")
    cut = layerwise.window_cut(model, conv, {"conv"}, shapes)
    assert cut == {"the_op"}
    small, out = layerwise.layer_model(model, conv, {"x": X}, {"conv"}, cut)
    assert out == "h" and [n.op_type for n in small.graph.node] == ["Conv"]


def test_stand_in_constants_are_not_trained_and_user_parameters_are(tmp_path):
    """No constant of the training graph's own is written; PRelu's slope is the user's trainable
    parameter."""
    nodes = [helper.make_node("Conv", ["x", "w"], ["h"], name="conv"),
             helper.make_node("PRelu", ["h", "slope"], ["p"], name="act"),
             helper.make_node("AveragePool", ["p"], ["a"], name="pool", kernel_shape=[2, 2]),
             helper.make_node("Flatten", ["a"], ["f"], name="flat"),
             helper.make_node("MatMul", ["f", "fc"], ["logits"], name="fc")]
    inits = [numpy_helper.from_array(W, "w"), _const("slope", np.full((4, 1, 1), 0.25)),
             _const("fc", RNG.standard_normal((36, 3)))]
    g = helper.make_graph(nodes, "g", [helper.make_tensor_value_info("x", TensorProto.FLOAT, ["N", 3, 4, 4])],
                          [helper.make_tensor_value_info("logits", TensorProto.FLOAT, ["N", 3])], inits)
    model = helper.make_model(g, opset_imports=[helper.make_opsetid("", 17)], ir_version=8)
    x = RNG.standard_normal((32, 3, 4, 4)).astype(np.float32)
    out = tmp_path / "o.onnx"
    r = onnxprune.prune(model, 0.5, data={"x": x}, out=out, latency=False, simplify=False,
                        schedule=onnxprune.Schedule(epochs=2, finetune_epochs=1, batch_size=8, lr=0.05))
    written = {t.name: numpy_helper.to_array(t) for t in onnx.load(str(out)).graph.initializer}
    assert not any(name.startswith("onnxprune_standin") for name in written)
    assert not np.allclose(written["slope"], 0.25)  # trained
    assert {"AveragePool", "PRelu"} <= {n.op_type for n in onnx.load(str(out)).graph.node}
    assert r.report["phases"][0]["steps"] > 0


@pytest.mark.parametrize("op,direction,states,bias,extra", [
    ("LSTM", "forward", True, True, {}), ("LSTM", "reverse", False, True, {}),
    ("LSTM", "bidirectional", True, False, {}), ("LSTM", "bidirectional", False, True, {}),
    ("GRU", "forward", True, True, {}), ("GRU", "reverse", False, True, {"linear_before_reset": 1}),
    ("GRU", "bidirectional", False, False, {}), ("RNN", "forward", True, True, {}),
    ("RNN", "bidirectional", False, True, {}), ("RNN", "reverse", True, False, {})])
def test_recurrent_unrolled_matches_and_its_weights_train(op, direction, states, bias, extra, tmp_path):
    """LSTM/GRU/RNN train unrolled into primitives: the same outputs, and the right gradient for the
    input weights W (checked against finite differences)."""
    T, N, I, H = 4, 3, 5, 2
    D = 2 if direction == "bidirectional" else 1
    G = {"LSTM": 4, "GRU": 3, "RNN": 1}[op]
    rng = np.random.default_rng(1)
    w = (0.5 * rng.standard_normal((D, G * H, I))).astype(np.float32)
    consts = {"R": 0.5 * rng.standard_normal((D, G * H, H)), "B": 0.1 * rng.standard_normal((D, 2 * G * H)),
              "h0": rng.standard_normal((D, N, H)), "c0": rng.standard_normal((D, N, H))}
    outs = ("Y", "Yh", "Yc") if op == "LSTM" else ("Y", "Yh")
    x = rng.standard_normal((T, N, I)).astype(np.float32)

    def build(w_as_input):
        ins = ["x", "W", "R", "B" if bias else "", "", "h0" if states else ""] + (
            ["c0" if states else ""] if op == "LSTM" else [])
        g = helper.make_graph(
            [helper.make_node(op, ins, list(outs), name="rnn", hidden_size=H, direction=direction, **extra)], "g",
            [helper.make_tensor_value_info("x", TensorProto.FLOAT, [T, "N", I])]
            + ([helper.make_tensor_value_info("W", TensorProto.FLOAT, list(w.shape))] if w_as_input else []),
            [helper.make_tensor_value_info(o, TensorProto.FLOAT, None) for o in outs],
            [_const(k, v) for k, v in consts.items() if k != "c0" or op == "LSTM"] + ([] if w_as_input else [numpy_helper.from_array(w, "W")]))
        return helper.make_model(g, opset_imports=[helper.make_opsetid("", 17)], ir_version=8)
    model = build(False)
    shapes = tensor_shapes(model, {"x": x})
    replaced, notes = apply(model, shapes)
    assert notes and op in notes[0] and op not in {n.op_type for n in replaced.graph.node}
    for want, got in zip(session(model).run(None, {"x": x}), session(replaced).run(None, {"x": x})):
        assert want.shape == got.shape and np.allclose(want, got, atol=1e-5)

    del replaced.graph.output[1:]  # train on Y
    target = rng.standard_normal(shapes["Y"]).astype(np.float32)
    graph = build_training_graph(replaced, {"W": w.shape}, set(), [MeanSquaredError("Y", "Y", "t", shapes["Y"][1:])],
                                 shapes)
    grad = _grad(graph, "W", {"x": x, "t": target})
    probe = session(build(True))
    fd = _finite_differences(lambda v: float(np.mean((probe.run(["Y"], {"x": x, "W": v.astype(np.float32)})[0]
                                                      - target) ** 2)), w, 1e-3)
    assert np.linalg.norm(grad - fd) <= 0.02 * np.linalg.norm(fd)
