"""Structured pruning through the CLI and the API: written files have the structure, the
shrunk graphs run and are smaller, and the report carries params, MACs and latency."""
import dataclasses
import json

import numpy as np
import onnx
import onnxruntime as ort
import pytest

from conftest import MODELS, QUICK, run_cli, weights_of
import onnxprune
from onnxprune.data import load_npz

TRAIN, TEST = MODELS / "mnist_train.npz", MODELS / "mnist_test.npz"


def _small_data(n=600):
    d = load_npz(TRAIN)
    return {k: v[:n] for k, v in d.items()}


def test_filter_shrinks_the_resnet(tmp_path):
    out, report = tmp_path / "r.onnx", tmp_path / "r.json"
    code, stdout, stderr = run_cli(MODELS / "resnet_mnist.onnx", "--structure", "filter", "--rate", "0.5",
                                   "--data", TRAIN, "--eval-data", TEST, "--epochs", "1", "--finetune-epochs", "1",
                                   "-o", out, "--report", report, "--seed", "3")
    assert code == 0, stderr
    rep = json.loads(report.read_text())
    assert not rep["warnings"], rep["warnings"]  # the shrunk graph matched the masked one
    assert rep["rewrites"] and "channel" in rep["rewrites"][0]
    # to within half a chunk: 8 of block2's channels with their readers' slices are 6,912 of 76,704 weights
    assert abs(rep["masked_sparsity"] - 0.5) <= 0.5 * 6912 / 76704 + 1e-6
    costs = rep["costs"]
    assert costs["params"]["compressed"] < 0.6 * costs["params"]["dense"]
    assert costs["macs"]["compressed"] < 0.7 * costs["macs"]["dense"]
    assert set(costs["latency_ms"]) == {"batch_1", "batch_32"}
    model = onnx.load(str(out))
    w = weights_of(model)
    convs = [k for k in w if k.endswith("conv1.weight") or k.endswith("conv2.weight")]
    assert all(w[k].shape[0] % 8 == 0 for k in convs)  # --channel-multiple 8
    assert sum(w[k].shape[0] for k in convs) < sum((32, 32, 64, 64))  # channels removed
    for block in ("block1", "block2"):  # a reader follows its producer
        assert w[f"{block}.conv2.weight"].shape[1] == w[f"{block}.conv1.weight"].shape[0]
    assert "MACs per sample" in stdout and "ORT CPU latency" in stdout and "left alone" in stdout
    sess = ort.InferenceSession(str(out), providers=["CPUExecutionProvider"])
    assert sess.run(None, {"input": np.zeros((3, 1, 28, 28), np.float32)})[0].shape == (3, 10)


def test_filter_shrinks_concat_and_depthwise():
    result = onnxprune.prune(MODELS / "concat_dw_mnist.onnx", 0.4, structure="filter", data=_small_data(),
                             schedule=QUICK, latency=False)
    # nothing went wrong in the rewrite (the quick budget's accuracy drop is its own, loud, warning)
    assert not [w for w in result.report["warnings"] if "check it on the task" not in w]
    model = result.model
    w = weights_of(model)
    dw = next(n for n in model.graph.node if n.op_type == "Conv" and n.input[1] == "branch_b.dw.weight")
    group = next(a.i for a in dw.attribute if a.name == "group")
    assert group == w["branch_b.dw.weight"].shape[0] == w["stem.weight"].shape[0]
    assert w["mix.weight"].shape[1] == w["branch_a.weight"].shape[0] + w["branch_b.pw.weight"].shape[0]


def test_no_shrink_keeps_the_graph_and_zeroes_channels():
    result = onnxprune.prune(MODELS / "lenet5.onnx", 0.5, structure="channel", data=_small_data(), schedule=QUICK,
                             shrink=False, latency=False)
    w = weights_of(result.model)
    assert w["conv2.weight"].shape == (50, 20, 5, 5)
    cols = np.abs(w["fc1.weight"]).sum(0).reshape(50, 16)  # fc1's columns, per conv2 channel
    gone = (cols == 0).all(1)
    assert gone.any() and ((cols == 0).any(1) == gone).all()  # a channel's 16 columns go together
    assert (w["conv2.weight"][gone] == 0).all()  # and so does the filter that made it


def test_nm_2_4_on_lenet_and_matmul_to_gemm(tmp_path):
    out = tmp_path / "nm.onnx"
    code, stdout, stderr = run_cli(MODELS / "digits_mlp.onnx", "--structure", "nm", "--data",
                                   MODELS / "digits_train.npz", "--epochs", "2", "--finetune-epochs", "2",
                                   "-o", out, "--no-latency")
    assert code == 0, stderr
    model = onnx.load(str(out))
    gemms = [n for n in model.graph.node if n.op_type == "Gemm"]
    assert len(gemms) == 3 and not any(n.op_type == "MatMul" for n in model.graph.node)
    w = weights_of(model)
    for node in gemms:
        k = w[node.input[1]]  # [N, K]: 2:4 along K, contiguous
        assert (np.count_nonzero(k.reshape(k.shape[0], -1, 4), axis=2) <= 2).all()
    result = onnxprune.prune(MODELS / "lenet5.onnx", structure="nm", nm="1:4", data=_small_data(), schedule=QUICK,
                             latency=False)
    conv2 = weights_of(result.model)["conv2.weight"]  # [50, 20, 5, 5]: groups of 4 input channels
    assert (np.count_nonzero(conv2.reshape(50, 5, 4, 5, 5), axis=2) <= 1).all()
    assert result.report["rate"] == 0.75


