"""BatchNormalization in training: batch statistics in the training graph, running statistics
recomputed afterwards (onnxprune/batchnorm.py)."""
import numpy as np
import onnx
from onnx import TensorProto, helper, numpy_helper

from onnxprune import autodiff, batchnorm
from onnxprune.plumbing import session, tensor_shapes


def _two_norms(channels: int = 3) -> onnx.ModelProto:
    """x → BN1 → Relu → Conv 1×1 → BN2, with running statistics far from the data's."""
    rng = np.random.default_rng(0)
    inits = []
    for p in ("bn1", "bn2"):
        inits += [numpy_helper.from_array(rng.uniform(0.5, 2, channels).astype(np.float32), f"{p}.scale"),
                  numpy_helper.from_array(rng.normal(size=channels).astype(np.float32), f"{p}.bias"),
                  numpy_helper.from_array(np.full(channels, 10, np.float32), f"{p}.mean"),
                  numpy_helper.from_array(np.full(channels, 100, np.float32), f"{p}.var")]
    inits.append(numpy_helper.from_array(rng.normal(size=(channels, channels, 1, 1)).astype(np.float32), "w"))
    nodes = [helper.make_node("BatchNormalization", ["x", "bn1.scale", "bn1.bias", "bn1.mean", "bn1.var"], ["a"],
                              name="bn1", epsilon=1e-5),
             helper.make_node("Relu", ["a"], ["r"], name="relu"),
             helper.make_node("Conv", ["r", "w"], ["c"], name="conv"),
             helper.make_node("BatchNormalization", ["c", "bn2.scale", "bn2.bias", "bn2.mean", "bn2.var"], ["y"],
                              name="bn2", epsilon=1e-5)]
    g = helper.make_graph(nodes, "g", [helper.make_tensor_value_info("x", TensorProto.FLOAT, ["N", channels, 5, 5])],
                          [helper.make_tensor_value_info("y", TensorProto.FLOAT, None)], inits)
    return helper.make_model(g, opset_imports=[helper.make_opsetid("", 17)])


def _batch_norm(x: np.ndarray, scale, bias, eps=1e-5) -> np.ndarray:
    """What a framework computes in training mode: the batch's own mean and biased variance."""
    axes = (0, 2, 3)
    m, v = x.mean(axes, keepdims=True), x.var(axes, keepdims=True)
    return (x - m) / np.sqrt(v + eps) * scale.reshape(1, -1, 1, 1) + bias.reshape(1, -1, 1, 1)


def test_training_graph_normalizes_each_batch_as_frameworks_do():
    model = _two_norms()
    x = (3 + 2 * np.random.default_rng(1).standard_normal((16, 3, 5, 5))).astype(np.float32)
    stats = batchnorm.on_batch_statistics(model, tensor_shapes(model, {"x": x[:2]}))
    assert [s[:2] for s in stats] == [("bn1.mean", "bn1.var"), ("bn2.mean", "bn2.var")]
    w = {t.name: numpy_helper.to_array(t) for t in model.graph.initializer}
    got = session(model).run(None, {"x": x})[0]
    a = np.maximum(_batch_norm(x, w["bn1.scale"], w["bn1.bias"]), 0)
    c = np.einsum("nihw,oi->nohw", a, w["w"][:, :, 0, 0])
    np.testing.assert_allclose(got, _batch_norm(c, w["bn2.scale"], w["bn2.bias"]), rtol=1e-4, atol=1e-4)


def test_recalibrated_statistics_are_the_population_statistics_of_each_norms_input():
    """The first norm's input is the data itself: its running statistics become the data's exactly.
    The second sees the first normalized on batch statistics, as in training; with the statistics
    written back, the model in inference normalizes the data (mean ≈ bias, std ≈ scale)."""
    model = _two_norms()
    x = (3 + 2 * np.random.default_rng(1).standard_normal((64, 3, 5, 5))).astype(np.float32)
    stats = batchnorm.recalibrate(model, {"x": x}, batch_size=16)
    np.testing.assert_allclose(stats["bn1.mean"], x.mean((0, 2, 3)), rtol=1e-5, atol=1e-5)
    np.testing.assert_allclose(stats["bn1.var"], x.var((0, 2, 3)), rtol=1e-4)
    assert set(stats) == {"bn1.mean", "bn1.var", "bn2.mean", "bn2.var"}
    for t in model.graph.initializer:
        if t.name in stats:
            t.CopyFrom(numpy_helper.from_array(stats[t.name], t.name))
    y = session(model).run(None, {"x": x})[0]
    w = {t.name: numpy_helper.to_array(t) for t in model.graph.initializer}
    np.testing.assert_allclose(y.mean((0, 2, 3)), w["bn2.bias"], atol=0.05)
    np.testing.assert_allclose(y.std((0, 2, 3)), w["bn2.scale"], rtol=0.05)


def test_frozen_statistics_keep_the_inference_semantics():
    """Under MIN_BATCH samples a batch gives no statistics: BatchNorm trains as x·a + b."""
    model = _two_norms()
    x = np.random.default_rng(2).standard_normal((2, 3, 5, 5)).astype(np.float32)
    want = session(model).run(None, {"x": x})[0]
    batchnorm.as_affine(model, tensor_shapes(model, {"x": x}))
    assert not any(n.op_type == "BatchNormalization" for n in model.graph.node)
    np.testing.assert_allclose(session(model).run(None, {"x": x})[0], want, rtol=1e-4, atol=1e-5)


def test_the_switch_selects_frozen_or_batch_statistics():
    """One graph for both phases: SWITCH 0 computes the inference semantics, 1 the batch's."""
    model = _two_norms()
    x = (3 + 2 * np.random.default_rng(3).standard_normal((16, 3, 5, 5))).astype(np.float32)
    frozen = session(model).run(None, {"x": x})[0]
    shapes = tensor_shapes(model, {"x": x[:2]})
    on_batches = _two_norms()
    batchnorm.on_batch_statistics(on_batches, shapes)
    batch = session(on_batches).run(None, {"x": x})[0]
    assert batchnorm.switchable(model, shapes)
    model = autodiff.expand_private(model)  # the fused batch-statistics node, as the step graph runs it
    for value, want in ((0.0, frozen), (1.0, batch)):
        for t in model.graph.initializer:
            if t.name == batchnorm.SWITCH:
                t.CopyFrom(numpy_helper.from_array(np.array([value], np.float32), t.name))
        np.testing.assert_allclose(session(model).run(None, {"x": x})[0], want, rtol=1e-4, atol=1e-4)
