"""No silent collapse: a pruned model that collapsed is a loud warning, and `--max-drop` turns it,
or any larger loss, into exit 3 with nothing written."""
import numpy as np

import onnxprune
from onnxprune.metrics import collapse, drop_points
from tests.conftest import ROOT, run_cli

RNG = np.random.default_rng(0)


def test_collapse_is_told_from_a_loss():
    dense = RNG.standard_normal((200, 10)).astype(np.float32)
    assert collapse(dense, dense + 0.01 * RNG.standard_normal(dense.shape).astype(np.float32)) is None
    one_class = np.zeros_like(dense)
    one_class[:, 3] = 1
    assert "puts 100% of samples in one class" in collapse(dense, one_class)
    scores = RNG.random((50, 20)).astype(np.float32)  # a detector's scores: many cross 0.5
    assert "scores above 0.5" in collapse(scores, scores * 0.1)
    assert collapse(scores, scores * 0.9) is None
    regression = RNG.standard_normal((30, 4, 2)).astype(np.float32) * 5  # not [N, C]: no classes
    assert "no closer to the dense one than zeros" in collapse(regression, -regression)


def test_drop_is_counted_in_points_of_the_headline_metric():
    assert np.isclose(drop_points({"name": "accuracy", "dense": 0.96, "pruned": 0.90}), 6.0)
    assert np.isclose(drop_points({"name": "relative error", "dense": 0.0, "pruned": 0.031}), 3.1)


def test_max_drop_fails_with_exit_3_and_writes_nothing(tmp_path):
    out = tmp_path / "o.onnx"

    def run(rate, max_drop):
        return run_cli(ROOT / "models" / "digits_mlp.onnx", "--rate", rate, "--method", "magnitude", "--data",
                       ROOT / "models" / "digits_train.npz", "--eval-data", ROOT / "models" / "digits_test.npz",
                       "--no-latency", "-o", out, "--max-drop", max_drop)
    code, _, stderr = run(0.99, 100)  # collapsed: fails whatever the budget
    assert code == 3 and not out.exists(), stderr
    assert "looks collapsed" in stderr and "nothing was written" in stderr
    code, _, stderr = run(0.9, 0)
    assert code == 3 and not out.exists() and "points of accuracy (--max-drop 0)" in stderr, stderr
    code, _, stderr = run(0.5, 5)
    assert code == 0 and out.exists(), stderr


def test_a_collapsed_model_is_a_loud_warning_without_max_drop():
    r = onnxprune.prune(ROOT / "models" / "digits_mlp.onnx", 0.99, method="magnitude", latency=False,
                        data=ROOT / "models" / "digits_train.npz", eval_data=ROOT / "models" / "digits_test.npz")
    assert "in one class" in r.report["metric"]["collapse"]
    assert any("looks collapsed on logits" in w for w in r.report["warnings"])


def test_a_fixed_transform_stored_as_a_conv_weight_is_flagged():
    """silero-vad's STFT: a Conv1d whose filters are windowed cosines and sines. It is flagged
    (with the --exclude that keeps it); a learned-looking layer beside it is not."""
    from onnx import TensorProto, helper, numpy_helper

    n, bins = 64, 33
    t = np.arange(n)
    window = np.hanning(n)
    basis = np.concatenate([np.cos(2 * np.pi * np.outer(np.arange(bins), t) / n),
                            np.sin(2 * np.pi * np.outer(np.arange(bins), t) / n)]) * window
    stft = numpy_helper.from_array(basis[:, None, :].astype(np.float32), "stft_w")
    head = numpy_helper.from_array((0.1 * RNG.standard_normal((4, 2 * bins, 3))).astype(np.float32), "head_w")
    nodes = [helper.make_node("Conv", ["x", "stft_w"], ["spec"], name="stft", strides=[16]),
             helper.make_node("Conv", ["spec", "head_w"], ["y"], name="head")]
    g = helper.make_graph(nodes, "vad", [helper.make_tensor_value_info("x", TensorProto.FLOAT, ["N", 1, 256])],
                          [helper.make_tensor_value_info("y", TensorProto.FLOAT, ["N", 4, 11])], [stft, head])
    model = helper.make_model(g, opset_imports=[helper.make_opsetid("", 17)], ir_version=8)
    r = onnxprune.prune(model, 0.5, method="magnitude", synth_samples=64, latency=False, simplify=False)
    assert list(r.report["fixed_transforms"]) == ["stft"]
    assert any("layer stft looks like a fixed transform" in w and "--exclude stft" in w for w in r.report["warnings"])
    r = onnxprune.prune(model, 0.5, method="magnitude", synth_samples=64, latency=False, simplify=False,
                        exclude=("stft",))
    assert r.report["fixed_transforms"] == {}


def test_every_trained_output_is_scored_in_its_own_terms():
    from onnxprune.metrics import output_fidelity

    scores = RNG.random((40, 6)).astype(np.float32)
    f = output_fidelity(scores, scores * 0.4)
    assert f["scores_over_threshold"]["pruned"] == 0 < f["scores_over_threshold"]["dense"] and "top1_agreement" in f
    r = onnxprune.prune(ROOT / "models" / "digits_mlp.onnx", 0.5, method="magnitude", latency=False,
                        data=ROOT / "models" / "digits_train.npz")
    assert set(r.report["metric"]["outputs"]) == {"logits"}
    assert 0.5 < r.report["metric"]["outputs"]["logits"]["top1_agreement"] <= 1
