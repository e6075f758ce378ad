"""Where users already are: the installed onnxruntime and onnx, whatever their versions, and models
written by the current onnx."""
import subprocess
import sys

import numpy as np
import onnx
import onnxruntime
import pytest
from onnx import TensorProto, helper, numpy_helper

import onnxprune
from conftest import MODELS, ROOT, run_cli
from onnxprune.plumbing import runtime_limits


def _current_exporter_model(path):
    """A two-layer MLP as the installed onnx writes it today: its own IR version, and the newest
    opset the installed runtime runs."""
    rng = np.random.default_rng(0)
    inits = [numpy_helper.from_array(rng.standard_normal((8, 16)).astype(np.float32), "w1"),
             numpy_helper.from_array(rng.standard_normal((16, 4)).astype(np.float32), "w2")]
    nodes = [helper.make_node("MatMul", ["x", "w1"], ["h"], name="fc1"), helper.make_node("Relu", ["h"], ["r"]),
             helper.make_node("MatMul", ["r", "w2"], ["y"], name="fc2")]
    g = helper.make_graph(nodes, "mlp", [helper.make_tensor_value_info("x", TensorProto.FLOAT, ["N", 8])],
                          [helper.make_tensor_value_info("y", TensorProto.FLOAT, ["N", 4])], inits)
    model = helper.make_model(g, opset_imports=[helper.make_opsetid("", runtime_limits()[1])])
    assert model.ir_version == onnx.IR_VERSION
    onnx.save(model, str(path))
    return model


def test_a_model_from_the_current_onnx_trains_and_keeps_its_ir_and_opset(tmp_path):
    model = _current_exporter_model(tmp_path / "m.onnx")
    out = tmp_path / "o.onnx"
    x = np.random.default_rng(1).standard_normal((64, 8)).astype(np.float32)
    r = onnxprune.prune(tmp_path / "m.onnx", 0.5, data={"x": x}, out=out, latency=False,
                        schedule=onnxprune.Schedule(epochs=1, finetune_epochs=1, batch_size=16))
    written = onnx.load(str(out))
    assert written.ir_version == model.ir_version
    assert written.opset_import[0].version == model.opset_import[0].version
    assert r.report["phases"][0]["steps"] > 0 and r.report["totals"]["sparsity"] == pytest.approx(0.5, abs=0.01)


def test_a_model_newer_than_the_runtime_is_refused_naming_both(tmp_path, monkeypatch):
    from onnxprune import loading

    _current_exporter_model(tmp_path / "m.onnx")
    ir, newest = runtime_limits()
    monkeypatch.setattr(loading, "runtime_limits", lambda: (ir, newest - 1))
    code, _, stderr = run_cli(tmp_path / "m.onnx", "--rate", "0.5", "-o", tmp_path / "o.onnx")
    assert code == 2 and stderr.count("\n") == 1
    assert f"opset {newest}" in stderr and f"onnxruntime {onnxruntime.__version__}" in stderr
    assert f"up to {newest - 1}" in stderr and "pip install -U onnxruntime" in stderr
    assert not (tmp_path / "o.onnx").exists()


def test_installed_beside_the_users_runtime_it_keeps_it_and_prunes(tmp_path):
    """A user's venv that already has onnxruntime and onnx (this environment's versions, installed
    first); installing onnxprune there keeps them, adds no other runtime, and a prune runs."""
    venv = tmp_path / "venv"
    subprocess.run([sys.executable, "-m", "venv", str(venv)], check=True)
    py = str(venv / "bin" / "python")

    def pip(*args):
        done = subprocess.run([py, "-m", "pip", "install", "-q", "--disable-pip-version-check", *args],
                              capture_output=True, text=True)
        assert done.returncode == 0, done.stderr[-2000:]
    pip(f"onnxruntime=={onnxruntime.__version__}", f"onnx=={onnx.__version__}")
    pip(str(ROOT))
    installed = subprocess.run([py, "-m", "pip", "list", "--format=freeze"], capture_output=True, text=True,
                               check=True).stdout.lower().split()
    runtimes = [p for p in installed if p.startswith("onnxruntime")]
    assert runtimes == [f"onnxruntime=={onnxruntime.__version__}"], runtimes  # kept, and no second wheel
    assert f"onnx=={onnx.__version__}" in installed and any(p.startswith("onnxprune==") for p in installed)
    seen = subprocess.run([py, "-c", "import onnx, onnxruntime; print(onnxruntime.__version__, onnx.__version__)"],
                          capture_output=True, text=True, check=True).stdout.split()
    assert seen == [onnxruntime.__version__, onnx.__version__]
    out = tmp_path / "o.onnx"
    run = subprocess.run([str(venv / "bin" / "onnxprune"), str(MODELS / "digits_mlp.onnx"), "--rate", "0.5",
                          "--data", str(MODELS / "digits_train.npz"), "--epochs", "1", "--finetune-epochs", "1",
                          "--no-latency", "-q", "-o", str(out)], capture_output=True, text=True)
    assert run.returncode == 0, run.stderr[-2000:]
    assert out.exists()


