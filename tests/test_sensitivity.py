"""`onnxprune analyze`: per-layer sensitivity, its suggested rates, and `--layer-rates` reading them."""
import json
import subprocess
import sys

from click.testing import CliRunner

from conftest import MODELS, ROOT, run_cli
from onnxprune.cli import analyze

RESNET, MNIST = MODELS / "resnet_mnist.onnx", MODELS / "mnist_train.npz"


def _analyze(*args):
    r = CliRunner().invoke(analyze, [str(a) for a in args], catch_exceptions=True)
    return r.exit_code, r.stdout, r.stderr


def test_analyze_the_resnet_and_prune_it_at_the_suggested_rates(tmp_path):
    out = tmp_path / "sens.json"
    code, stdout, stderr = _analyze(RESNET, "--data", MNIST, "--rates", "0.5,0.9", "-o", out)
    assert code == 0, stderr
    rep = json.loads(out.read_text())
    names = [u["name"] for u in rep["units"]]
    assert names == ["stem", "block1.conv1", "block1.conv2", "block2.conv1", "block2.conv2", "block2.shortcut", "fc"]
    for u in rep["units"]:  # the suggestion is the highest rate tried within the tolerance
        within = [float(r) for r, d in u["drops"].items() if d <= 0.5 + 1e-9]
        assert u["suggested_rate"] == (max(within) if within else 0.0)
    assert "block2.conv2" in stdout and "suggested" in stdout
    if (tmp_path / "sens.png").exists():
        assert (tmp_path / "sens.png").read_bytes()[:4] == b"\x89PNG"
    rates = rep["layer_rates"]
    code, _, stderr = run_cli(RESNET, "--layer-rates", out, "--method", "magnitude", "--data", MNIST, "--no-latency",
                              "-o", tmp_path / "r.onnx", "--report", tmp_path / "r.json")
    assert code == 0, stderr
    for row in json.loads((tmp_path / "r.json").read_text())["layers"]:
        assert abs(row["sparsity"] - rates[row["name"]]) < 0.01, row["name"]


def test_a_coupled_unit_is_the_channel_space_not_the_layer(tmp_path):
    """Filter units: the residual stream's producers and readers count once, so none of them is
    reported as robust because its partner still carried the signal."""
    out = tmp_path / "f.json"
    code, _, stderr = _analyze(RESNET, "--data", MNIST, "--structure", "filter", "--rates", "0.5", "-o", out)
    assert code == 0, stderr
    units = json.loads(out.read_text())["units"]
    assert 0 < len(units) < 7  # fewer units than layers: coupled ones share one


def test_layer_rates_are_checked(tmp_path):
    bad = tmp_path / "bad.json"
    bad.write_text(json.dumps({"layer_rates": {"no_such_layer": 0.5}}))
    code, _, stderr = run_cli(RESNET, "--layer-rates", bad, "--method", "magnitude", "--data", MNIST,
                              "-o", tmp_path / "x.onnx")
    assert code == 2 and "no_such_layer" in stderr and len(stderr.strip().splitlines()) == 1
    code, _, stderr = run_cli(RESNET, "--layer-rates", bad, "--structure", "filter", "-o", tmp_path / "x.onnx")
    assert code == 2 and "per-layer structures" in stderr
    (tmp_path / "notjson.json").write_text("{")
    code, _, stderr = run_cli(RESNET, "--layer-rates", tmp_path / "notjson.json", "-o", tmp_path / "x.onnx")
    assert code == 2 and "cannot read it as JSON" in stderr
    code, _, stderr = _analyze(RESNET, "--rates", "0.5,2", "-o", tmp_path / "y.json")
    assert code == 2 and "--rates must be in (0, 1)" in stderr


def test_the_command_dispatches_analyze():
    r = subprocess.run([sys.executable, str(ROOT / "cli.py"), "analyze", "--help"], capture_output=True, text=True,
                       timeout=120)
    assert r.returncode == 0 and "Per-layer sensitivity" in r.stdout and "--layer-rates" in r.stdout
    # verbosity flags may come before the command, as they may for pruning
    r = subprocess.run([sys.executable, str(ROOT / "cli.py"), "-vv", "-q", "analyze", "no_such.onnx"],
                       capture_output=True, text=True, timeout=120)
    assert r.returncode == 2 and "no_such.onnx" in r.stderr and "Usage: onnxprune analyze" not in r.stderr
