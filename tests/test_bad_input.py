"""Every bad input: one line naming the problem, non-zero exit, no traceback, no file written."""
import numpy as np
import onnx
import pytest

from conftest import MODELS, run_cli, small_model


def _refused(tmp_path, *args, expect):
    before = set(tmp_path.rglob("*"))
    code, stdout, stderr = run_cli(*args)
    assert code != 0
    lines = [line for line in stderr.splitlines() if line.strip() and not line.startswith("warning:")]
    assert len(lines) == 1, stderr
    assert lines[0].startswith("onnxprune: error:") and expect in lines[0], lines[0]
    assert "Traceback" not in stdout + stderr
    assert set(tmp_path.rglob("*")) == before, "a refused run must leave no file behind"
    return lines[0]


def _copy(src, tmp_path, name="m.onnx"):
    dst = tmp_path / name
    dst.write_bytes(src.read_bytes())
    return dst


def test_missing_file(tmp_path):
    _refused(tmp_path, tmp_path / "nope.onnx", expect="not found")


def test_a_mistyped_model_path_beside_an_earlier_output_is_one_line(tmp_path):
    """The default output `<stem>.pruned.onnx` of an earlier run exists; the model path does not."""
    (tmp_path / "nope.pruned.onnx").write_bytes(b"earlier output")
    _refused(tmp_path, tmp_path / "nope.onnx", expect="not found")


def test_a_report_path_that_is_a_folder_is_refused_before_training(tmp_path):
    model = _copy(MODELS / "digits_mlp.onnx", tmp_path)
    (tmp_path / "reports").mkdir()
    _refused(tmp_path, model, "--report", tmp_path / "reports", expect="is a folder; give a file name")


def test_folder_instead_of_file(tmp_path):
    (tmp_path / "d").mkdir()
    _refused(tmp_path, tmp_path / "d", expect="not a file")


@pytest.mark.parametrize("content", [b"", b"this is not a protobuf \x00\xff" * 8, b"\x08\x07\x12"])
def test_not_onnx(tmp_path, content):
    bad = tmp_path / "bad.onnx"
    bad.write_bytes(content)
    _refused(tmp_path, bad, expect="not")


def test_truncated_model(tmp_path, lenet):
    bad = tmp_path / "cut.onnx"
    bad.write_bytes(lenet.read_bytes()[:50_000])
    _refused(tmp_path, bad, expect="not")


@pytest.mark.parametrize("rate", ["0", "1", "1.5", "-0.2"])
def test_rate_out_of_range(tmp_path, digits, rate):
    _refused(tmp_path, _copy(digits, tmp_path), "--rate", rate, expect="rate must be between 0 and 1")


def test_no_prunable_weights(tmp_path):
    m = small_model(op_after="Relu")
    m.graph.node[0].CopyFrom(onnx.helper.make_node("Add", ["x", "x"], ["m"]))
    del m.graph.initializer[:]
    m.graph.input[0].type.tensor_type.shape.dim[1].dim_value = 3
    path = tmp_path / "relu.onnx"
    onnx.save(m, str(path))
    _refused(tmp_path, path, expect="no prunable weights")


def _npz(tmp_path, **arrays):
    path = tmp_path / "d.npz"
    np.savez(path, **arrays)
    return path


@pytest.mark.parametrize("arrays, expect", [
    ({"wrong_name": np.zeros((4, 64), np.float32)}, "lacks array(s) input"),
    ({"input": np.zeros((4, 64), np.float32), "extra": np.zeros(4)}, "extra"),
    ({"input": np.zeros((4, 32), np.float32)}, "shape 4x32"),
    ({"input": np.zeros((4, 64), np.float64)}, "float64"),
    ({"input": np.zeros((4, 64), np.float32), "labels": np.array([0, 1, 2, 10])}, "outside the output's 10 classes"),
    ({"input": np.zeros((4, 64), np.float32), "labels": np.array([0, 1, 2])}, "disagree on the sample count"),
    ({"input": np.zeros((4, 64), np.float32), "labels": np.zeros(4, np.float32)}, "integer class ids"),
])
def test_bad_data(tmp_path, digits, arrays, expect):
    model = _copy(digits, tmp_path)
    _refused(tmp_path, model, "--data", _npz(tmp_path, **arrays), expect=expect)


def test_pickled_npz_is_refused(tmp_path, digits):
    model = _copy(digits, tmp_path)
    _refused(tmp_path, model, "--data", _npz(tmp_path, input=np.array([{"a": 1}], dtype=object)), expect="pickled")


def test_corrupt_npz(tmp_path, digits):
    model = _copy(digits, tmp_path)
    bad = tmp_path / "bad.npz"
    bad.write_bytes(b"PK\x03\x04 broken zip")
    _refused(tmp_path, model, "--data", bad, expect="not a readable .npz")


