"""Finding prunable weights and preparing graphs, on built graphs and real topologies."""
import numpy as np
import pytest
from onnx import TensorProto, helper, numpy_helper

from conftest import ONNX_DATA, small_model
from onnxprune.layers import find_prunable, trainable_parameters
from onnxprune.loading import prepare, read_model
from onnxprune.plumbing import default_opset


def test_lenet_layers(lenet):
    layers, skipped = find_prunable(read_model(lenet))
    assert [(layer.name, layer.op, layer.shape, layer.out_axis) for layer in layers] == [
        ("conv1", "Conv", (20, 1, 5, 5), 0), ("conv2", "Conv", (50, 20, 5, 5), 0),
        ("fc1", "Gemm", (500, 800), 0), ("fc2", "Gemm", (10, 500), 0)]
    assert sum(layer.size for layer in layers) == 430_500
    assert not skipped


def test_matmul_layers_exclude_and_trainable_biases(digits):
    model = read_model(digits)
    layers, _ = find_prunable(model)
    assert [layer.out_axis for layer in layers] == [1, 1, 1]  # X·W: W is [in, out]
    layers, skipped = find_prunable(model, exclude=("dense2*",))
    assert [s.reason for s in skipped] == ["excluded by --exclude"]
    assert "dense0/bias" in trainable_parameters(model, layers)


def test_gemm_transb_and_convtranspose_axes():
    rng = np.random.default_rng(0)
    inits = [numpy_helper.from_array(rng.standard_normal(s).astype(np.float32), n)
             for n, s in [("b", (6, 4)), ("bt", (5, 6)), ("ct", (5, 2, 3, 3))]]
    nodes = [helper.make_node("Gemm", ["x", "b"], ["g"], name="g"),
             helper.make_node("Gemm", ["g", "bt"], ["h"], name="gt", transB=1),
             helper.make_node("Reshape", ["h", "s"], ["r"]),
             helper.make_node("ConvTranspose", ["r", "ct"], ["y"], name="ct")]
    inits.append(numpy_helper.from_array(np.array([-1, 5, 1, 1], np.int64), "s"))
    g = helper.make_graph(nodes, "t", [helper.make_tensor_value_info("x", TensorProto.FLOAT, [2, 4])],
                          [helper.make_tensor_value_info("y", TensorProto.FLOAT, None)], inits)
    layers, _ = find_prunable(helper.make_model(g))
    assert {layer.name: layer.out_axis for layer in layers} == {"g": 1, "gt": 0, "ct": 1}


def test_constant_node_weights_become_initializers():
    m = small_model()
    w = m.graph.initializer[0]
    del m.graph.initializer[:]
    m.graph.node.insert(0, helper.make_node("Constant", [], ["w"], value=w))
    prepared = prepare(m, simplify=False)
    assert [layer.weight for layer in find_prunable(prepared.export_base)[0]] == ["w"]
    assert any("Constant" in c for c in prepared.changes)


def test_old_opset_trains_at_13_and_keeps_its_own():
    prepared = prepare(small_model(opset=9, ir=4), simplify=False)
    assert default_opset(prepared.export_base) == 9
    assert default_opset(prepared.train_base) == 13


def test_simplify_keeps_batchnorm_and_weight_names():
    """BatchNorm is not folded: its per-layer scale would skew the global ranking (ORT fuses it at load)."""
    rng = np.random.default_rng(0)
    inits = [numpy_helper.from_array(a.astype(np.float32), n) for n, a in [
        ("conv.w", rng.standard_normal((4, 3, 3, 3))), ("bn.s", rng.random(4) + .5), ("bn.b", rng.random(4)),
        ("bn.m", rng.random(4)), ("bn.v", rng.random(4) + .5)]]
    nodes = [helper.make_node("Conv", ["x", "conv.w"], ["c"], name="conv"),
             helper.make_node("BatchNormalization", ["c", "bn.s", "bn.b", "bn.m", "bn.v"], ["y"], name="bn")]
    g = helper.make_graph(nodes, "t", [helper.make_tensor_value_info("x", TensorProto.FLOAT, ["N", 3, 8, 8])],
                          [helper.make_tensor_value_info("y", TensorProto.FLOAT, ["N", 4, 6, 6])], inits)
    m = helper.make_model(g, opset_imports=[helper.make_opsetid("", 17)])
    prepared = prepare(m)
    assert [n.op_type for n in prepared.export_base.graph.node] == ["Conv", "BatchNormalization"]
    assert find_prunable(prepared.export_base)[0][0].weight == "conv.w"
    assert not any("BatchNormalization" in c for c in prepared.changes)


def test_ir3_initializers_listed_as_inputs():
    m = small_model(opset=8, ir=3)
    m.graph.input.append(helper.make_tensor_value_info("w", TensorProto.FLOAT, [4, 3]))
    prepared = prepare(m, simplify=False)
    assert [i.name for i in prepared.export_base.graph.input] == ["x"]


PYTORCH_MODULES = ["test_Conv2d", "test_Conv1d", "test_Conv3d", "test_Conv2d_groups", "test_Conv2d_depthwise",
                   "test_ConvTranspose2d", "test_Linear", "test_Conv2d_dilated", "test_Conv2d_strided"]


@pytest.mark.parametrize("name", PYTORCH_MODULES)
def test_pytorch_converted_modules_have_prunable_weights(name):
    path = ONNX_DATA / "pytorch-converted" / name / "model.onnx"
    if not path.exists():
        pytest.skip(f"{name} is not shipped in this onnx wheel")
    prepared = prepare(read_model(path))
    layers, _ = find_prunable(prepared.export_base)
    assert layers and all(layer.size > 1 for layer in layers)


LIGHT = sorted((ONNX_DATA / "light").glob("*.onnx"))


@pytest.mark.parametrize("path", LIGHT, ids=[p.stem for p in LIGHT])
def test_model_zoo_topologies_have_no_stored_weights(path):
    """Their weights are made at run time by ConstantOfShape: a clean 'nothing to prune'."""
    model = read_model(path)
    layers, skipped = find_prunable(model)
    assert not layers
    assert skipped and all("run time" in s.reason for s in skipped)
