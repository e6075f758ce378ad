"""Stand-ins for ops ORT 1.19 cannot differentiate: each computes what the op computes, and the
gradient ORT takes through it matches finite differences of the original op."""
import numpy as np
import onnx
import pytest
from onnx import TensorProto, helper, numpy_helper

import onnxprune
from onnxprune.losses import MeanSquaredError
from onnxprune.plumbing import session, tensor_shapes
from onnxprune.standins import apply
from onnxprune.training import Trainer, build_training_graph, coef_name, mask_name

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


RESIZE_SCALES = numpy_helper.from_array(np.array([1, 1, 2, 2], np.float32), "scales")
CASES = {
    "HardSigmoid": dict(attrs={"alpha": 0.3, "beta": 0.4}),
    "HardSwish": dict(),
    "GlobalMaxPool": dict(),
    "Resize": dict(attrs={"mode": "nearest"}, extra_inputs=["", "scales"], extra_inits=[RESIZE_SCALES]),
}


@pytest.mark.parametrize("op", list(CASES))
def test_stand_in_matches_the_op_and_its_gradient(op, tmp_path):
    kw = CASES[op]
    model = _model(op, **kw)
    shapes = tensor_shapes(model, {"x": X})
    replaced, notes = apply(model, shapes)
    assert notes and op in notes[0] and op not in {n.op_type for n in replaced.graph.node}
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
    fd = np.zeros_like(W, dtype=np.float64)
    eps = 1e-3  # small: a max or a clamp must not switch sides within ±eps
    for i in np.ndindex(W.shape):
        up, down = W.astype(np.float64), W.astype(np.float64)
        up[i] += eps
        down[i] -= eps
        fd[i] = (loss(up) - loss(down)) / (2 * eps)
    assert np.linalg.norm(grad - fd) <= 0.03 * np.linalg.norm(fd), (grad.ravel(), fd.ravel())


def test_a_resize_that_is_not_whole_number_nearest_keeps_its_op():
    scales = numpy_helper.from_array(np.array([1, 1, 1.5, 1.5], np.float32), "scales")
    model = _model("Resize", attrs={"mode": "linear"}, extra_inputs=["", "scales"], extra_inits=[scales])
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