@pytest.mark.parametrize("structure", ["column", "block", "pattern"])
def test_other_structures_run_end_to_end(structure):
    result = onnxprune.prune(MODELS / "lenet5.onnx", 0.8, structure=structure, data=_small_data(), schedule=QUICK,
                             latency=False)
    assert abs(result.report["masked_sparsity"] - 0.8) < 1e-3
    assert result.report["metric"]["pruned"] > 0.5


def test_structure_errors_are_one_line():
    for args, msg in [(["--structure", "nm", "--rate", "0.9"], "prunes exactly 0.5"),
                      (["--structure", "block", "--block", "4"], "--block '4' is not RxC"),
                      (["--structure", "pattern", "--rate", "0.01"], "removes at least"),
                      (["--structure", "filter", "--channel-multiple", "0"], "channel multiple")]:
        code, _, stderr = run_cli(MODELS / "lenet5.onnx", *args, "--data", TRAIN, "--epochs", "0",
                                  "--finetune-epochs", "0", "--no-latency", "-o", "/tmp/onnxprune_never.onnx")
        assert code == 2 and msg in stderr and stderr.count("\n") == 1, stderr


def test_rate_of_macs_removes_that_share_of_macs():
    result = onnxprune.prune(MODELS / "resnet_mnist.onnx", 0.5, structure="filter", rate_of="macs", method="magnitude",
                             data=_small_data(200), latency=False)
    macs = result.report["costs"]["macs"]
    removed = 1 - macs["compressed"] / macs["dense"]
    assert abs(removed - 0.5) < 0.1, removed  # within half a chunk of 8 channels
    with pytest.raises(onnxprune.OnnxPruneError, match="needs --structure filter"):
        onnxprune.prune(MODELS / "lenet5.onnx", 0.5, rate_of="macs", method="magnitude", data=_small_data(100))


def _lenet_with_view(path, flat_size):
    """LeNet-5 flattened as PyTorch exports `x.view(x.size(0), -1)` with a dynamic batch:
    Shape -> Gather -> Unsqueeze -> Concat(batch, [flat_size]) -> Reshape (the target is computed)."""
    from onnx import helper, numpy_helper

    m = onnx.load(str(MODELS / "lenet5.onnx"))
    g = m.graph
    k = next(i for i, n in enumerate(g.node) if n.op_type == "Reshape")
    reshape = g.node[k]
    view = [helper.make_node("Shape", [reshape.input[0]], ["v_shape"], name="view_shape"),
            helper.make_node("Gather", ["v_shape", "v_zero"], ["v_batch"], name="view_gather", axis=0),
            helper.make_node("Unsqueeze", ["v_batch", "v_axes"], ["v_batch1"], name="view_unsqueeze"),
            helper.make_node("Concat", ["v_batch1", "v_rest"], ["v_target"], name="view_concat", axis=0)]
    reshape.input[1] = "v_target"
    nodes = list(g.node)
    del g.node[:]
    g.node.extend(nodes[:k] + view + nodes[k:])
    g.initializer.extend([numpy_helper.from_array(np.array(0, np.int64), "v_zero"),
                          numpy_helper.from_array(np.array([0], np.int64), "v_axes"),
                          numpy_helper.from_array(np.array([flat_size], np.int64), "v_rest")])
    kept = [t for t in g.initializer if t.name != "flat_shape"]
    del g.initializer[:]
    g.initializer.extend(kept)
    onnx.checker.check_model(m)
    onnx.save(m, str(path))
    return path


@pytest.mark.parametrize("flat_size", [-1, 800], ids=["view-minus-one", "view-800"])
def test_filter_pruning_shrinks_a_pytorch_view_flatten(tmp_path, flat_size):
    """The most common flatten in PyTorch CNNs: the computed Reshape target stays valid after
    shrinking, the model keeps its accuracy, and it runs at any batch size."""
    src = _lenet_with_view(tmp_path / "lenet_view.onnx", flat_size)
    out = tmp_path / "pruned.onnx"
    # the reweighted phase reaches conv2's filters (cutting the dense weights alone would take fc1's rows only)
    sched = dataclasses.replace(QUICK, always_reweight=True)
    r = onnxprune.prune(src, 0.5, structure="filter", data=TRAIN, eval_data=TEST, out=out, schedule=sched,
                        latency=False)
    assert not r.report["warnings"], r.report["warnings"]
    assert r.report["rewrites"] and "channel" in r.report["rewrites"][0]
    w = weights_of(onnx.load(str(out)))
    assert w["fc1.weight"].shape[1] < 800 and w["fc1.weight"].shape[1] % 16 == 0  # conv2 lost channels
    assert w["conv2.weight"].shape[0] * 16 == w["fc1.weight"].shape[1]
    m = r.report["metric"]
    assert m["pruned"] >= m["dense"] - 0.03, m
    test = load_npz(TEST)
    sess = ort.InferenceSession(str(out), providers=["CPUExecutionProvider"])
    whole = sess.run(None, {"input": test["input"][:64]})[0]
    for batch in (1, 7, 64):
        got = sess.run(None, {"input": test["input"][:batch]})[0]
        assert np.allclose(got, whole[:batch], atol=1e-5)
