"""Reconstruction of the kept weights (onnxprune/reconstruct.py) and the held-out keeper of
fine-tuning (train.BestOnHeldOut)."""
import numpy as np
import onnx
import pytest
from conftest import MODELS
from onnx import TensorProto, helper, numpy_helper

import onnxprune
from onnxprune.data import load_npz, run_model
from onnxprune.layers import find_prunable
from onnxprune.plumbing import session
from onnxprune.reconstruct import _Layer, reconstruct
from onnxprune.train import held_out_rows


@pytest.mark.parametrize("attrs", [dict(strides=[2, 1], pads=[1, 0, 1, 2], dilations=[1, 2], group=2),
                                   dict(auto_pad="SAME_UPPER", strides=[2, 2], group=1),
                                   dict(group=4)])
def test_a_conv_layers_columns_times_its_weight_rows_is_the_convolution(attrs):
    rng = np.random.default_rng(0)
    x = rng.standard_normal((2, 4, 9, 11)).astype(np.float32)
    w = rng.standard_normal((8, 4 // attrs["group"], 3, 3)).astype(np.float32)
    node = helper.make_node("Conv", ["x", "w"], ["y"], kernel_shape=[3, 3], **attrs)
    g = helper.make_graph([node], "c", [helper.make_tensor_value_info("x", TensorProto.FLOAT, None)],
                          [helper.make_tensor_value_info("y", TensorProto.FLOAT, None)], [numpy_helper.from_array(w, "w")])
    want = session(helper.make_model(g, opset_imports=[helper.make_opsetid("", 17)])).run(None, {"x": x})[0]
    layer = _Layer(node, w.shape, has_bias=False)
    view = layer.views(x)
    cols = layer.columns(view, np.arange(int(np.prod(view.shape[:3]))))  # every row: [groups, N·positions, cols + 1]
    assert np.all(cols[..., -1] == 1)
    rows = layer.rows_of(w)
    got = np.concatenate([cols[g, :, :-1] @ rows[g].T for g in range(attrs["group"])], axis=1)  # [N·positions, O]
    n, o, h, wd = want.shape
    assert np.allclose(got.reshape(n, h, wd, o).transpose(0, 3, 1, 2), want, atol=1e-4)


def _gemm_model(w, b):
    nodes = [helper.make_node("Gemm", ["x", "w", "b"], ["y"], name="fc", transB=1)]
    g = helper.make_graph(nodes, "g", [helper.make_tensor_value_info("x", TensorProto.FLOAT, ["N", w.shape[1]])],
                          [helper.make_tensor_value_info("y", TensorProto.FLOAT, ["N", w.shape[0]])],
                          [numpy_helper.from_array(w, "w"), numpy_helper.from_array(b, "b")])
    return helper.make_model(g, opset_imports=[helper.make_opsetid("", 17)])


def test_a_cut_input_that_another_input_repeats_moves_its_weight_there_and_the_output_is_kept():
    """x₂ = x₁ on every sample and x₄ = 1: cutting w₂ and w₄ loses nothing once w₁ takes w₂'s
    share and the bias takes w₄'s; magnitude alone would lose both. Cut weights stay zero."""
    rng = np.random.default_rng(1)
    x = rng.standard_normal((400, 4)).astype(np.float32)
    x[:, 1] = x[:, 0]
    x[:, 3] = 1.0
    w = rng.standard_normal((3, 4)).astype(np.float32)
    b = rng.standard_normal(3).astype(np.float32)
    model = _gemm_model(w, b)
    layers = find_prunable(model)[0]
    mask = np.ones_like(w)
    mask[:, [1, 3]] = 0
    changed, scores = reconstruct(model, layers, {"w": w}, {"w": w * mask}, {"w": mask}, {"x": x}, ["x"],
                                  np.random.default_rng(0))
    assert scores == []
    assert set(changed) == {"w", "b"}
    assert np.all(changed["w"][:, [1, 3]] == 0)
    dense_out = x @ w.T + b
    refit_out = x @ changed["w"].T + changed["b"]
    cut_out = x @ (w * mask).T + b
    assert np.abs(refit_out - dense_out).max() < 1e-2 * np.abs(dense_out).max()
    assert np.abs(refit_out - dense_out).max() < 0.02 * np.abs(cut_out - dense_out).max()


def test_one_shot_lenet_at_50x_keeps_far_more_with_the_refit():
    common = dict(data=MODELS / "mnist_train.npz", eval_data=MODELS / "mnist_test.npz", method="magnitude",
                  latency=False, seed=0)
    plain = onnxprune.prune(MODELS / "lenet5.onnx", 0.98, reconstruct=False, **common)
    refit = onnxprune.prune(MODELS / "lenet5.onnx", 0.98, **common)
    test = load_npz(MODELS / "mnist_test.npz")
    plain_acc, refit_acc = plain.report["metric"]["pruned"], refit.report["metric"]["pruned"]
    assert plain_acc < 0.85  # magnitude alone at 50x (measured 72.6%)
    assert refit_acc > 0.95  # refitted (measured 97.9%)
    assert refit_acc == pytest.approx(
        float(np.mean(run_model(session(refit.model), test, ["input"])[0].argmax(1) == test["labels"])))
    for name, mask in plain.masks.items():
        assert np.array_equal(mask, refit.masks[name])  # the same cut, only the kept values move


def test_held_out_rows_are_seeded_and_leave_a_batch():
    a = held_out_rows(4000, 64, 0)
    assert len(a) == 400 and np.array_equal(a, held_out_rows(4000, 64, 0))
    assert not np.array_equal(a, held_out_rows(4000, 64, 1))
    assert held_out_rows(4000, 64, 0).max() < 4000
    assert held_out_rows(300, 64, 0) is None  # 30 rows: too few to judge by
    assert held_out_rows(100_000, 64, 0).size == 512


def test_fine_tuning_that_ruins_the_start_ends_at_the_start(digits):
    """At a learning rate that wrecks the refitted start, the keeper ends at the start (epoch 0),
    says so, and the written model scores what the start scored."""
    common = dict(data=MODELS / "digits_train.npz", eval_data=MODELS / "digits_test.npz", latency=False, seed=0,
                  method="magnitude")
    start = onnxprune.prune(digits, 0.8, **common)  # one-shot, refitted
    ruined = onnxprune.prune(digits, 0.8, **common, finetune_baseline=True, schedule=onnxprune.Schedule(
        epochs=1, finetune_epochs=1, finetune_lr=0.5, lr=0.5))
    said = [c for c in ruined.report["preparation"] if c.startswith("fine-tuning kept")]
    assert said and "its start" in said[0], ruined.report["preparation"]
    assert ruined.report["metric"]["pruned"] == pytest.approx(start.report["metric"]["pruned"], abs=0.02)
