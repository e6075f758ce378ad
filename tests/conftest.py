from pathlib import Path

import numpy as np
import onnx
import pytest
from click.testing import CliRunner
from onnx import TensorProto, helper, numpy_helper

ROOT = Path(__file__).resolve().parent.parent
MODELS = ROOT / "models"
ONNX_DATA = Path(onnx.__file__).parent / "backend" / "test" / "data"

import onnxprune  # noqa: E402
from onnxprune.cli import main  # noqa: E402

# a budget that trains the small examples in seconds; the real defaults are for users
QUICK = onnxprune.Schedule(epochs=3, finetune_epochs=3, reweight_every=10)


@pytest.fixture
def lenet():
    return MODELS / "lenet5.onnx"


@pytest.fixture
def digits():
    return MODELS / "digits_mlp.onnx"


def run_cli(*args):
    """Run the CLI in-process; returns (exit code, stdout, stderr)."""
    result = CliRunner().invoke(main, [str(a) for a in args], catch_exceptions=True)
    return result.exit_code, result.stdout, result.stderr


def small_model(op_after=None, opset=17, ir=8):
    """x[N,4] -> MatMul(w 4x3) (-> op_after) -> y[N,3]."""
    w = numpy_helper.from_array(np.random.default_rng(0).standard_normal((4, 3)).astype(np.float32), "w")
    nodes = [helper.make_node("MatMul", ["x", "w"], ["m" if op_after else "y"], name="fc")]
    if op_after:
        nodes.append(helper.make_node(op_after, ["m"], ["y"], name=f"my_{op_after.lower()}"))
    g = helper.make_graph(nodes, "small", [helper.make_tensor_value_info("x", TensorProto.FLOAT, ["N", 4])],
                          [helper.make_tensor_value_info("y", TensorProto.FLOAT, ["N", 3])], [w])
    m = helper.make_model(g, opset_imports=[helper.make_opsetid("", opset)])
    m.ir_version = ir
    return m


def weights_of(model):
    """Weights as the model computes with them (compact storage decoded)."""
    from onnxprune.storage import decoded_weights

    return decoded_weights(model)
