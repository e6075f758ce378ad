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
    code, _, stderr = run(0.995, 100)  # collapsed: fails whatever the budget
    assert code == 3 and not out.exists(), stderr
    assert "looks collapsed" in stderr and "nothing was written" in stderr
    code, _, stderr = run(0.9, 0)
    assert code == 3 and not out.exists() and "points of accuracy (--max-drop 0)" in stderr, stderr
    code, _, stderr = run(0.5, 5)
    assert code == 0 and out.exists(), stderr


def test_a_collapsed_model_is_a_loud_warning_without_max_drop():
    r = onnxprune.prune(ROOT / "models" / "digits_mlp.onnx", 0.995, method="magnitude", latency=False,
                        data=ROOT / "models" / "digits_train.npz", eval_data=ROOT / "models" / "digits_test.npz")
    assert "in one class" in r.report["metric"]["collapse"]
    assert any("looks collapsed on logits" in w for w in r.report["warnings"])


def test_a_collapse_is_judged_on_training_samples_when_too_few_are_held_out():
    train = dict(np.load(ROOT / "models" / "digits_train.npz"))
    few = {k: v[:60] for k, v in train.items()}  # 10% held out: 6 samples, too few to tell chance
    r = onnxprune.prune(ROOT / "models" / "digits_mlp.onnx", 0.99, method="magnitude", latency=False, data=few,
                        reconstruct=False)  # the refit keeps it out of one class
    assert r.report["metric"]["samples"] == 6 and "in one class" in r.report["metric"]["collapse"]


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


def _yolo_output(n=4, classes=3, anchors=200, seed=0):
    """[N, 4 + C, A] as YOLOv8 writes it: box coordinates in pixels, then sigmoid class scores."""
    rng = np.random.default_rng(seed)
    boxes = rng.uniform(0, 640, (n, 4, anchors))
    scores = 1 / (1 + np.exp(-rng.normal(-4, 3, (n, classes, anchors))))
    return np.concatenate([boxes, scores], 1).astype(np.float32)


def test_a_detector_that_lost_its_detections_is_a_collapse_though_its_error_is_small():
    from onnxprune.metrics import detections, output_fidelity

    dense = _yolo_output()
    axis, unit = detections(dense)
    assert axis == 1 and unit.tolist() == [False] * 4 + [True] * 3
    lost = dense.copy()
    lost[:, 4:] *= 0.1  # the boxes stay put, every score falls under the threshold
    f = output_fidelity(dense, lost)
    assert f["relative_error"] < 0.05 and f["coordinates_relative_error"] == 0
    assert f["scores_over_threshold"]["dense"] >= 10 and f["scores_over_threshold"]["pruned"] == 0
    assert "detections lost" in collapse(dense, lost)
    assert collapse(dense, dense * np.float32(1.001)) is None


def test_distillation_weighs_a_detectors_scores_as_much_as_its_coordinates():
    from onnxprune.losses import relative_scale

    dense = _yolo_output()
    scale = relative_scale(dense)
    assert scale.shape == (7, 1)
    err = np.zeros_like(dense)
    err[:, :4] = 0.1 * dense[:, :4]  # 10% off on the coordinates alone
    coords_only = float(np.mean(scale * err ** 2))
    err = np.zeros_like(dense)
    err[:, 4:] = 0.1 * dense[:, 4:]  # or on the scores alone
    assert np.isclose(float(np.mean(scale * err ** 2)), coords_only, rtol=1e-3) and np.isclose(coords_only, 0.005)
    plain = RNG.standard_normal((8, 5)).astype(np.float32) * 300  # any other output: relative to its mean square
    assert np.isclose(float(np.mean(relative_scale(plain) * plain ** 2)), 1, rtol=1e-4)


def test_a_sentence_embedding_is_not_scored_as_classes():
    """[N, C] made by mean pooling (ReduceSum / count) is an embedding; a Gemm's [N, C] is logits."""
    from onnx import TensorProto, helper, numpy_helper

    from onnxprune.metrics import class_outputs

    nodes = [helper.make_node("ReduceSum", ["h", "axis1"], ["summed"], keepdims=0),
             helper.make_node("Div", ["summed", "count"], ["pooled"]),
             helper.make_node("Identity", ["pooled"], ["embedding"]),
             helper.make_node("Gemm", ["pooled", "w"], ["logits"])]
    g = helper.make_graph(nodes, "g", [helper.make_tensor_value_info("h", TensorProto.FLOAT, ["N", 4, 8])],
                          [helper.make_tensor_value_info(k, TensorProto.FLOAT, None) for k in ("embedding", "logits")],
                          [numpy_helper.from_array(np.array([1], np.int64), "axis1"),
                           numpy_helper.from_array(np.array(4, np.float32), "count"),
                           numpy_helper.from_array(np.ones((8, 3), np.float32), "w")])
    outs = {"embedding": np.ones((5, 8), np.float32), "logits": np.ones((5, 3), np.float32)}
    assert class_outputs(helper.make_model(g), outs) == {"logits"}


