"""The default output is standard ONNX: every weight a plain initializer, which the tools that come
after onnxprune read as they read the input (ORT's quantizers, onnxsim, onnx.checker)."""
import numpy as np
import onnx
import pytest
from onnx import numpy_helper

from conftest import MODELS, run_cli
from onnxprune.layers import find_prunable


@pytest.fixture(scope="module")
def pruned(tmp_path_factory):
    """LeNet-5 at 0.9, one-shot (no training: the form of the output is what is tested)."""
    out = tmp_path_factory.mktemp("downstream") / "lenet5.pruned.onnx"
    code, stdout, stderr = run_cli(MODELS / "lenet5.onnx", "--rate", "0.9", "--method", "magnitude", "--data",
                                   MODELS / "mnist_train.npz", "--no-latency", "-o", out)
    assert code == 0, stderr
    return out, stdout


def _mnist(n: int = 16) -> np.ndarray:
    return np.load(MODELS / "mnist_train.npz")["input"][:n].astype(np.float32)


def _weights_by_slot(model: onnx.ModelProto, reference: onnx.ModelProto) -> dict[str, np.ndarray]:
    """Each prunable layer's weight in `model`, found by node and input slot (tools rename weights)."""
    layers, _ = find_prunable(reference)
    ref = {n.name: n for n in reference.graph.node}
    nodes = {n.name: n for n in model.graph.node}
    inits = {t.name: numpy_helper.to_array(t) for t in model.graph.initializer}
    out = {}
    for layer in layers:
        slot = list(ref[layer.node].input).index(layer.weight)
        out[layer.name] = inits[nodes[layer.node].input[slot]]
    return out


def test_default_output_stores_every_weight_as_a_plain_initializer(pruned):
    path, stdout = pruned
    model = onnx.load(str(path))
    onnx.checker.check_model(str(path), full_check=True)
    assert not model.graph.sparse_initializer
    assert not any(n.name.startswith("onnxprune_store") for n in model.graph.node)
    weights = _weights_by_slot(model, onnx.load(str(MODELS / "lenet5.onnx")))
    total = sum(w.size for w in weights.values())
    assert 0.89 <= 1 - sum(np.count_nonzero(w) for w in weights.values()) / total <= 0.91
    assert "--storage compact would need about" in stdout  # what the other form would save, in one line


def test_ort_quantizers_run_on_the_default_output(pruned, tmp_path):
    from onnxruntime.quantization import CalibrationDataReader, QuantType, quantize_dynamic, quantize_static

    from onnxprune.plumbing import session

    path, _ = pruned
    # uint8 weights: ORT's CPU ConvInteger has no int8-weight kernel
    quantize_dynamic(str(path), str(tmp_path / "dynamic.onnx"), weight_type=QuantType.QUInt8)

    class Reader(CalibrationDataReader):
        def __init__(self):
            self.batches = iter([{"input": x[None]} for x in _mnist(8)])

        def get_next(self):
            return next(self.batches, None)

    quantize_static(str(path), str(tmp_path / "static.onnx"), Reader(), weight_type=QuantType.QInt8,
                    per_channel=True)
    x = _mnist(4)
    want = session(str(path)).run(None, {"input": x})[0].argmax(1)
    for name in ("dynamic", "static"):
        q = onnx.load(str(tmp_path / f"{name}.onnx"))
        assert any(n.op_type in ("DynamicQuantizeLinear", "QuantizeLinear", "MatMulInteger", "ConvInteger")
                   for n in q.graph.node), name  # the weights were seen and quantized
        got = session(str(tmp_path / f"{name}.onnx")).run(None, {"input": x})[0].argmax(1)
        assert (got == want).mean() >= 0.75, name


def test_onnxsim_keeps_the_sparsity_and_does_not_grow_the_file(pruned, tmp_path):
    import onnxsim

    path, _ = pruned
    model = onnx.load(str(path))
    simplified, ok = onnxsim.simplify(model)
    assert ok
    onnx.save(simplified, str(tmp_path / "sim.onnx"))
    assert (tmp_path / "sim.onnx").stat().st_size <= 1.01 * path.stat().st_size
    reference = onnx.load(str(MODELS / "lenet5.onnx"))
    before, after = _weights_by_slot(model, reference), _weights_by_slot(simplified, reference)
    for name in before:
        assert np.count_nonzero(after[name]) == np.count_nonzero(before[name]), name
