"""Stand-ins for ops ORT 1.19 cannot differentiate: each computes what the op computes, and the
gradient ORT takes through it matches finite differences of the original op."""
import numpy as np
import onnx
import pytest
from onnx import TensorProto, helper, numpy_helper

import onnxprune
from onnxprune.losses import MeanSquaredError
from onnxprune.plumbing import session, tensor_shapes
from onnxprune.standins import FALLBACKS, apply
from onnxprune.training import Trainer, build_training_graph, mask_name

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
    # a fallback, used only after ORT's own MaxPool gradient crashed on a graph
    "MaxPool/fallback": dict(op="MaxPool", attrs={"kernel_shape": [2, 2], "strides": [2, 2]}, fallback=True),
    "MaxPool/fallback-pads": dict(op="MaxPool", attrs={"kernel_shape": [3, 3], "strides": [2, 2], "pads": [1, 1, 1, 1],
                                                       "dilations": [1, 1]}, fallback=True),
}


@pytest.mark.parametrize("op", list(CASES))
def test_stand_in_matches_the_op_and_its_gradient(op, tmp_path):
    kw = dict(CASES[op])
    op, fallback = kw.pop("op", op), kw.pop("fallback", False)
    model = _model(op, **kw)
    shapes = tensor_shapes(model, {"x": X})
    replaced, notes = apply(model, shapes, fallback)
    assert fallback or op not in FALLBACKS
    assert notes and op in notes[0] and (fallback or op not in {n.op_type for n in replaced.graph.node})
    want = session(model).run(None, {"x": X})[0]
    got = session(replaced).run(None, {"x": X})[0]
    assert want.shape == got.shape and np.allclose(want, got, atol=1e-6)

    target = RNG.standard_normal(want.shape).astype(np.float32)
    graph = build_training_graph(replaced, {"w": W.shape}, set(), [MeanSquaredError("y", "y", "t", want.shape[1:])],
                                 shapes)
    tr = Trainer(graph, ["w"], [mask_name("w")], tmp_path, 1e-3)
    tr.module.lazy_reset_grad()
    tr.module(X, target)
    grad = np.array(tr.state.parameters["w"].grad).reshape(W.shape)

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
    """Refused before ('cannot differentiate op HardSwish'); now trained, and written with HardSwish."""
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
    assert any("HardSwish×1 trained through a stand-in" in c for c in r.report["preparation"])
    assert r.report["phases"] and r.report["phases"][0]["steps"] > 0
    assert "HardSwish" in {n.op_type for n in onnx.load(str(out)).graph.node}


def test_an_op_whose_gradient_crashes_is_refused_in_one_line(monkeypatch):
    """ORT 1.19's AveragePool gradient dies with SIGFPE: without a stand-in, refuse instead of crashing."""
    from onnxprune import standins
    from onnxprune.errors import OnnxPruneError

    monkeypatch.delitem(standins.STANDINS, "AveragePool")
    model = _model("AveragePool", attrs={"kernel_shape": [2, 2]})
    model.graph.node.append(helper.make_node("Flatten", ["y"], ["f"], name="flat"))
    del model.graph.output[:]
    model.graph.output.append(helper.make_tensor_value_info("f", TensorProto.FLOAT, ["N", 36]))
    with pytest.raises(OnnxPruneError, match="cannot train through AveragePool node the_op: .*SIGFPE.*--mode layerwise"):
        onnxprune.prune(model, 0.5, data={"x": RNG.standard_normal((16, 3, 4, 4)).astype(np.float32)},
                        latency=False, schedule=onnxprune.Schedule(epochs=1, finetune_epochs=1))


@pytest.mark.parametrize("message,words", [
    ("Type Error: Type 'tensor(float)' of input parameter (y) of operator (LSTMGrad) in node "
     "(the_op_training_Grad/LSTMGrad_0) is invalid.", "no working CPU gradient for op LSTM (node the_op)"),
    ("gradient builder has not been registered: HardSigmoid for node hs_1", "cannot differentiate op HardSigmoid (node hs_1)"),
    ("Could not find an implementation for ConvTransposeGrad(1) node with name 'up_Grad/ConvTransposeGrad_0'",
     "no working CPU gradient for op ConvTranspose (node up)"),
])
def test_graph_builder_errors_name_the_op_and_the_routes_without_gradients(message, words):
    from onnxprune.training import _explain_gradient_error

    text = _explain_gradient_error(message, small_model_graph(), ["w"])
    assert words in text and "--method magnitude" in text and "--mode layerwise" in text


