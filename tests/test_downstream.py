"""The default output is standard ONNX: every weight a plain initializer, which the tools that come
after onnxprune read as they read the input (ORT's quantizers, onnxsim, onnx.checker)."""
import re

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


def test_help_comes_in_sections():
    code, stdout, _ = run_cli("--help")
    heads = [line for line in stdout.splitlines() if line and not line.startswith(" ") and line.endswith(":")]
    assert heads[:7] == ["Model and output:", "Data:", "What to prune:", "Schedule:", "Compression:",
                         "Search (the tool chooses the rate):", "Run:"] and "Other:" not in heads
    assert stdout.index("--storage") > stdout.index("Compression:") > stdout.index("--lam")


def test_progress_off_a_terminal_is_periodic_lines(tmp_path):
    """CliRunner's stderr is no terminal: each phase reports every tenth, one line each."""
    code, _, stderr = run_cli(MODELS / "digits_mlp.onnx", "--rate", "0.8", "--epochs", "2", "--finetune-epochs", "2",
                              "--data", MODELS / "digits_train.npz", "--always-reweight", "--no-latency",
                              "-o", tmp_path / "d.onnx")
    assert code == 0, stderr
    lines = [x for x in stderr.splitlines() if x.startswith(("reweighted: step", "fine-tune: step"))]
    assert 16 <= len(lines) <= 22 and all("loss" in x and x.endswith(" s") for x in lines)
    assert any("(100%)" in x for x in lines if x.startswith("fine-tune"))
    # and a line as each phase starts, before its first tenth (a search's first trial takes minutes)
    every = stderr.splitlines()
    started = [x for x in every if x.startswith(("reweighted: started", "fine-tune: started"))]
    assert len(started) == 2 and every.index(started[0]) < every.index(lines[0]), started


def test_report_names_its_software_options_and_input_with_snake_case_keys_and_rounded_floats(tmp_path):
    import hashlib
    import json

    import onnxruntime

    report = tmp_path / "r.json"
    code, _, stderr = run_cli(MODELS / "lenet5.onnx", "--rate", "0.9", "--method", "magnitude", "--data",
                              MODELS / "mnist_train.npz", "-o", tmp_path / "l.onnx", "--report", report)
    assert code == 0, stderr
    text = report.read_text()
    rep = json.loads(text)
    assert rep["tool"]["onnxruntime"] == onnxruntime.__version__ and rep["tool"]["onnxprune"]
    assert rep["input_sha256"] == hashlib.sha256((MODELS / "lenet5.onnx").read_bytes()).hexdigest()
    assert rep["options"]["rate"] == 0.9 and rep["options"]["storage"] == "dense" and rep["command"].startswith("onnxprune")

    def keys(o):
        if isinstance(o, dict):
            for k, v in o.items():
                yield k
                yield from keys(v)
        elif isinstance(o, list):
            for v in o:
                yield from keys(v)
    assert all(k == k.lower() and " " not in k and "-" not in k for k in keys(rep)), sorted(set(keys(rep)))

    def floats(o):
        if isinstance(o, float):
            yield o
        elif isinstance(o, (dict, list)):
            for v in (o.values() if isinstance(o, dict) else o):
                yield from floats(v)
    # no float noise (0.16400000000000003): at most 6 significant digits, whatever the value's scale
    # (a timing of 0.0835855 s has 7 decimals and is fine)
    noisy = [x for x in floats(rep) if float(f"{x:.6g}") != x]
    assert not noisy and "0.16400000000000003" not in text, noisy[:5]


def test_filter_summary_shows_written_shapes_and_one_parameter_count(tmp_path):
    code, stdout, stderr = run_cli(MODELS / "resnet_mnist.onnx", "--structure", "filter", "--rate", "0.5",
                                   "--method", "magnitude", "--data", MODELS / "mnist_train.npz", "--no-latency",
                                   "-o", tmp_path / "f.onnx")
    assert code == 0, stderr
    model = onnx.load(str(tmp_path / "f.onnx"))
    inits = {t.name: tuple(t.dims) for t in model.graph.initializer}
    row = next(x for x in stdout.splitlines() if x.startswith("block2.conv1 "))
    assert "x".join(map(str, inits["block2.conv1.weight"])) in row.split()  # the shape as written, not 64x32x3x3
    kept_all = int(re.search(r"([\d,]+) of [\d,]+ parameters non-zero", stdout).group(1).replace(",", ""))
    stored = int(re.search(r"parameters stored [\d,]+  ->  ([\d,]+)", stdout).group(1).replace(",", ""))
    assert kept_all <= stored and stored - kept_all < 0.01 * stored  # filter pruning leaves almost no zeros