def _metadata_only_wheel(folder, name: str, version: str):
    """A wheel that installs nothing but `name`'s dist-info: pip then counts `name` as installed."""
    import zipfile

    dist = f"{name.replace('-', '_')}-{version}"
    path = folder / f"{dist}-py3-none-any.whl"
    files = {f"{dist}.dist-info/METADATA": f"Metadata-Version: 2.1\nName: {name}\nVersion: {version}\n",
             f"{dist}.dist-info/WHEEL": "Wheel-Version: 1.0\nGenerator: test\nRoot-Is-Purelib: true\nTag: py3-none-any\n"}
    files[f"{dist}.dist-info/RECORD"] = "".join(f"{f},,\n" for f in [*files, f"{dist}.dist-info/RECORD"])
    with zipfile.ZipFile(path, "w") as z:
        for f, text in files.items():
            z.writestr(f, text)
    return path


def test_installed_beside_onnxruntime_gpu_it_adds_no_cpu_wheel(tmp_path):
    """Where onnxruntime-gpu is installed, `pip install onnxprune` must not bring the CPU wheel, which
    would overwrite its `onnxruntime` module (pip resolves the install, the GPU wheel stood in by its
    metadata: the resolution is what is checked)."""
    import json

    venv = tmp_path / "venv"
    subprocess.run([sys.executable, "-m", "venv", str(venv)], check=True)
    py = str(venv / "bin" / "python")
    pip = [py, "-m", "pip", "install", "-q", "--disable-pip-version-check"]
    subprocess.run([*pip, str(_metadata_only_wheel(tmp_path, "onnxruntime-gpu", "1.31.1"))], check=True)
    for extra, runtime in (("", None), ("[gpu]", None), ("[cpu]", "onnxruntime")):
        done = subprocess.run([*pip, "--dry-run", "--report", "-", f"onnxprune{extra} @ {ROOT.as_uri()}"],
                              capture_output=True, text=True)
        assert done.returncode == 0, done.stderr[-2000:]
        names = {i["metadata"]["name"].lower() for i in json.loads(done.stdout)["install"]}
        assert "onnxprune" in names and "onnxruntime-gpu" not in names
        assert ("onnxruntime" in names) == (runtime is not None), (extra, sorted(names))


def test_two_runtime_wheels_of_one_module_are_named_with_the_fix(monkeypatch):
    """`pip install onnxprune` beside onnxruntime-gpu adds the CPU wheel (both install `onnxruntime`):
    a run says so in one line, with the commands that keep one."""
    from importlib import metadata

    from onnxprune import device

    versions = {"onnxruntime": "1.32.0", "onnxruntime-gpu": "1.31.1"}
    real = metadata.version

    def version(name):  # the runtime wheels as listed, every other package as installed
        if name not in device.RUNTIME_WHEELS:
            return real(name)
        if name in versions:
            return versions[name]
        raise metadata.PackageNotFoundError(name)
    monkeypatch.setattr(metadata, "version", version)
    why = device.runtime_conflict()
    assert why and "onnxruntime 1.32.0 and onnxruntime-gpu 1.31.1" in why and "\n" not in why
    assert why.endswith("pip uninstall -y onnxruntime onnxruntime-gpu && pip install onnxruntime-gpu")
    r = onnxprune.prune(MODELS / "digits_mlp.onnx", 0.5, data=MODELS / "digits_train.npz", latency=False,
                        schedule=onnxprune.Schedule(epochs=1, finetune_epochs=1))
    assert why in r.report["warnings"]
    del versions["onnxruntime-gpu"]
    assert device.runtime_conflict() is None


def test_without_onnx_runtime_the_command_says_so_in_one_line():
    code = ("import sys; sys.modules['onnxruntime'] = None; sys.argv = ['onnxprune', '--help']; "
            "from onnxprune._launch import entry; entry()")
    done = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, cwd=ROOT)
    assert done.returncode == 2 and done.stdout == ""
    assert done.stderr.count("\n") == 1 and "pip install onnxruntime" in done.stderr and "onnxruntime-gpu" in done.stderr
