"""One small graph per gradient rule (and per interesting attribute), checked by
`onnxprune.gradcheck` against float64 finite differences (tests/test_autodiff.py) and listed in
docs/gradients.md (benchmarks/probe_gradients.py). A case: (label, nodes, params, consts[, opset]),
where `params` are the float inputs differentiated and `consts` fixed initializers."""
from __future__ import annotations

import numpy as np
from onnx import helper

R = np.random.default_rng(0)


def t(*shape, lo=None):
    x = R.standard_normal(shape)
    if lo is not None:  # keep away from kinks and poles
        x = np.abs(x) + lo
    return x


def away(*shape, gap=0.2):
    """Values at least `gap` from 0 (kinks of Relu, Abs, … are not differentiable)."""
    x = R.standard_normal(shape)
    return np.sign(x) * (np.abs(x) + gap)


def distinct(*shape):
    """Well-separated values, so max/min/sort choices are stable under finite differences."""
    n = int(np.prod(shape))
    return (R.permutation(n).reshape(shape) * 0.37 - n * 0.15).astype(np.float64)


def node(op, ins, outs=("y",), **attrs):
    return helper.make_node(op, list(ins), list(outs), **attrs)


def i64(*v):
    return np.array(v, np.int64)


def unary(op, x=None, opset=17, **attrs):
    label = op if not attrs else f"{op} {', '.join(f'{k}={v}' for k, v in attrs.items())}"
    return label, [node(op, ["x"], **attrs)], {"x": away(2, 3) if x is None else x}, {}, opset


