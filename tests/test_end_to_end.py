"""The whole pipeline on the shipped examples, through the CLI and the Python API."""
import json

import numpy as np
import onnx
import onnxruntime as ort
import pytest

from conftest import MODELS, QUICK, run_cli, weights_of
import onnxprune
from onnxprune.data import load_npz, run_model
from onnxprune.metrics import accuracy
from onnxprune.layers import find_prunable


def _interface(model):
    return ([(i.name, i.type.tensor_type.elem_type, [d.dim_value or d.dim_param for d in i.type.tensor_type.shape.dim])
             for i in model.graph.input],
            [(o.name, o.type.tensor_type.elem_type) for o in model.graph.output])


def _test_accuracy(path, data):
    sess = ort.InferenceSession(str(path), providers=["CPUExecutionProvider"])
    return accuracy(run_model(sess, data, ["input"])[0], data["labels"])


@pytest.mark.slow
def test_lenet5_at_0_9_keeps_accuracy(lenet, tmp_path):
    """The README's main job: LeNet-5 at 0.9 with labels, within 1 point of dense on the test set."""
    out, report = tmp_path / "lenet.pruned.onnx", tmp_path / "r.json"
    code, stdout, stderr = run_cli(lenet, "--rate", "0.9", "--data", MODELS / "mnist_train.npz",
                                   "--eval-data", MODELS / "mnist_test.npz", "-o", out, "--report", report,
                                   "--epochs", "6", "--finetune-epochs", "6")
    assert code == 0, stderr
    test = load_npz(MODELS / "mnist_test.npz")
    dense_acc, pruned_acc = _test_accuracy(lenet, test), _test_accuracy(out, test)
    assert pruned_acc >= dense_acc - 0.01, (dense_acc, pruned_acc)
    model = onnx.load(str(out))
    assert _interface(model) == _interface(onnx.load(str(lenet)))
    layers, _ = find_prunable(onnx.load(str(lenet)))
    w = weights_of(model)
    kept = sum(int(np.count_nonzero(w[layer.weight])) for layer in layers)
    assert kept == round(0.1 * 430_500)
    r = json.loads(report.read_text())
    assert r["totals"]["kept"] == kept and r["metric"]["pruned"] == pytest.approx(pruned_acc)
    assert "conv1" in stdout and "compression" in stdout


def test_layer_scope_is_exact_per_layer_and_output_runs(digits, tmp_path):
    out = tmp_path / "d.onnx"
    code, _, stderr = run_cli(digits, "--rate", "0.8", "--scope", "layer", "--data", MODELS / "digits_train.npz",
                              "-o", out, "-q", "--epochs", "2", "--finetune-epochs", "2")
    assert code == 0, stderr
    model = onnx.load(str(out))
    w = weights_of(model)
    for layer in find_prunable(onnx.load(str(digits)))[0]:
        assert np.count_nonzero(w[layer.weight]) == round(0.2 * layer.size)
    onnx.checker.check_model(model)
    assert _interface(model) == _interface(onnx.load(str(digits)))
    assert model.opset_import == onnx.load(str(digits)).opset_import


def test_distillation_without_labels(digits, tmp_path):
    data = load_npz(MODELS / "digits_train.npz")
    result = onnxprune.prune(digits, 0.7, data={"input": data["input"]}, schedule=QUICK)
    assert result.report["loss"].startswith("KL divergence")
    assert result.report["metric"]["name"] == "top-1 agreement"
    assert result.report["metric"]["pruned"] > 0.8
    assert result.report["totals"]["sparsity"] == pytest.approx(0.7, abs=1e-4)


def test_data_free_run_warns_and_writes_valid_model(digits, tmp_path):
    out = tmp_path / "free.onnx"
    code, stdout, stderr = run_cli(digits, "--rate", "0.5", "-o", out, "--epochs", "1", "--finetune-epochs", "1",
                                   "--synth-samples", "256")
    assert code == 0, stderr
    assert "synthesized" in stderr and "only assured with real data" in stderr
    onnx.checker.check_model(str(out))
    ort.InferenceSession(str(out), providers=["CPUExecutionProvider"]).run(None, {"input": np.zeros((2, 64), np.float32)})