def test_agreement_with_a_dense_model_that_picks_one_class_is_not_the_headline():
    """Inputs unlike the model's real ones can make it pick one class for every sample (the PP-OCR
    orientation classifier on rendered words: class 0 for all 26). Top-1 agreement then scored a
    constant model 100%, and a search chose 200x for "no loss"; the headline becomes relative error,
    with the reason."""
    from onnxprune.metrics import fidelity, metric

    rng = np.random.default_rng(0)
    dense = np.column_stack([rng.uniform(5, 6, 26), rng.uniform(0, 1, 26)]).astype(np.float32)
    constant = np.tile(np.array([[1.0, 0.0]], np.float32), (26, 1))
    assert "top1_agreement" not in fidelity(constant, dense)
    m = metric("y", None, dense, constant, "held-out", True)
    assert m["name"] == "relative error" and m["pruned"] > 0.5 and "picks class 0 for all 26" in m["note"]
    mixed = dense.copy()
    mixed[0] = [0, 9]  # one sample of another class: agreement means something again
    assert metric("y", None, mixed, constant, "held-out", True)["name"] == "top-1 agreement"
    assert metric("y", np.zeros(26, np.int64), dense, constant, "held-out", True)["name"] == "accuracy"


def _diverging(monkeypatch, steps_that_diverge):
    """Trainer.step reports a NaN loss for its first `steps_that_diverge` calls in this process,
    as a model whose training blows up would; returns the learning rates each Trainer was made with."""
    from onnxprune import stepgraph

    real_step, real_init, made = stepgraph.Trainer.step, stepgraph.Trainer.__init__, []
    calls = {"n": 0}

    def step(self, feed):
        got = real_step(self, feed)
        calls["n"] += 1
        return (float("nan"), float("nan"), got[2]) if calls["n"] <= steps_that_diverge else got

    def init(self, graph, trainable, frozen, workdir, lr, *a, **k):
        made.append(lr)
        real_init(self, graph, trainable, frozen, workdir, lr, *a, **k)
    monkeypatch.setattr(stepgraph.Trainer, "step", step)
    monkeypatch.setattr(stepgraph.Trainer, "__init__", init)
    return made


def test_a_diverged_phase_is_retried_once_at_a_smaller_learning_rate_and_said(monkeypatch, tmp_path):
    made = _diverging(monkeypatch, 1)
    out = tmp_path / "o.onnx"
    r = onnxprune.prune(ROOT / "models" / "digits_mlp.onnx", 0.5, data=ROOT / "models" / "digits_train.npz",
                        latency=False, out=out, epochs=1, finetune_epochs=1, lr=1e-3, finetune_lr=5e-4)
    assert np.allclose(made, [1e-3, 1e-4])  # the retry starts a fresh trainer at 10× smaller
    assert any("diverged" in w and "10× smaller learning rate" in w for w in r.report["warnings"])
    assert np.isclose(r.report["schedule"]["lr"], 1e-4) and np.isclose(r.report["schedule"]["finetune_lr"], 5e-5)
    assert out.exists() and r.report["masked_sparsity"] > 0.45


def test_training_that_diverges_twice_writes_nothing_and_says_so_in_one_line(monkeypatch, tmp_path):
    _diverging(monkeypatch, 10 ** 9)
    out = tmp_path / "o.onnx"
    code, stdout, stderr = run_cli(ROOT / "models" / "digits_mlp.onnx", "--rate", "0.5", "--data",
                                   ROOT / "models" / "digits_train.npz", "--epochs", "1", "--finetune-epochs", "1",
                                   "--no-latency", "-o", out)
    assert code == 2 and not out.exists(), stderr
    lines = [x for x in stderr.splitlines() if ": started, " not in x]  # progress lines aside
    said, refused = lines  # the retry, then the refusal, a line each
    assert "retrying" in said and "diverged" in refused and "again" in refused and "nothing was written" in refused


def test_a_model_with_non_finite_outputs_is_never_written(monkeypatch, tmp_path):
    """Whatever training returned, a model whose weights are non-finite (or, NaN·0 being NaN, not
    zero where masked) is refused before writing."""
    from onnxprune import train

    real = train.train

    def poisoned(*a, **k):
        t = real(*a, **k)
        w = next(iter(t.masks))
        t.weights[w] = np.full_like(t.weights[w], np.nan)
        return t
    monkeypatch.setattr(train, "train", poisoned)
    out = tmp_path / "o.onnx"
    code, _, stderr = run_cli(ROOT / "models" / "digits_mlp.onnx", "--rate", "0.5", "--method", "magnitude",
                              "--data", ROOT / "models" / "digits_train.npz", "--no-latency", "-o", out)
    assert code == 2 and not out.exists() and "non-finite" in stderr and "nothing was written" in stderr
