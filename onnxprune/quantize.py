"""Quantization, used by the plan and compress stages: static int8 with ONNX Runtime's own quantizer, calibrated on the
user's data, and the fake-quantizer that quantization-aware fine-tuning trains against.

Weights are per-channel symmetric int8 (zero point 0), so pruned weights stay exactly zero.
  --target ort: QDQ with uint8 activations and int8 weights (U8S8), the pair ORT's CPU kernels
                run fastest; ORT fuses each DequantizeLinear → op → QuantizeLinear into QLinear ops.
  --target trt: QDQ with symmetric int8 activations and weights and float biases, Q/DQ on the
                inputs of Conv/Gemm/MatMul only: TensorRT's explicit-quantization form.
"""
from __future__ import annotations

import logging
import tempfile
from pathlib import Path

import numpy as np
import onnx

from .errors import OnnxPruneError
from .binding import sort_graphs
from .layers import RECURRENT, PrunableLayer
from .plumbing import default_opset, first_line
from .storage import stored_tensors, weight_slots

QUANTIZED_OPS = {"QuantizeLinear", "DequantizeLinear", "DynamicQuantizeLinear", "QLinearConv", "QLinearMatMul",
                 "ConvInteger", "MatMulInteger", "QGemm", "QLinearAdd", "QLinearMul", "MatMulNBits",
                 "DynamicQuantizeMatMul", "QAttention"}
INT8_OPS = ("Conv", "ConvTranspose", "Gemm", "MatMul")
CALIBRATION_SAMPLES = 256


def check_not_quantized(model: onnx.ModelProto) -> None:
    """An already-quantized graph has no float weights left to prune or quantize."""
    found = sorted({n.op_type for n in model.graph.node if n.op_type in QUANTIZED_OPS})
    if found:
        raise OnnxPruneError(f"the model is already quantized ({', '.join(found)} nodes); "
                             "onnxprune needs the float model it was quantized from")


def kept_in_float(model: onnx.ModelProto, layers: list[PrunableLayer], target: str,
                  shapes: dict[str, tuple[int, ...]]) -> dict[str, str]:
    """Layers left in float32, by layer name, with the reason. ORT's static (QDQ) quantizer has no
    recurrent op. On x86 CPUs (ORT's MLAS), an int8 Conv that reads fewer than 8 channels per group
    (an image's first layer) runs slower than the float one; a depthwise Conv has its own int8
    kernel and is kept."""
    out = {layer.name: f"ONNX Runtime's static int8 quantizer has no {layer.op} kernel" for layer in layers
           if layer.op in RECURRENT}
    if target != "ort":
        return out
    nodes = {n.name: n for n in model.graph.node}
    for layer in layers:
        node = nodes.get(layer.node)
        if node is None or layer.op != "Conv":
            continue
        group = next((a.i for a in node.attribute if a.name == "group"), 1)
        per_group = layer.shape[1]
        depthwise = per_group == 1 and group > 1
        if per_group < 8 and not depthwise:
            out[layer.name] = (f"{per_group} input channel(s) per group: ORT's int8 Conv is slower than float "
                               "on so few")
    return out


def fake_int8(w: np.ndarray, axis: int) -> np.ndarray:
    """W quantized and dequantized exactly as ORT's quantizer does for a per-channel symmetric
    int8 weight: scale = max|W| / 127 along `axis`, values rounded and clipped to ±127."""
    moved = np.moveaxis(w, axis, 0)
    flat = moved.reshape(len(moved), -1)
    scale = (np.abs(flat).max(axis=1) / np.float32(127)).astype(np.float32)
    safe = np.where(scale > 0, scale, np.float32(1))[:, None]
    q = np.clip(np.round(flat / safe), -127, 127) * safe
    return np.moveaxis(q.reshape(moved.shape), 0, axis).astype(np.float32)


class _Reader:
    """ORT's CalibrationDataReader protocol over arrays: batches of the model's inputs."""

    def __init__(self, arrays: dict[str, np.ndarray], names: list[str], batch: int, to_model=None) -> None:
        n = min(len(arrays[names[0]]), CALIBRATION_SAMPLES)
        to_model = to_model or (lambda f: f)  # samples-first batches → the model's own layout
        self.batches = iter([to_model({k: arrays[k][i:i + batch] for k in names}) for i in range(0, n, batch)])

    def get_next(self):
        return next(self.batches, None)