def test_an_internal_assertion_names_the_ops_not_known_to_train():
    from onnxprune.training import LOSS, _explain_gradient_error

    m = _model("LRN", attrs={"size": 3})
    m.graph.node.append(helper.make_node("ReduceMean", ["y"], [LOSS], name="loss", keepdims=0))
    text = _explain_gradient_error("gradient_builder_base.h:123 OutputDefs().size() check failed", m, ["w"])
    assert "not known to train LRN (node the_op)" in text and "Conv" not in text.split("train ")[1].split(";")[0]


def small_model_graph():
    return _model("Relu")


def test_the_probe_table_agrees_with_known_trainable_ops():
    """docs/gradients.md (made by benchmarks/probe_gradients.py) and standins.KNOWN_TRAINABLE agree."""
    from conftest import ROOT
    from onnxprune import standins

    rows = [line.split("|") for line in (ROOT / "docs" / "gradients.md").read_text().splitlines()
            if line.startswith("| ") and not line.startswith("| op ")]
    trains = {r[1].strip() for r in rows if r[2].strip() == "trains"}
    assert trains and trains <= standins.KNOWN_TRAINABLE
    standin_ops = {r[1].strip().split(" ")[0] for r in rows if r[3].strip() == "stand-in"}
    assert standin_ops <= set(standins.STANDINS)


@pytest.mark.parametrize("attrs", [{}, {"strides": [2, 2], "pads": [1, 0, 1, 0], "output_padding": [1, 0]},
                                   {"strides": [2, 1], "group": 2}], ids=["plain", "stride-pads", "groups"])
def test_conv_transpose_kernel_trains_through_its_stand_in(attrs, tmp_path):
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
    replaced, notes = apply(model, shapes)
    assert notes and "ConvTranspose" in notes[0]
    target = RNG.standard_normal(shapes["y"]).astype(np.float32)
    graph = build_training_graph(replaced, {"k": k.shape}, set(), [MeanSquaredError("y", "y", "t", shapes["y"][1:])],
                                 shapes)
    tr = Trainer(graph, ["k"], [mask_name("k")], tmp_path, 1e-3)
    tr.module.lazy_reset_grad()
    tr.module(x, target)
    grad = np.array(tr.state.parameters["k"].grad).reshape(k.shape)
    probe = session(build(True))
    # the loss is quadratic in k: central differences are exact up to rounding
    fd = _finite_differences(lambda v: float(np.mean((probe.run(None, {"x": x, "k": v.astype(np.float32)})[0]
                                                      - target) ** 2)), k, 1e-2)
    assert np.linalg.norm(grad - fd) <= 0.01 * np.linalg.norm(fd)


def test_layerwise_window_stops_before_an_op_without_gradient(monkeypatch):
    """Without HardSigmoid's stand-in, the layer's window ends before it instead of refusing."""
    from onnxprune import layerwise, standins

    model = _model("HardSigmoid")
    shapes = tensor_shapes(model, {"x": X})
    conv = model.graph.node[0]
    assert layerwise.window_cut(model, conv, {"conv"}, shapes) == frozenset()
    small, out = layerwise.layer_model(model, conv, {"x": X}, {"conv"})
    assert out == "y"  # with the stand-in, the window reaches the activation
    monkeypatch.delitem(standins.STANDINS, "HardSigmoid")
    cut = layerwise.window_cut(model, conv, {"conv"}, shapes)
    assert cut == {"the_op"}
    small, out = layerwise.layer_model(model, conv, {"x": X}, {"conv"}, cut)
    assert out == "h" and [n.op_type for n in small.graph.node] == ["Conv"]