def test_same_seed_same_model_and_default_output_path(digits, tmp_path):
    src = tmp_path / "m.onnx"
    src.write_bytes(digits.read_bytes())
    args = (src, "--rate", "0.6", "--data", MODELS / "digits_train.npz", "-q", "--epochs", "1",
            "--finetune-epochs", "1", "--seed", "7")
    assert run_cli(*args)[0] == 0
    first = (tmp_path / "m.pruned.onnx").read_bytes()
    assert run_cli(*args)[0] == 0
    assert (tmp_path / "m.pruned.onnx").read_bytes() == first
    assert src.read_bytes() == digits.read_bytes()  # the input is never touched


def test_magnitude_baselines(digits):
    data = MODELS / "digits_train.npz"
    one_shot = onnxprune.prune(digits, 0.9, data=data, method="magnitude")
    assert one_shot.report["phases"] == [] and one_shot.report["totals"]["sparsity"] == pytest.approx(0.9, abs=1e-4)
    tuned = onnxprune.prune(digits, 0.9, data=data, method="magnitude", finetune_baseline=True, schedule=QUICK)
    assert [p["name"] for p in tuned.report["phases"]] == ["fine-tune"]
    assert tuned.report["phases"][0]["epochs"] == QUICK.epochs + QUICK.finetune_epochs  # the same budget
    # the same masks: fine-tuning never revives a pruned weight
    assert all(np.array_equal(one_shot.masks[k], tuned.masks[k]) for k in one_shot.masks)
    assert tuned.report["metric"]["pruned"] >= one_shot.report["metric"]["pruned"]


def test_softmax_output_trains_on_logits(digits):
    """A model that ends in Softmax gets cross-entropy on the logits under it."""
    model = onnx.load(str(digits))
    model.graph.node[-1].output[0] = "scores"
    model.graph.node.append(onnx.helper.make_node("Softmax", ["scores"], ["logits"], axis=1))
    result = onnxprune.prune(model, 0.5, data=MODELS / "digits_train.npz", schedule=QUICK, simplify=False)
    assert result.report["metric"]["pruned"] > 0.9


def test_model_with_fixed_batch_of_one(tmp_path):
    """Exporters often fix the batch at 1: inference and training must use batches of 1."""
    from conftest import small_model

    m = small_model()
    for vi in (m.graph.input[0], m.graph.output[0]):
        vi.type.tensor_type.shape.dim[0].dim_value = 1
    result = onnxprune.prune(m, 0.5, synth_samples=40, schedule=QUICK, simplify=False)
    assert result.report["schedule"]["batch_size"] == 1
    assert any("fix the batch size at 1" in w for w in result.report["warnings"])
    assert result.report["totals"]["kept"] == 6


def test_workdir_keeps_artifacts_and_report_lists_skips(digits, tmp_path):
    wd = tmp_path / "work"
    code, stdout, stderr = run_cli(digits, "--rate", "0.5", "--data", MODELS / "digits_train.npz", "-o",
                                   tmp_path / "o.onnx", "--workdir", wd, "--exclude", "dense2/*",
                                   "--report", tmp_path / "r.json", "--epochs", "1", "--finetune-epochs", "1")
    assert code == 0, stderr
    assert {"step_graph.onnx", "resume.ckpt", "resume.json"} <= {p.name for p in wd.iterdir()}
    r = json.loads((tmp_path / "r.json").read_text())
    assert [s["name"] for s in r["skipped"]] == ["dense2/MatMul"] and len(r["layers"]) == 2
    assert "excluded by --exclude" in stdout


def test_labels_train_with_distillation_from_the_dense_model():
    """With labels, cross-entropy and KL to the dense model's softmax (weighted by --distill)."""
    from onnxprune.losses import CrossEntropy, KLDivergence, loss_terms

    logits = np.random.default_rng(0).standard_normal((6, 4)).astype(np.float32)
    model = onnx.load(str(MODELS / "digits_mlp.onnx"))
    labels = np.arange(6) % 4
    terms, targets = loss_terms(model, ["logits"], labels, {"logits": logits}, {"logits"}, distill=0.5)
    assert [type(t) for t in terms] == [CrossEntropy, KLDivergence] and terms[1].weight == 0.5
    assert np.allclose(targets[terms[1].target].sum(1), 1)
    assert len(loss_terms(model, ["logits"], labels, {"logits": logits}, {"logits"}, distill=0)[0]) == 1
    r = onnxprune.prune(MODELS / "digits_mlp.onnx", 0.9, data=MODELS / "digits_train.npz", latency=False,
                        distill=0.5, schedule=None, epochs=1, finetune_epochs=1)
    assert r.report["loss"] == ("cross-entropy on labels (logits); KL divergence to the dense model's softmax "
                                "(logits) × 0.5")


