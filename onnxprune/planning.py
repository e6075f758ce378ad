"""The plan stage: the groups the chosen structure makes over the prunable layers (with the real
tensor shapes ORT measures), the dense weights they cover, and what quantization will need, all
checked before any training starts (a rate the structure cannot reach, nothing to quantize).
"""
from __future__ import annotations

from dataclasses import dataclass

import numpy as np
from onnx import numpy_helper

from .cluster import Codebooks
from .config import PruneConfig
from .costs import macs_per_weight
from .data import Dataset
from .errors import OnnxPruneError
from .groups import GroupPlan
from .layers import fixed_transforms
from .loading import Loaded
from .masking import check_rate
from .plumbing import initializer_map, tensor_shapes
from .quantize import FakeInt8, kept_in_float
from .structures import Structure, from_config


@dataclass
class Plan:
    structure: Structure
    groups: GroupPlan
    shapes: dict[str, tuple[int, ...]]  # every tensor of the base graph, on the probe batch
    dense_weights: dict[str, np.ndarray]  # every tensor the groups mask, as the dense model has it
    keep_float: dict[str, str]  # --quantize int8: layers kept in float, and why
    quantizer: object | None  # what fine-tuning trains against (FakeInt8 or Codebooks)
    fixed: dict[str, str]  # layers that look like fixed transforms (an STFT basis), and why
    rate: float
    scope: str
    floor: float
    align: int
    unit_rates: dict[str, float] | None = None  # --layer-rates: layer name → rate


    def select(self, weights: dict[str, np.ndarray], groups: GroupPlan | None = None,
               rate: float | None = None, scope: str | None = None) -> dict[str, np.ndarray]:
        """Hard-pruning masks for `weights` (of `groups`, default the whole plan)."""
        return self.structure.select(weights, groups or self.groups, self.rate if rate is None else rate,
                                     scope or self.scope, self.floor, self.align,
                                     self.unit_rates if groups is None else None)


def plan(loaded: Loaded, data: Dataset, cfg: PruneConfig) -> Plan:
    p, c = cfg.pruning, cfg.compression
    base, layers = loaded.base, loaded.layers
    structure = from_config(p)
    shapes = tensor_shapes(base, data.model_feed(data.probe))
    inits = initializer_map(base.graph)
    weights_of = {layer.weight: numpy_helper.to_array(inits[layer.weight]).astype(np.float32) for layer in layers}
    groups = structure.plan(layers, weights_of, model=base, shapes=shapes)
    dense_weights = {w: weights_of[w] if w in weights_of else numpy_helper.to_array(inits[w]).astype(np.float32)
                     for w in groups.tensors}
    if p.rate_of == "macs":
        groups.cost = macs_per_weight(base, shapes, data.fixed_batch or 1)
    check_rate(groups, p.rate)
    keep_float = kept_in_float(base, layers, c.target, shapes) if c.int8 else {}
    if c.int8 and len(keep_float) == len(layers):
        raise OnnxPruneError("--quantize int8 has nothing to quantize: "
                             + "; ".join(f"{k}: {v}" for k, v in keep_float.items()))
    quantizer = None
    if c.cluster:
        quantizer = Codebooks([layer.weight for layer in layers if layer.weight in groups.tensors], c.bits)
    elif c.int8 and c.qat:
        quantizer = FakeInt8({layer.weight: layer.out_axis for layer in layers
                              if layer.name not in keep_float and layer.weight in groups.tensors})
    fixed = fixed_transforms(layers, weights_of)
    unit_rates = dict(p.layer_rates) or None
    unknown = sorted(set(unit_rates or ()) - set(groups.units))
    if unknown:
        raise OnnxPruneError(f"--layer-rates names {', '.join(unknown)}, which are not prunable layers of this model "
                             f"(they are: {', '.join(groups.units[:8])}{' …' if len(groups.units) > 8 else ''})")
    return Plan(structure, groups, shapes, dense_weights, keep_float, quantizer, fixed, p.rate, p.scope,
                p.layer_floor, p.channel_multiple, unit_rates)