def test_op_without_gradient(tmp_path):
    path = tmp_path / "round.onnx"
    onnx.save(small_model(op_after="Round"), str(path))
    line = _refused(tmp_path, path, "--rate", "0.5", "--synth-samples", "32", "--no-simplify",
                    expect="op Round (node my_round) lies between the weights and the loss")
    assert "my_round" in line


def test_unwritable_output_folder(tmp_path, digits):
    model = _copy(digits, tmp_path)
    _refused(tmp_path, model, "-o", tmp_path / "missing" / "out.onnx", expect="does not exist")
    blocker = tmp_path / "file"
    blocker.write_text("x")
    code, _, stderr = run_cli(model, "-o", blocker / "out.onnx")
    assert code != 0 and "does not exist" in stderr


def test_output_equal_to_input(tmp_path, digits):
    model = _copy(digits, tmp_path)
    before = model.read_bytes()
    _refused(tmp_path, model, "-o", model, expect="is the input model")
    _refused(tmp_path, model, "-o", tmp_path / "." / "m.onnx", expect="is the input model")
    assert model.read_bytes() == before


def test_unknown_output_name(tmp_path, digits):
    _refused(tmp_path, _copy(digits, tmp_path), "--data", MODELS / "digits_train.npz", "--output", "nope",
             expect="not a model output")


def test_integer_inputs_need_data(tmp_path):
    m = small_model()
    m.graph.node.insert(0, onnx.helper.make_node("Cast", ["ids"], ["x"], to=onnx.TensorProto.FLOAT))
    m.graph.input[0].name = "ids"
    m.graph.input[0].type.tensor_type.elem_type = onnx.TensorProto.INT64
    path = tmp_path / "ids.onnx"
    onnx.save(m, str(path))
    _refused(tmp_path, path, "--no-simplify", expect="pass real samples with --data")


def test_dynamic_dims_need_input_shape(tmp_path):
    m = small_model()
    m.graph.input[0].type.tensor_type.shape.dim[1].dim_param = "F"
    path = tmp_path / "dyn.onnx"
    onnx.save(m, str(path))
    _refused(tmp_path, path, "--no-simplify", expect="--input-shape F=L (or x=1xL)")


def test_op_without_cpu_training_kernel_trains_through_its_stand_in(tmp_path):
    """ORT 1.19 registers a gradient for ConvTranspose but has no CPU kernel to run it: it used to
    be refused; now it trains through its stand-in and the written model keeps ConvTranspose."""
    from conftest import ONNX_DATA

    src = ONNX_DATA / "pytorch-converted" / "test_ConvTranspose2d" / "model.onnx"
    if not src.exists():
        pytest.skip("not shipped in this onnx wheel")
    out = tmp_path / "o.onnx"
    code, _, stderr = run_cli(_copy(src, tmp_path), "--synth-samples", "16", "--epochs", "1", "--finetune-epochs", "1",
                              "--no-latency", "-q", "-o", out)
    assert code == 0, stderr
    assert "ConvTranspose" in {n.op_type for n in onnx.load(str(out)).graph.node}


def test_interrupted_write_leaves_nothing(tmp_path, monkeypatch, digits):
    """Ctrl-C while the model is being written: no partial file, under any name."""
    import onnxprune.export as export

    def partial_then_interrupt(model, path, **kw):
        with open(path, "wb") as f:
            f.write(b"half a model")
        raise KeyboardInterrupt

    monkeypatch.setattr(export.onnx, "save_model", partial_then_interrupt)
    model = _copy(digits, tmp_path)
    code, _, stderr = run_cli(model, "--rate", "0.5", "--method", "magnitude", "--data", MODELS / "digits_train.npz")
    assert code == 130 and "nothing was written" in stderr
    assert sorted(p.name for p in tmp_path.iterdir()) == ["m.onnx"]


def test_version_and_verbose(tmp_path):
    import onnxprune

    code, stdout, _ = run_cli("--version")
    assert code == 0 and stdout.strip() == f"onnxprune {onnxprune.__version__}"
    code, _, stderr = run_cli(MODELS / "digits_mlp.onnx", "--method", "magnitude", "--rate", "0.5", "--data",
                              MODELS / "digits_train.npz", "--no-latency", "-o", tmp_path / "o.onnx", "-v")
    assert code == 0 and "info: " in stderr  # stage lines and the info log reach stderr with -v


def test_a_wrong_image_size_in_data_names_the_shapes(tmp_path):
    """Checked against the declared shape before the model runs (ORT's own message was cut short)."""
    bad = tmp_path / "bad.npz"
    np.savez(bad, input=np.zeros((20, 1, 32, 32), np.float32), labels=np.zeros(20, np.int64))
    _refused(tmp_path, MODELS / "lenet5.onnx", "--data", bad, "-o", tmp_path / "o.onnx",
             expect="array input has shape 20x1x32x32, the model input wants Nx1x28x28")
