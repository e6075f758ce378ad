"""ONNX files as people have them, and hostile ones: model-zoo topologies whose weights are made
at run time, external data that points outside the model's folder, fuzzed protobuf and npz."""
import io
import os
import zipfile

import numpy as np
import onnx
import pytest
from click.testing import CliRunner
from onnx import TensorProto, helper, numpy_helper

from conftest import MODELS, ONNX_DATA, small_model
from onnxprune.cli import main

LIGHT = sorted((ONNX_DATA / "light").glob("*.onnx"))


def _save_graph(path, nodes, inits, x_width, outputs, opset=17, ir=8):
    """A float model x[N, x_width] -> `outputs` ({name: shape}) saved to `path`."""
    g = helper.make_graph(nodes, "g", [helper.make_tensor_value_info("x", TensorProto.FLOAT, ["N", x_width])],
                          [helper.make_tensor_value_info(k, TensorProto.FLOAT, v) for k, v in outputs.items()], inits)
    m = helper.make_model(g, opset_imports=[helper.make_opsetid("", opset)])
    m.ir_version = ir
    onnx.save(m, path)
    return path


def _cli(*args):
    r = CliRunner().invoke(main, [str(a) for a in args], catch_exceptions=True)
    return r.exit_code, r.stderr, r.exception


@pytest.mark.parametrize("path", LIGHT, ids=[p.stem for p in LIGHT])
def test_model_zoo_files_with_run_time_weights_get_a_clean_answer(path, tmp_path):
    assert len(LIGHT) >= 8
    code, stderr, _ = _cli(path, "-o", tmp_path / "x.onnx", "-q")
    assert code == 2 and "no prunable weights" in stderr and "ConstantOfShape" in stderr
    assert len(stderr.strip().splitlines()) == 1 and not (tmp_path / "x.onnx").exists()


def _external_model(folder, location):
    m = small_model()
    onnx.save_model(m, folder / "m.onnx", save_as_external_data=True, all_tensors_to_one_file=True,
                    location="w.bin", size_threshold=0)
    m = onnx.load(str(folder / "m.onnx"), load_external_data=False)
    for entry in m.graph.initializer[0].external_data:
        if entry.key == "location":
            entry.value = location
    onnx.save_model(m, folder / "m.onnx")
    return folder / "m.onnx"


@pytest.mark.parametrize("location", ["../secret.bin", "/etc/passwd", "sub/../../secret.bin", "link.bin"])
def test_external_data_outside_the_model_folder_is_refused(tmp_path, location):
    folder = tmp_path / "model"
    folder.mkdir()
    (tmp_path / "secret.bin").write_bytes(np.ones(12, np.float32).tobytes())
    os.symlink(tmp_path / "secret.bin", folder / "link.bin")
    path = _external_model(folder, location)
    code, stderr, _ = _cli(path, "-o", tmp_path / "x.onnx", "-q")
    assert code == 2 and "outside the model's folder" in stderr, stderr
    assert len(stderr.strip().splitlines()) == 1


def test_external_data_inside_the_folder_loads(tmp_path):
    path = _external_model(tmp_path, "w.bin")
    code, stderr, _ = _cli(path, "--rate", "0.5", "--method", "magnitude", "-o", tmp_path / "x.onnx", "-q",
                           "--no-latency")
    assert code == 0, stderr


def test_fuzzed_protobuf_gives_clean_errors(tmp_path):
    """Truncations and byte flips of a real model: each run ends in a result or a one-line error,
    never a traceback."""
    raw = (MODELS / "digits_mlp.onnx").read_bytes()
    rng = np.random.default_rng(0)
    variants = [raw[:n] for n in rng.integers(1, len(raw), 12)]
    for _ in range(18):
        b = bytearray(raw)
        for i in rng.integers(0, min(len(b), 600), 3):  # the graph's structure sits before the weights
            b[i] = int(rng.integers(0, 256))
        variants.append(bytes(b))
    for i, data in enumerate(variants):
        path = tmp_path / f"f{i}.onnx"
        path.write_bytes(data)
        code, stderr, exc = _cli(path, "--rate", "0.5", "--method", "magnitude", "-o", tmp_path / f"o{i}.onnx",
                                 "-q", "--no-latency", "--synth-samples", "64")
        assert code in (0, 2) and (exc is None or isinstance(exc, SystemExit)), (i, stderr, exc)
        if code == 2:
            assert len(stderr.strip().splitlines()) == 1 and stderr.startswith("onnxprune: error:"), (i, stderr)
            assert not (tmp_path / f"o{i}.onnx").exists()


