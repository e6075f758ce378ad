"""The compress stage: the pruned float model quantized (`--quantize int8`, ORT's quantizer) and
its weights stored compactly (storage.py), each step checked: pruned weights stay exactly zero,
and compact storage reproduces the model's outputs exactly.
"""
from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import onnx
from onnx import numpy_helper

from .config import Compression
from .data import Dataset
from .errors import OnnxPruneError
from .layers import PrunableLayer
from .plumbing import default_opset, warn
from .quantize import int8, quantized_layers
from .storage import encode, form_sizes, stored_tensors, tensor_bytes, weight_slots, weight_storage


@dataclass
class Compressed:
    model: onnx.ModelProto  # what is written
    outputs: list[np.ndarray]  # its outputs on the evaluation samples
    quantized: list[str]  # int8: the layers ORT's quantizer quantized
    kept: dict[str, int]  # weight -> non-zeros as written
    slots: dict[str, tuple[str, int]]  # layer -> (node, which input holds its weight)
    stored: dict[str, onnx.TensorProto]  # node -> the tensor that stores its weight
    forms: dict[str, str]  # stored tensor -> storage form


def compress(pruned: onnx.ModelProto, outputs: list[np.ndarray], base: onnx.ModelProto,
             layers: list[PrunableLayer], masks: dict[str, np.ndarray], keep_float: dict[str, str],
             data: Dataset, cfg: Compression, warnings: list[str]) -> Compressed:
    """`pruned`: the float model as rewritten, `outputs` its outputs on `data.val`; `base`: the
    graph the layers were found in (its nodes name the layers)."""
    slots = weight_slots(base, layers)
    final, quantized = pruned, []
    if cfg.int8:
        final = int8(final, data.train, data.input_names, cfg.target, layers, keep_float, data.fixed_batch,
                     data.layout.to_model)
        quantized = quantized_layers(final, slots)
        outputs = data.outputs(final, "the int8 model")
    stored = stored_tensors(final, slots)
    kept = kept_counts(layers, stored, masks, warnings)
    check_zeros_kept(pruned, final, slots, stored)
    encoded, forms = encode(final, [t.name for t in stored.values()], cfg.storage)
    if encoded is not final:
        same_outputs(encoded, outputs, data, 0.0, f"--storage {cfg.storage}")
    return Compressed(encoded, outputs, quantized, kept, slots, stored, forms)


def kept_counts(layers: list[PrunableLayer], stored: dict[str, onnx.TensorProto], masks: dict[str, np.ndarray],
                warnings: list[str]) -> dict[str, int]:
    """Non-zero weights per layer, counted in the tensors that are written. A layer whose weight
    cannot be found there any more is counted from its mask, with a warning: never as 0 kept."""
    kept = {}
    for layer in layers:
        if layer.name in stored:
            kept[layer.weight] = int(np.count_nonzero(numpy_helper.to_array(stored[layer.name])))
        else:
            kept[layer.weight] = int(np.count_nonzero(masks[layer.weight])) if layer.weight in masks else layer.size
            warn(warnings, f"layer {layer.name}'s weight was not found in the written graph; its count of kept "
                           "weights is the pruning mask's")
    return kept


def check_zeros_kept(pruned: onnx.ModelProto, final: onnx.ModelProto, slots, stored) -> None:
    """Every weight pruned to zero must still be exactly zero after quantization. A tensor whose
    shape changed cannot be compared element by element: it must at least hold no more non-zeros."""
    if final is pruned:
        return
    before = stored_tensors(pruned, slots)
    for name, t in stored.items():
        if name not in before:
            continue
        was, now = numpy_helper.to_array(before[name]), numpy_helper.to_array(t)
        if was.shape == now.shape:
            grew = bool(np.any(now[was == 0] != 0))
        else:
            grew = np.count_nonzero(now) > np.count_nonzero(was)
        if grew:
            raise OnnxPruneError(f"quantization made pruned weights of {name} non-zero; nothing was written")


def same_outputs(model: onnx.ModelProto, want, data, tolerance: float, what: str):
    """`model`'s outputs on the eval samples, which must match `want` within `tolerance` (relative)."""
    got = data.outputs(model, what)
    err = max(float(np.abs(g.astype(np.float64) - w).max() / max(np.abs(w).max(), 1e-12)) if g.size else 0.0
              for g, w in zip(got, want))
    if err > tolerance:
        raise OnnxPruneError(f"{what} changed the model's outputs by {err:.2g} (relative); nothing was written")
    return got


def storage_report(model: onnx.ModelProto, layers, slots, stored, forms, mode: str) -> dict:
    """Bytes that store each layer's weight in the written graph (values, indices or gaps, codes,
    codebooks, quantization scales and zero points) against its float32 dense size."""
    nodes = {n.name: n for n in model.graph.node}
    rows = []
    for layer in layers:
        node = nodes.get(layer.node)
        if node is None or layer.name not in stored:
            continue
        nbytes, tensors = weight_storage(model, node.input[slots[layer.name][1]])
        rows.append({"name": layer.name, "form": forms.get(stored[layer.name].name, "dense"),
                     "dtype": onnx.helper.tensor_dtype_to_np_dtype(stored[layer.name].data_type).name,
                     "bytes": nbytes, "dense_fp32_bytes": 4 * layer.size, "tensors": tensors})
    total = sum(r["bytes"] for r in rows)
    dense = sum(r["dense_fp32_bytes"] for r in rows)
    out = {"mode": mode, "layers": rows, "bytes": total, "dense_fp32_bytes": dense,
           "reduction": dense / total if total else float("inf")}
    if mode != "compact":  # what --storage compact would write instead, for the summary's one line
        opset = default_opset(model)
        out["compact_bytes"] = total + sum(
            min(form_sizes(numpy_helper.to_array(stored[r["name"]]), "compact", opset, model.ir_version).values())
            - tensor_bytes(stored[r["name"]]) for r in rows if r["form"] == "dense")
    return out
