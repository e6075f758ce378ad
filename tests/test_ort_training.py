"""The workaround for ORT issue #22070: the training API imports without torch."""
import importlib.util
import subprocess
import sys

import pytest


@pytest.mark.skipif(importlib.util.find_spec("torch") is not None, reason="torch is installed here")
def test_training_api_imports_without_torch():
    code = (
        "import sys\n"
        "from onnxprune import ort_training as ot\n"
        "assert 'torch' not in sys.modules\n"
        "assert callable(ot.artifacts.generate_artifacts) and ot.CheckpointState and ot.Module and ot.Optimizer\n"
        "import onnxruntime.training.optim as optim\n"
        "try:\n"
        "    optim.FusedAdam\n"
        "except ImportError as e:\n"
        "    assert 'PyTorch' in str(e)\n"
        "else:\n"
        "    raise SystemExit('placeholder did not refuse')\n"
    )
    done = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True)
    assert done.returncode == 0, done.stderr


def test_artifact_generation_is_quiet(tmp_path):
    """generate_artifacts would log every graph transformer at INFO level."""
    code = (
        "from pathlib import Path\n"
        "import sys; sys.path.insert(0, %r)\n"
        "from conftest import small_model\n"
        "from onnxprune.layers import find_prunable\n"
        "from onnxprune.losses import MeanSquaredError\n"
        "from onnxprune.training import Trainer, build_training_graph, mask_name, coef_name\n"
        "m = small_model()\n"
        "layers, _ = find_prunable(m)\n"
        "g = build_training_graph(m, {'w': layers[0].shape}, {'w'}, [MeanSquaredError('y', 'y', 't', (3,))], {})\n"
        "Trainer(g, ['w'], [mask_name('w'), coef_name('w')], Path(%r), 1e-3)\n"
    ) % (str(__import__("pathlib").Path(__file__).parent), str(tmp_path))
    done = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True)
    assert done.returncode == 0, done.stderr
    assert "GraphTransformer" not in done.stdout + done.stderr