CASES = [
    unary("Relu"), unary("LeakyRelu", alpha=0.1), unary("Sigmoid"), unary("Tanh"), unary("Exp"),
    unary("Log", t(2, 3, lo=0.3)), unary("Abs"), unary("Neg"), unary("Sqrt", t(2, 3, lo=0.3)),
    unary("Reciprocal", t(2, 3, lo=0.5)), unary("Erf"), unary("Sin"), unary("Cos"),
    unary("Gelu", opset=20), unary("Gelu", opset=20, approximate="tanh"), unary("Softplus"), unary("Softsign"), unary("Elu"),
    unary("Selu"), unary("Celu", alpha=0.7), unary("HardSigmoid", away(2, 3) * 3), unary("HardSwish", away(2, 5) * 3),
    unary("ThresholdedRelu", away(2, 3) + 0.05, alpha=0.1), unary("Mish", opset=18), unary("Identity"),
    ("Dropout", [node("Dropout", ["x"])], {"x": t(2, 3)}, {}),
    ("Cast", [node("Cast", ["x"], ["c"], to=11), node("CastLike", ["c", "like"])], {"x": t(2, 3)}, {"like": np.zeros(1)}),
    ("CastLike", [node("CastLike", ["x", "like"])], {"x": t(2, 3)}, {"like": np.zeros(1)}),
    ("Clip", [node("Clip", ["x", "lo", "hi"])], {"x": away(3, 4) * 2}, {"lo": np.array(-1.05), "hi": np.array(0.95)}),
    ("PRelu", [node("PRelu", ["x", "s"])], {"x": away(2, 3, 4), "s": t(3, 1)}, {}),
    ("Add (broadcast)", [node("Add", ["a", "b"])], {"a": t(2, 3, 4), "b": t(3, 1)}, {}),
    ("Sub (broadcast)", [node("Sub", ["a", "b"])], {"a": t(4), "b": t(2, 3, 4)}, {}),
    ("Mul (broadcast)", [node("Mul", ["a", "b"])], {"a": t(2, 1, 4), "b": t(3, 1)}, {}),
    ("Div (broadcast)", [node("Div", ["a", "b"])], {"a": t(2, 3), "b": t(3, lo=0.5)}, {}),
    ("Pow", [node("Pow", ["a", "b"])], {"a": t(2, 3, lo=0.5), "b": t(3)}, {}),
    ("Max", [node("Max", ["a", "b", "c"])], {"a": distinct(2, 3), "b": distinct(3), "c": distinct(2, 3) + 0.1}, {}),
    ("Min", [node("Min", ["a", "b"])], {"a": distinct(2, 3), "b": distinct(2, 3) + 0.05}, {}),
    ("Sum", [node("Sum", ["a", "b", "c"])], {"a": t(2, 3), "b": t(3), "c": t(2, 1)}, {}),
    ("Mean", [node("Mean", ["a", "b"])], {"a": t(2, 3), "b": t(3)}, {}),
    ("Where", [node("Where", ["c", "a", "b"])], {"a": t(2, 3), "b": t(3)},
     {"c": np.array([[True, False, True], [False, False, True]])}),
    ("MatMul 2-D", [node("MatMul", ["a", "b"])], {"a": t(3, 4), "b": t(4, 2)}, {}),
    ("MatMul 3-D × 2-D", [node("MatMul", ["a", "b"])], {"a": t(2, 3, 4), "b": t(4, 2)}, {}),
    ("MatMul batched, broadcast", [node("MatMul", ["a", "b"])], {"a": t(2, 1, 3, 4), "b": t(3, 4, 2)}, {}),
    ("MatMul vector", [node("MatMul", ["a", "b"])], {"a": t(4), "b": t(2, 4, 3)}, {}),
    ("Gemm", [node("Gemm", ["a", "b", "c"], alpha=0.7, beta=1.3)], {"a": t(3, 4), "b": t(4, 2), "c": t(2)}, {}),
    ("Gemm transA transB", [node("Gemm", ["a", "b", "c"], transA=1, transB=1)],
     {"a": t(4, 3), "b": t(2, 4), "c": t(3, 1)}, {}),
    ("Gemm transB", [node("Gemm", ["a", "b"], transB=1)], {"a": t(3, 4), "b": t(2, 4)}, {}),
    ("Gemm transA", [node("Gemm", ["a", "b"], transA=1)], {"a": t(4, 3), "b": t(4, 2)}, {}),
    ("Conv", [node("Conv", ["x", "w", "b"], pads=[1, 1, 1, 1])], {"x": t(2, 3, 5, 5), "w": t(4, 3, 3, 3), "b": t(4)}, {}),
    ("Conv strided, leftover", [node("Conv", ["x", "w"], strides=[2, 2])], {"x": t(2, 2, 6, 7), "w": t(3, 2, 3, 3)}, {}),
    ("Conv dilated, asymmetric pads", [node("Conv", ["x", "w"], dilations=[2, 1], pads=[0, 1, 2, 0])],
     {"x": t(1, 2, 6, 5), "w": t(2, 2, 2, 3)}, {}),
    ("Conv grouped", [node("Conv", ["x", "w"], group=2, strides=[1, 2], pads=[1, 1, 1, 1])],
     {"x": t(2, 4, 5, 5), "w": t(6, 2, 3, 3)}, {}),
    ("Conv depthwise", [node("Conv", ["x", "w"], group=3, pads=[1, 1, 1, 1])], {"x": t(2, 3, 4, 4), "w": t(3, 1, 3, 3)}, {}),
    ("Conv 1-D", [node("Conv", ["x", "w"], strides=[2])], {"x": t(2, 3, 9), "w": t(4, 3, 3)}, {}),
    ("Conv SAME_UPPER", [node("Conv", ["x", "w"], auto_pad="SAME_UPPER", strides=[2, 2])],
     {"x": t(1, 2, 5, 6), "w": t(2, 2, 3, 3)}, {}),
    ("ConvTranspose", [node("ConvTranspose", ["x", "w", "b"], strides=[2, 2], pads=[1, 1, 1, 1])],
     {"x": t(2, 3, 3, 3), "w": t(3, 2, 3, 3), "b": t(2)}, {}),
    ("ConvTranspose output_padding, grouped", [node("ConvTranspose", ["x", "w"], strides=[2, 2], output_padding=[1, 1],
                                                    group=2)], {"x": t(1, 4, 3, 3), "w": t(4, 1, 2, 2)}, {}),
    ("ConvTranspose 1-D dilated", [node("ConvTranspose", ["x", "w"], dilations=[2])], {"x": t(2, 2, 4), "w": t(2, 3, 3)}, {}),
    ("MaxPool", [node("MaxPool", ["x"], kernel_shape=[2, 2], strides=[2, 2])], {"x": distinct(2, 2, 4, 4)}, {}),
    ("MaxPool overlapping, padded", [node("MaxPool", ["x"], kernel_shape=[3, 3], strides=[2, 2], pads=[1, 1, 1, 1])],
     {"x": distinct(1, 2, 5, 5)}, {}),
    ("MaxPool ceil_mode", [node("MaxPool", ["x"], kernel_shape=[2, 2], strides=[2, 2], ceil_mode=1)],
     {"x": distinct(1, 2, 5, 5)}, {}),
    ("MaxPool 1-D", [node("MaxPool", ["x"], kernel_shape=[3], strides=[1])], {"x": distinct(2, 2, 6)}, {}),
    ("AveragePool", [node("AveragePool", ["x"], kernel_shape=[2, 2], strides=[2, 2])], {"x": t(2, 2, 4, 4)}, {}),
    ("AveragePool padded, excluding pads", [node("AveragePool", ["x"], kernel_shape=[3, 3], strides=[2, 2],
                                                 pads=[1, 1, 1, 1])], {"x": t(1, 2, 5, 5)}, {}),
    ("AveragePool counting pads", [node("AveragePool", ["x"], kernel_shape=[3, 3], pads=[1, 1, 1, 1],
                                        count_include_pad=1)], {"x": t(1, 1, 4, 4)}, {}),
    ("GlobalAveragePool", [node("GlobalAveragePool", ["x"])], {"x": t(2, 3, 4, 4)}, {}),
    ("GlobalMaxPool", [node("GlobalMaxPool", ["x"])], {"x": distinct(2, 3, 3, 3)}, {}),
    ("Reshape", [node("Reshape", ["x", "s"])], {"x": t(2, 3, 4)}, {"s": i64(6, -1)}),
    ("Flatten", [node("Flatten", ["x"], axis=2)], {"x": t(2, 3, 4)}, {}),
    ("Squeeze", [node("Squeeze", ["x", "a"])], {"x": t(2, 1, 4)}, {"a": i64(1)}),
    ("Unsqueeze", [node("Unsqueeze", ["x", "a"])], {"x": t(2, 4)}, {"a": i64(0, 3)}),
    ("Transpose", [node("Transpose", ["x"], perm=[2, 0, 1])], {"x": t(2, 3, 4)}, {}),
    ("Expand", [node("Expand", ["x", "s"])], {"x": t(3, 1)}, {"s": i64(2, 3, 4)}),
    ("Tile", [node("Tile", ["x", "r"])], {"x": t(2, 3)}, {"r": i64(2, 3)}),
    ("Concat", [node("Concat", ["a", "b"], axis=1)], {"a": t(2, 3), "b": t(2, 2)}, {}),
    ("Split", [node("Split", ["x", "s"], ["y", "z"], axis=1)], {"x": t(2, 5)}, {"s": i64(2, 3)}),
    ("Slice", [node("Slice", ["x", "s", "e", "a"])], {"x": t(3, 6)}, {"s": i64(1, 1), "e": i64(3, -1), "a": i64(0, 1)}),
    ("Slice stepped", [node("Slice", ["x", "s", "e", "a", "p"])], {"x": t(2, 7)},
     {"s": i64(1), "e": i64(7), "a": i64(1), "p": i64(2)}),
    ("Slice reversed", [node("Slice", ["x", "s", "e", "a", "p"])], {"x": t(2, 7)},
     {"s": i64(-2), "e": i64(0), "a": i64(1), "p": i64(-2)}),
    ("Pad", [node("Pad", ["x", "p"])], {"x": t(2, 3)}, {"p": i64(0, 1, 1, 2)}),
    ("Gather", [node("Gather", ["x", "i"])], {"x": t(5, 3)}, {"i": i64(0, 3, 3, -1)}),
    ("Gather axis 1", [node("Gather", ["x", "i"], axis=1)], {"x": t(2, 5, 3)}, {"i": np.array([[1, 4], [1, 0]])}),
    ("Gather scalar index", [node("Gather", ["x", "i"], axis=1)], {"x": t(2, 5)}, {"i": np.array(2)}),
    ("GatherElements", [node("GatherElements", ["x", "i"], axis=1)], {"x": t(2, 4)}, {"i": np.array([[0, 0, 3], [2, 1, 1]])}),
    ("TopK", [node("TopK", ["x", "k"], ["y", "idx"], axis=1)], {"x": distinct(2, 5)}, {"k": i64(2)}),
    ("DepthToSpace", [node("DepthToSpace", ["x"], blocksize=2)], {"x": t(1, 8, 2, 3)}, {}),
    ("DepthToSpace CRD", [node("DepthToSpace", ["x"], blocksize=2, mode="CRD")], {"x": t(1, 8, 2, 3)}, {}),
    ("SpaceToDepth", [node("SpaceToDepth", ["x"], blocksize=2)], {"x": t(1, 2, 4, 6)}, {}),
    ("CumSum", [node("CumSum", ["x", "a"])], {"x": t(2, 4)}, {"a": np.array(1)}),
    ("CumSum reverse exclusive", [node("CumSum", ["x", "a"], reverse=1, exclusive=1)], {"x": t(2, 4)},
     {"a": np.array(1)}),
    ("ReduceSum", [node("ReduceSum", ["x", "a"], keepdims=0)], {"x": t(2, 3, 4)}, {"a": i64(1)}),
    ("ReduceMean", [node("ReduceMean", ["x"], axes=[0, 2])], {"x": t(2, 3, 4)}, {}),
    ("ReduceSumSquare", [node("ReduceSumSquare", ["x"], axes=[1], keepdims=0)], {"x": t(2, 3)}, {}),
    ("ReduceL2", [node("ReduceL2", ["x"], axes=[1])], {"x": t(2, 3)}, {}),
    ("ReduceLogSumExp", [node("ReduceLogSumExp", ["x"], axes=[1])], {"x": t(2, 3)}, {}),
    ("ReduceMax", [node("ReduceMax", ["x"], axes=[1], keepdims=0)], {"x": distinct(2, 4)}, {}),
    ("ReduceMin", [node("ReduceMin", ["x"])], {"x": distinct(2, 4)}, {}),
    ("Softmax", [node("Softmax", ["x"], axis=1)], {"x": t(2, 4, 3)}, {}),
    ("LogSoftmax", [node("LogSoftmax", ["x"])], {"x": t(2, 4)}, {}),
    ("SoftmaxCrossEntropyLoss", [node("SoftmaxCrossEntropyLoss", ["x", "l"], ["y", "lp"])], {"x": t(3, 4)},
     {"l": i64(0, 3, 1)}),
    ("SoftmaxCrossEntropyLoss spatial", [node("SoftmaxCrossEntropyLoss", ["x", "l"], ["y", "lp"])], {"x": t(2, 3, 4)},
     {"l": np.array([[0, 2, 1, 1], [2, 2, 0, 1]])}),
]
# kernels of 16 taps and more take the other weight-gradient form (a Conv with batch and channels swapped)
CASES += [
    ("Conv 5×5 (swapped form)", [node("Conv", ["x", "w", "b"], pads=[2, 1, 0, 1])], {"x": t(2, 3, 7, 6), "w": t(4, 3, 5, 4),
                                                                                   "b": t(4)}, {}),
    ("Conv 4×4 grouped, strided (swapped form)", [node("Conv", ["x", "w"], group=2, strides=[2, 2], pads=[1, 1, 1, 1])],
     {"x": t(2, 4, 9, 9), "w": t(4, 2, 4, 4)}, {}),
    ("Conv 1×1 strided", [node("Conv", ["x", "w"], strides=[2, 2])], {"x": t(2, 3, 5, 5), "w": t(4, 3, 1, 1)}, {}),
]
CASES += [
    ("Mul of a tensor by itself", [node("Mul", ["a", "a"])], {"a": t(2, 3)}, {}),
    ("MaxPool 1-D tiled", [node("MaxPool", ["x"], kernel_shape=[2], strides=[2])], {"x": distinct(2, 3, 6)}, {}),
    ("MaxPool 3×3 tiled", [node("MaxPool", ["x"], kernel_shape=[3, 3], strides=[3, 3])], {"x": distinct(1, 2, 6, 3)}, {}),
]
# BatchNorm on batch statistics, the training graph's fused op (onnxprune/batchnorm.py)
CASES += [
    ("BatchStatNorm (onnxprune's fused BatchNorm on batch statistics)",
     [helper.make_node("BatchStatNorm", ["x", "s", "b"], ["y", "c", "inv"], domain="ai.onnxprune.training",
                       epsilon=1e-5, rank=4)], {"x": t(4, 3, 2, 3), "s": t(3), "b": t(3)}, {}),
]