def test_the_reweighted_phase_is_skipped_where_cutting_alone_is_harmless():
    """At a rate the converged model shrugs off (one-shot cuts keep >= 99.5% agreement on training
    samples), the budget fine-tunes from the dense weights; at a hard rate, or with
    always_reweight, the reweighted phase runs."""
    def phases(rate, **kw):
        r = onnxprune.prune(MODELS / "digits_mlp.onnx", rate, data=MODELS / "digits_train.npz", latency=False,
                            schedule=onnxprune.Schedule(epochs=2, finetune_epochs=1, batch_size=64, **kw))
        return [p["name"] for p in r.report["phases"]], r.report["preparation"]

    names, notes = phases(0.3)
    assert names == ["fine-tune"] and any("reweighted phase was skipped" in n for n in notes)
    assert phases(0.3, always_reweight=True)[0] == ["reweighted", "fine-tune"]
    assert phases(0.97)[0] == ["reweighted", "fine-tune"]


def test_the_written_model_keeps_the_users_metadata_and_adds_one_entry(tmp_path):
    """Not the simplifier's own onnxsim.* entries."""
    model = onnx.load(str(MODELS / "digits_mlp.onnx"))
    onnx.helper.set_model_props(model, {"author": "someone", "license": "MIT"})
    out = tmp_path / "o.onnx"
    onnxprune.prune(model, 0.5, method="magnitude", data=MODELS / "digits_train.npz", out=out, latency=False)
    props = {p.key: p.value for p in onnx.load(str(out)).metadata_props}
    assert props == {"author": "someone", "license": "MIT", "onnxprune": onnxprune.__version__}


def test_training_leaves_the_current_folder_alone(tmp_path, monkeypatch):
    """ORT's onnxblock writes a scratch copy of the graph as ./temp.onnx: trials side by side in one
    folder raced on it (a search with --jobs 2 failed that way). Training now builds it in its own
    workdir, so a folder that already has a `temp.onnx` (here a directory, which no save can
    overwrite) neither breaks a run nor is touched."""
    (tmp_path / "temp.onnx").mkdir()
    monkeypatch.chdir(tmp_path)
    r = onnxprune.prune(MODELS / "digits_mlp.onnx", 0.9, data=MODELS / "digits_train.npz", latency=False,
                        epochs=1, finetune_epochs=1)
    assert r.report["totals"]["kept"] > 0
    assert sorted(p.name for p in tmp_path.iterdir()) == ["temp.onnx"] and not any((tmp_path / "temp.onnx").iterdir())


def test_a_run_trained_into_something_worse_than_cutting_alone_says_so():
    """Adam moves each weight by about the learning rate whatever its scale; where training leaves
    the model worse on the evaluation samples than the dense weights cut to the same rate (here
    forced with a learning rate of 1), a warning says so and what to try. (300 samples: too few to
    hold 32 out, so no keeper ends fine-tuning at its best epoch.)"""
    few = {k: v[:300] for k, v in np.load(MODELS / "digits_train.npz").items()}
    kw = dict(data=few, latency=False, epochs=1, finetune_epochs=1)
    r = onnxprune.prune(MODELS / "digits_mlp.onnx", 0.3, lr=1.0, finetune_lr=1.0, reconstruct=False, **kw)
    assert any("worse than cutting the dense weights alone" in w and "--lr" in w for w in r.report["warnings"])
    sane = onnxprune.prune(MODELS / "digits_mlp.onnx", 0.3, **kw)  # the default schedule helps, or ties
    assert not any("worse than cutting" in w for w in sane.report["warnings"])