def _npz_bytes(**arrays):
    buf = io.BytesIO()
    np.savez(buf, **arrays)
    return buf.getvalue()


def test_malformed_npz_gives_clean_errors(tmp_path):
    good = _npz_bytes(input=np.zeros((8, 64), np.float32), labels=np.zeros(8, np.int64))
    bad = {
        "truncated": good[: len(good) // 2],
        "random": np.random.default_rng(1).bytes(500),
        "empty": b"",
        "not_npy_inside": _zip({"input.npy": b"not an array"}),
        "pickled": _npz_bytes(input=np.array([{"a": 1}] * 8, dtype=object)),
        "wrong_shape": _npz_bytes(input=np.zeros((8, 3), np.float32)),
        "string_labels": _npz_bytes(input=np.zeros((8, 64), np.float32), labels=np.array(["a"] * 8)),
        "nan_inputs": _npz_bytes(input=np.full((8, 64), np.nan, np.float32)),
    }
    for name, data in bad.items():
        path = tmp_path / f"{name}.npz"
        path.write_bytes(data)
        code, stderr, exc = _cli(MODELS / "digits_mlp.onnx", "--data", path, "-o", tmp_path / "x.onnx", "-q",
                                 "--no-latency", "--epochs", "1", "--finetune-epochs", "1")
        assert code == 2 and (exc is None or isinstance(exc, SystemExit)), (name, stderr, exc)
        assert len(stderr.strip().splitlines()) == 1, (name, stderr)
        assert not (tmp_path / "x.onnx").exists()


def _zip(members: dict) -> bytes:
    buf = io.BytesIO()
    with zipfile.ZipFile(buf, "w") as z:
        for k, v in members.items():
            z.writestr(k, v)
    return buf.getvalue()


def test_weights_in_constant_nodes_and_shared_weights_are_handled(tmp_path):
    """A weight held in a Constant node is pruned; a weight two MatMuls share is pruned once
    (at its first reader) and the report says so for the other."""
    rng = np.random.default_rng(0)
    w1 = numpy_helper.from_array(rng.normal(size=(4, 8)).astype(np.float32), "w1")
    w2 = numpy_helper.from_array(rng.normal(size=(8, 8)).astype(np.float32), "w2")
    nodes = [helper.make_node("Constant", [], ["w1c"], value=w1),
             helper.make_node("MatMul", ["x", "w1c"], ["h"], name="fc1"),
             helper.make_node("MatMul", ["h", "w2"], ["h2"], name="fc2"),
             helper.make_node("MatMul", ["h2", "w2"], ["y"], name="fc3")]
    _save_graph(tmp_path / "m.onnx", nodes, [w2], 4, {"y": ["N", 8]})
    import onnxprune

    r = onnxprune.prune(tmp_path / "m.onnx", 0.5, method="magnitude", out=tmp_path / "o.onnx", latency=False,
                        storage="dense", synth_samples=64, scope="layer")
    assert [row["name"] for row in r.report["layers"]] == ["fc1", "fc2"]
    assert any("shared with layer fc2" in s["reason"] for s in r.report["skipped"])
    w = {t.name: numpy_helper.to_array(t) for t in onnx.load(str(tmp_path / "o.onnx")).graph.initializer}
    assert np.count_nonzero(w["w1c"]) == 16 and np.count_nonzero(w["w2"]) == 32


def test_layerwise_prunes_a_graph_end_to_end_training_refuses(tmp_path):
    """x -> MatMul -> Round -> y: Round's gradient is zero almost everywhere, so end-to-end training
    refuses (and points to --mode layerwise); layer-wise reconstruction needs no gradient through it."""
    path = tmp_path / "round.onnx"
    onnx.save(small_model(op_after="Round"), str(path))
    code, stderr, _ = _cli(path, "--rate", "0.5", "--synth-samples", "64", "-o", tmp_path / "e.onnx", "-q")
    assert code == 2 and "op Round (node my_round)" in stderr and "--mode layerwise" in stderr
    code, stderr, _ = _cli(path, "--rate", "0.5", "--synth-samples", "256", "-o", tmp_path / "l.onnx", "-q",
                           "--mode", "layerwise", "--epochs", "2", "--finetune-epochs", "2", "--no-latency",
                           "--storage", "dense")
    assert code == 0, stderr
    w = numpy_helper.to_array(onnx.load(str(tmp_path / "l.onnx")).graph.initializer[0])
    assert np.count_nonzero(w) == 6


@pytest.mark.slow
def test_layerwise_lenet_without_labels_keeps_accuracy(tmp_path):
    """LeNet-5 at 0.9 from images alone (no labels): within 2 points of dense on the test set."""
    import onnxprune
    import onnxruntime as ort
    from onnxprune.data import load_npz, run_model
    from onnxprune.metrics import accuracy

    train = load_npz(MODELS / "mnist_train.npz")
    np.savez(tmp_path / "images.npz", input=train["input"])
    out = tmp_path / "lw.onnx"
    r = onnxprune.prune(MODELS / "lenet5.onnx", 0.9, data=tmp_path / "images.npz", mode="layerwise", out=out,
                        latency=False)
    test = load_npz(MODELS / "mnist_test.npz")

    def acc(path):
        return accuracy(run_model(ort.InferenceSession(str(path), providers=["CPUExecutionProvider"]), test,
                                  ["input"])[0], test["labels"])
    dense, pruned = acc(MODELS / "lenet5.onnx"), acc(out)
    assert pruned >= dense - 0.02, (dense, pruned)
    assert r.report["totals"]["kept"] == 43_050 and r.report["mode"] == "layerwise"
    assert [p["name"] for p in r.report["phases"]][:2] == ["conv1 reweighted", "conv1 fine-tune"]


def test_interrupted_training_resumes_to_the_same_model(tmp_path, monkeypatch):
    """Ctrl-C in the middle of fine-tuning leaves no output; --resume from the work folder's
    checkpoint finishes with the model an uninterrupted run writes."""
    import onnxprune
    from onnxprune.errors import OnnxPruneError
    from onnxprune.training import Trainer

    sched = onnxprune.Schedule(epochs=2, finetune_epochs=2, reweight_every=7)
    kw = dict(data=MODELS / "digits_train.npz", schedule=sched, latency=False, storage="dense")
    whole = onnxprune.prune(MODELS / "digits_mlp.onnx", 0.8, out=tmp_path / "whole.onnx", **kw)

    steps = {"n": 0}
    real_step = Trainer.step

    def crashing_step(self, feed):
        steps["n"] += 1
        if steps["n"] == 60:  # past the reweighted phase (2 x 25 steps), inside fine-tuning
            raise KeyboardInterrupt
        return real_step(self, feed)
    monkeypatch.setattr(Trainer, "step", crashing_step)
    work, out = tmp_path / "work", tmp_path / "resumed.onnx"
    with pytest.raises(KeyboardInterrupt):
        onnxprune.prune(MODELS / "digits_mlp.onnx", 0.8, out=out, workdir=work, **kw)
    assert not out.exists() and (work / "resume.ckpt").exists() and (work / "resume_masks.npz").exists()
    monkeypatch.setattr(Trainer, "step", real_step)

    with pytest.raises(OnnxPruneError, match="another job"):
        onnxprune.prune(MODELS / "digits_mlp.onnx", 0.7, out=out, workdir=work, resume=True, **kw)
    resumed = onnxprune.prune(MODELS / "digits_mlp.onnx", 0.8, out=out, workdir=work, resume=True, **kw)
    assert [p["steps"] for p in resumed.report["phases"]] == [p["steps"] for p in whole.report["phases"]]
    a = {t.name: numpy_helper.to_array(t) for t in onnx.load(str(tmp_path / "whole.onnx")).graph.initializer}
    b = {t.name: numpy_helper.to_array(t) for t in onnx.load(str(out)).graph.initializer}
    for name in a:
        np.testing.assert_array_equal(a[name], b[name], err_msg=name)
    code, stderr, _ = _cli(MODELS / "digits_mlp.onnx", "--resume", "-o", tmp_path / "x.onnx", "-q")
    assert code == 2 and "--workdir" in stderr


def test_unfolded_batchnorm_trains_on_batch_statistics_and_is_recalibrated(tmp_path):
    """BatchNorm left in the graph (here by --no-simplify) trains on batch statistics, and the
    written model gets running statistics recomputed with the trained weights (ORT's own
    training-mode BN leaves them stale: 91.8% instead of 97.0% in this setting)."""
    import onnxprune

    r = onnxprune.prune(MODELS / "resnet_mnist.onnx", 0.5, method="magnitude", finetune_baseline=True,
                        data=MODELS / "mnist_train.npz", eval_data=MODELS / "mnist_test.npz", latency=False,
                        simplify=False, schedule=onnxprune.Schedule(epochs=1, finetune_epochs=1))
    assert sum(n.op_type == "BatchNormalization" for n in r.model.graph.node) >= 3
    assert r.report["metric"]["pruned"] >= r.report["metric"]["dense"] - 0.02
    assert any("batch statistics" in n for n in r.report["preparation"])
    dense = {t.name: numpy_helper.to_array(t) for t in onnx.load(str(MODELS / "resnet_mnist.onnx")).graph.initializer}
    written = {t.name: numpy_helper.to_array(t) for t in r.model.graph.initializer}
    assert not np.allclose(written["stem.bn.running_var"], dense["stem.bn.running_var"])


def test_subgraph_weights_are_left_alone_and_multiple_outputs_distilled(tmp_path):
    """A weight also read inside an If branch is left whole (and reported); the other layer is
    pruned; with two float outputs and no labels, both are distilled."""
    import onnxprune
    import onnxruntime as ort

    rng = np.random.default_rng(0)
    w1 = numpy_helper.from_array(rng.normal(size=(4, 8)).astype(np.float32), "w1")
    w2 = numpy_helper.from_array(rng.normal(size=(8, 6)).astype(np.float32), "w2")
    branch = lambda name, op: helper.make_graph(  # noqa: E731
        [helper.make_node(op, ["w1"], [f"{name}_out"])], name, [],
        [helper.make_tensor_value_info(f"{name}_out", TensorProto.FLOAT, [4, 8])])
    nodes = [helper.make_node("MatMul", ["x", "w1"], ["h"], name="fc1"),
             helper.make_node("MatMul", ["h", "w2"], ["y"], name="fc2"),
             helper.make_node("ReduceSum", ["x"], ["s"], keepdims=0, name="sum"),
             helper.make_node("ReduceSum", ["s"], ["t"], keepdims=0, name="sum2"),
             helper.make_node("Greater", ["t", "zero"], ["cond"], name="gt"),
             helper.make_node("If", ["cond"], ["w1_view"], name="branch",
                              then_branch=branch("then", "Identity"), else_branch=branch("else", "Neg")),
             helper.make_node("ReduceMean", ["w1_view"], ["w1_mean"], keepdims=0, name="mean")]
    _save_graph(tmp_path / "if.onnx", nodes, [w1, w2, numpy_helper.from_array(np.float32(0), "zero")], 4,
                {"y": ["N", 6], "h": ["N", 8], "w1_mean": []})
    r = onnxprune.prune(tmp_path / "if.onnx", 0.5, out=tmp_path / "o.onnx", latency=False, storage="dense",
                        synth_samples=256, simplify=False,
                        schedule=onnxprune.Schedule(epochs=1, finetune_epochs=1, reweight_every=5))
    assert [row["name"] for row in r.report["layers"]] == ["fc2"]
    assert any(s["name"] == "fc1" and "subgraph" in s["reason"] for s in r.report["skipped"])
    assert "(y)" in r.report["loss"] and "(h)" in r.report["loss"]
    out = onnx.load(str(tmp_path / "o.onnx"))
    w = {t.name: numpy_helper.to_array(t) for t in out.graph.initializer}
    assert np.count_nonzero(w["w1"]) == 32 and np.count_nonzero(w["w2"]) == 24
    ort.InferenceSession(str(tmp_path / "o.onnx"), providers=["CPUExecutionProvider"]).run(
        None, {"x": np.ones((2, 4), np.float32)})


def test_old_pytorch_linear_transpose_matmul_is_pruned(tmp_path):
    """PyTorch 1.x wrote Linear without bias as Transpose(W) -> MatMul; the folded weight is pruned."""
    import onnxprune

    w = numpy_helper.from_array(np.random.default_rng(0).normal(size=(3, 4)).astype(np.float32), "weight")
    nodes = [helper.make_node("Transpose", ["weight"], ["wt"], perm=[1, 0], name="t"),
             helper.make_node("MatMul", ["x", "wt"], ["y"], name="linear")]
    _save_graph(tmp_path / "old.onnx", nodes, [w], 4, {"y": ["N", 3]}, opset=11, ir=6)
    r = onnxprune.prune(tmp_path / "old.onnx", 0.5, method="magnitude", latency=False, synth_samples=64,
                        scope="layer")
    assert [row["kept"] for row in r.report["layers"]] == [6]


@pytest.mark.parametrize("opset", [7, 9, 11, 13, 15, 17, 19, 21])
def test_opsets_7_to_21_train_and_come_back_at_their_own(opset, tmp_path):
    import onnxprune

    m = small_model(op_after="Relu", opset=opset, ir=10 if opset >= 21 else (4 if opset < 9 else 8))
    onnx.save(m, tmp_path / "m.onnx")
    r = onnxprune.prune(tmp_path / "m.onnx", 0.5, out=tmp_path / "o.onnx", latency=False, synth_samples=128,
                        storage="dense", schedule=onnxprune.Schedule(epochs=1, finetune_epochs=1))
    written = onnx.load(str(tmp_path / "o.onnx"))
    # ORT 1.19 runs every one of these opsets, so each comes back at its own (training used ≥ 13)
    assert next(o.version for o in written.opset_import if o.domain in ("", "ai.onnx")) == opset
    assert not any("the output uses opset" in c for c in r.report["preparation"])
    assert any("trained at opset 13" in c for c in r.report["preparation"]) == (opset < 13)
    assert r.report["totals"]["kept"] == 6


def test_wrongly_declared_shapes_are_not_trusted(tmp_path):
    """Declared output [N, 5] and a fixed input width that lies about nothing else: ORT's real
    shapes are used, and the written model keeps the user's declarations."""
    import onnxprune

    m = small_model()
    m.graph.output[0].type.tensor_type.shape.dim[1].dim_value = 5  # really 3
    m.graph.input[0].type.tensor_type.shape.dim[0].dim_param = "batch_size"
    onnx.save(m, tmp_path / "m.onnx")
    r = onnxprune.prune(tmp_path / "m.onnx", 0.5, out=tmp_path / "o.onnx", latency=False, synth_samples=64,
                        method="magnitude", simplify=False, storage="dense")
    assert r.report["totals"]["kept"] == 6


def test_models_past_the_protobuf_limit_are_written_with_external_data(tmp_path, monkeypatch):
    """Past 2 GB (here: past a lowered limit) the weights go to `<name>.data` beside the model,
    written atomically, and the written pair loads and runs."""
    import onnxprune
    import onnxprune.export as export

    monkeypatch.setattr(export, "TWO_GB", 1000)
    out = tmp_path / "big.onnx"
    onnxprune.prune(MODELS / "digits_mlp.onnx", 0.5, out=out, method="magnitude", latency=False,
                    storage="dense", synth_samples=64)
    assert (tmp_path / "big.onnx.data").stat().st_size > 30_000 and out.stat().st_size < 30_000
    assert sorted(p.name for p in tmp_path.iterdir()) == ["big.onnx", "big.onnx.data"]
    code, stderr, _ = _cli(out, "--rate", "0.6", "--method", "magnitude", "-o", tmp_path / "again.onnx", "-q",
                           "--no-latency")
    assert code == 0, stderr


@pytest.mark.parametrize("op", ["MatMulInteger", "QLinearMatMul", "DequantizeLinear"])
def test_quantized_graphs_of_every_form_are_refused(op, tmp_path):
    """QDQ, QOperator and Integer-op graphs: one line naming what was found."""
    i8 = lambda name, shape: numpy_helper.from_array(np.ones(shape, np.int8), name)  # noqa: E731
    f = lambda name: numpy_helper.from_array(np.float32(1), name)  # noqa: E731
    z = lambda name: numpy_helper.from_array(np.int8(0), name)  # noqa: E731
    if op == "MatMulInteger":
        node, inits, xt = helper.make_node(op, ["x", "w"], ["y"]), [i8("w", (4, 3))], TensorProto.INT8
        yt = TensorProto.INT32
    elif op == "QLinearMatMul":
        node = helper.make_node(op, ["x", "xs", "xz", "w", "ws", "wz", "ys", "yz"], ["y"])
        inits, xt, yt = [f("xs"), z("xz"), i8("w", (4, 3)), f("ws"), z("wz"), f("ys"), z("yz")], TensorProto.INT8, \
            TensorProto.INT8
    else:
        node = helper.make_node("MatMul", ["x", "wf"], ["y"])
        inits, xt, yt = [i8("w", (4, 3)), f("ws"), z("wz")], TensorProto.FLOAT, TensorProto.FLOAT
    nodes = [node] if op != "DequantizeLinear" else [helper.make_node(op, ["w", "ws", "wz"], ["wf"]), node]
    g = helper.make_graph(nodes, "q", [helper.make_tensor_value_info("x", xt, ["N", 4])],
                          [helper.make_tensor_value_info("y", yt, ["N", 3])], inits)
    m = helper.make_model(g, opset_imports=[helper.make_opsetid("", 13)])
    m.ir_version = 8
    onnx.save(m, tmp_path / "q.onnx")
    code, stderr, _ = _cli(tmp_path / "q.onnx", "-o", tmp_path / "x.onnx", "-q")
    assert code == 2 and "already quantized" in stderr and op in stderr
    assert len(stderr.strip().splitlines()) == 1


def test_unused_initializers_do_not_get_in_the_way(tmp_path):
    import onnxprune

    m = small_model()
    m.graph.initializer.append(numpy_helper.from_array(np.ones((7, 7), np.float32), "leftover"))
    onnx.save(m, tmp_path / "m.onnx")
    r = onnxprune.prune(tmp_path / "m.onnx", 0.5, method="magnitude", latency=False, synth_samples=64,
                        simplify=False, storage="dense")
    assert [row["weight"] for row in r.report["layers"]] == ["w"]


def test_batchnorm_stays_frozen_where_recomputed_statistics_change_the_dense_model(tmp_path):
    """A model whose running statistics came from other data than the user's (PP-OCRv4 rec: the
    dense model with its statistics recomputed on rendered lines reads 4% of them the same): its
    BatchNorms train and are written with the statistics they came with, and the report says why."""
    import onnxprune

    model = onnx.load(str(MODELS / "resnet_mnist.onnx"))
    for t in model.graph.initializer:  # statistics of some other data set
        if t.name.endswith("running_var"):
            t.CopyFrom(numpy_helper.from_array(numpy_helper.to_array(t) * 2, t.name))
    onnx.save(model, str(tmp_path / "other_stats.onnx"))
    r = onnxprune.prune(tmp_path / "other_stats.onnx", 0.5, method="magnitude", finetune_baseline=True, data=MODELS / "mnist_train.npz",
                        eval_data=MODELS / "mnist_test.npz", latency=False, simplify=False,
                        schedule=onnxprune.Schedule(epochs=1, finetune_epochs=1))
    said = [n for n in r.report["preparation"] if "BatchNormalization" in n]
    assert said and "running statistics frozen: recomputed on the training samples" in said[0], said
    before = {t.name: numpy_helper.to_array(t) for t in model.graph.initializer}
    written = {t.name: numpy_helper.to_array(t) for t in r.model.graph.initializer}
    np.testing.assert_array_equal(written["stem.bn.running_var"], before["stem.bn.running_var"])
    assert r.report["metric"]["extra"]["top1_agreement"] >= 0.95


def test_rows_that_are_a_sequence_are_warned_about(tmp_path):
    """A model that mixes rows along its first axis (here each row's output adds the rows before
    it, as an LSTM over a sequence export's windows does) is warned about: shuffled training
    batches break the order its rows carry. A row-wise model is not."""
    import onnxprune

    rng = np.random.default_rng(0)
    w = numpy_helper.from_array(rng.standard_normal((4, 3)).astype(np.float32), "w")
    axis = numpy_helper.from_array(np.array(0, np.int64), "axis")
    warned = {}
    for name, tail in (("sequence", [helper.make_node("CumSum", ["h", "axis"], ["y"], name="over_rows")]),
                       ("rows", [helper.make_node("Relu", ["h"], ["y"], name="relu")])):
        path = _save_graph(tmp_path / f"{name}.onnx", [helper.make_node("MatMul", ["x", "w"], ["h"], name="fc"), *tail],
                           [w, axis], 4, {"y": ["N", 3]})
        r = onnxprune.prune(path, 0.5, method="magnitude", latency=False, synth_samples=64, simplify=False)
        warned[name] = any("not independent samples" in m for m in r.report["warnings"])
    assert warned == {"sequence": True, "rows": False}