def int8(model: onnx.ModelProto, calibration: dict[str, np.ndarray], input_names: list[str], target: str,
         layers: list[PrunableLayer], keep_float: dict[str, str], batch: int | None = None,
         to_model=None) -> onnx.ModelProto:
    """`model` statically quantized to int8 by ONNX Runtime's quantizer, calibrated (min/max) on
    up to 256 samples of `calibration`. Only the prunable layers' nodes, less `keep_float`, are
    quantized as layers; ORT adds what its format needs around them."""
    from onnxruntime.quantization import CalibrationMethod, QuantFormat, QuantType, quantize_static

    wanted = [layer.name for layer in layers if layer.name not in keep_float]
    quantize_nodes = sorted({layer.node for layer in layers if layer.name in wanted})
    exclude_nodes = sorted({layer.node for layer in layers if layer.name in keep_float} - set(quantize_nodes))
    if not wanted:
        raise OnnxPruneError("--quantize int8 has nothing to quantize: " + (
            "; ".join(f"{k}: {v}" for k, v in keep_float.items()) or "no Conv, Gemm or MatMul layer"))
    if default_opset(model) < 13:  # per-channel Q/DQ needs the axis attribute of opset 13
        try:
            model = onnx.version_converter.convert_version(model, 13)
        except Exception as e:
            raise OnnxPruneError(f"--quantize int8 needs opset 13, and onnx's version converter could not "
                                 f"convert the model from opset {default_opset(model)}: {first_line(e)}") from None
    trt = target == "trt"
    options = {"ActivationSymmetric": trt, "WeightSymmetric": True,
               # TensorRT takes float biases; ORT's CPU kernels want int32 ones
               "QuantizeBias": not trt}
    with tempfile.TemporaryDirectory(prefix="onnxprune-quant-") as tmp, _quiet():
        src, dst = Path(tmp) / "in.onnx", Path(tmp) / "out.onnx"
        onnx.save_model(model, src)
        try:
            quantize_static(
                str(src), str(dst), _Reader(calibration, input_names, batch or 32, to_model),
                quant_format=QuantFormat.QDQ, op_types_to_quantize=list(INT8_OPS) if trt else None,
                nodes_to_quantize=quantize_nodes if trt else None,
                nodes_to_exclude=None if trt else exclude_nodes,
                per_channel=True, reduce_range=False,
                activation_type=QuantType.QInt8 if trt else QuantType.QUInt8, weight_type=QuantType.QInt8,
                calibrate_method=CalibrationMethod.MinMax, extra_options=options)
        except Exception as e:
            raise OnnxPruneError(f"ONNX Runtime's quantizer failed: {first_line(e)}") from None
        out = sort_graphs(onnx.load(str(dst)))
    if not quantized_layers(out, weight_slots(model, [layer for layer in layers if layer.name in wanted])):
        raise OnnxPruneError("--quantize int8 has nothing to quantize: ONNX Runtime's quantizer left every layer "
                             "in float")
    return out


def quantized_layers(model: onnx.ModelProto, slots: dict[str, tuple[str, int]]) -> list[str]:
    """The layers whose weight is now stored as integers under a DequantizeLinear."""
    return [name for name, t in stored_tensors(model, slots).items() if t.data_type != onnx.TensorProto.FLOAT]


class _quiet(logging.Filter):
    """ORT's quantizer logs advice at WARNING, partly through its own loggers and partly through
    module-level `logging.warning` calls on the root logger. For the duration of the call, its own
    loggers are raised to ERROR and the root logger drops below-ERROR records from ORT's files;
    the root logger's level, and everyone else's records, stay as they are."""

    own = logging.getLogger("onnxruntime")

    def filter(self, record: logging.LogRecord) -> bool:
        return record.levelno >= logging.ERROR or "onnxruntime" not in record.pathname

    def __enter__(self):
        self.level = self.own.level
        self.own.setLevel(logging.ERROR)
        logging.getLogger().addFilter(self)

    def __exit__(self, *exc):
        logging.getLogger().removeFilter(self)
        self.own.setLevel(self.level)


class FakeInt8:
    """Quantization-aware fine-tuning's int8 quantizer (`schedule.finetune`): per-channel
    symmetric along each weight's output axis, as ORT's quantizer will do it."""
    label = "int8-aware"

    def __init__(self, axes: dict[str, int]) -> None:
        self.axes = axes
        self.names = list(axes)

    def start(self, weights, masks) -> None:
        pass

    def refine(self, name, w, mask) -> None:
        pass

    def __call__(self, name: str, w: np.ndarray, mask: np.ndarray) -> np.ndarray:
        return fake_int8(w, self.axes[name])