def test_a_native_crash_in_training_is_a_one_line_error(tmp_path):
    """ORT 1.19's AveragePool gradient dies with SIGFPE. Built without its stand-in, the training
    graph crashes the first step, which runs in a child process: this process gets one line."""
    from onnxprune.errors import OnnxPruneError

    model = _model("AveragePool", attrs={"kernel_shape": [2, 2]})
    shapes = tensor_shapes(model, {"x": X})
    graph = build_training_graph(model, {"w": W.shape}, set(), [MeanSquaredError("y", "y", "t", shapes["y"][1:])],
                                 shapes)
    probe = {"x": X, "t": np.zeros(shapes["y"], np.float32)}
    with pytest.raises(OnnxPruneError, match=r"crashed \(SIGFPE\) taking a training step.*AveragePool \(node the_op\)"):
        Trainer(graph, ["w"], [mask_name("w")], tmp_path, 1e-3, probe=probe)
    fine = build_training_graph(apply(model, shapes)[0], {"w": W.shape}, set(),
                                [MeanSquaredError("y", "y", "t", shapes["y"][1:])], shapes)
    tr = Trainer(fine, ["w"], [mask_name("w")], tmp_path / "ok", 1e-3, probe=probe)
    assert np.isfinite(tr.step(probe)[0])


def test_stand_in_constants_are_not_trained_and_user_parameters_are(tmp_path):
    """AveragePool's stand-in is a Conv whose kernel of ones must stay ones; PRelu's slope, now read
    by a Mul, is still the user's trainable parameter."""
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
    assert any("AveragePool×1" in c for c in r.report["preparation"])


@pytest.mark.parametrize("op,direction,states,bias,extra", [
    ("LSTM", "forward", True, True, {}), ("LSTM", "reverse", False, True, {}),
    ("LSTM", "bidirectional", True, False, {}), ("LSTM", "bidirectional", False, True, {}),
    ("GRU", "forward", True, True, {}), ("GRU", "reverse", False, True, {"linear_before_reset": 1}),
    ("GRU", "bidirectional", False, False, {}), ("RNN", "forward", True, True, {}),
    ("RNN", "bidirectional", False, True, {}), ("RNN", "reverse", True, False, {})])
def test_recurrent_unrolled_matches_and_its_weights_train(op, direction, states, bias, extra, tmp_path):
    """ORT 1.19 crashes or refuses LSTM/GRU/RNN training; the unrolled stand-in gives the same outputs
    and the right gradient for the input weights W (checked against finite differences)."""
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
    tr = Trainer(graph, ["W"], [mask_name("W")], tmp_path, 1e-3, probe={"x": x, "t": target})
    tr.module.lazy_reset_grad()
    tr.module(x, target)
    grad = np.array(tr.state.parameters["W"].grad).reshape(w.shape)
    probe = session(build(True))
    fd = _finite_differences(lambda v: float(np.mean((probe.run(["Y"], {"x": x, "W": v.astype(np.float32)})[0]
                                                      - target) ** 2)), w, 1e-3)
    assert np.linalg.norm(grad - fd) <= 0.02 * np.linalg.norm(fd)


def test_a_crash_is_retried_once_with_the_fallback_stand_ins(tmp_path, monkeypatch):
    """When ORT's own gradient of an op crashes the first step (here AveragePool's SIGFPE, its
    stand-in moved to the fallbacks), training is built once more with the fallbacks and runs."""
    from onnxprune import standins

    monkeypatch.setitem(standins.FALLBACKS, "AveragePool", standins.STANDINS["AveragePool"])
    monkeypatch.delitem(standins.STANDINS, "AveragePool")
    monkeypatch.delitem(standins.CRASHES, "AveragePool")  # not refused up front: it really crashes
    model = _model("AveragePool", attrs={"kernel_shape": [2, 2]})
    model.graph.node.append(helper.make_node("Flatten", ["y"], ["f"], name="flat"))
    del model.graph.output[:]
    model.graph.output.append(helper.make_tensor_value_info("f", TensorProto.FLOAT, ["N", 36]))
    r = onnxprune.prune(model, 0.5, data={"x": RNG.standard_normal((16, 3, 4, 4)).astype(np.float32)},
                        out=tmp_path / "o.onnx", latency=False, simplify=False,
                        schedule=onnxprune.Schedule(epochs=1, finetune_epochs=1, batch_size=8))
    prepared = " ".join(r.report["preparation"])
    assert "AveragePool×1" in prepared and "crashed" in prepared
