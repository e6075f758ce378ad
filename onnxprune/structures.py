"""Sparsity structures: one class per structure, registered by name. A structure plans its groups
over the layers (`plan`), chooses which to keep at a rate (`select`), and may rewrite the masked
graph for deployment (`rewrite`: filter/channel remove channels, N:M turns MatMul into Gemm).

In the GEMM view of a weight (rows = output features, columns = the rest): unstructured (each
weight), column (one input position across all rows), block (R×C tiles), pattern (PatDNN kernel
shapes + whole-kernel connectivity), nm (N of every M consecutive input weights), and the
coupled channel structures filter and channel, whose groups come from the graph's channel
dependencies (channels.py) and span layers.

Adding one: subclass `Structure` (or `PerLayer`, whose groups stay in one layer and need only
`layer_ids`), give it a `name`, decorate it with `@register`, and add the name to
`config.STRUCTURES` so the CLI and the config accept it.
"""
from __future__ import annotations

from dataclasses import dataclass, field
from typing import ClassVar

import numpy as np
import onnx

from . import masking
from .channels import analyze, channel_plan
from .config import Pruning, pair
from .errors import OnnxPruneError
from .groups import GroupPlan, gemm_view
from .layers import PrunableLayer
from .rewrite import matmul_to_gemm
from .shrink import shrink

REGISTRY: dict[str, type[Structure]] = {}


def register(cls):
    REGISTRY[cls.name] = cls
    return cls


def make_structure(name: str, block: str = "4x4", nm: str = "2:4") -> Structure:
    """The structure object for a CLI/API name, with its --block / --nm setting."""
    if name not in REGISTRY:
        raise OnnxPruneError(f"structure must be one of {', '.join(REGISTRY)}, not {name!r}")
    return REGISTRY[name].from_options(block=block, nm=nm)


def from_config(p: Pruning) -> Structure:
    return make_structure(p.structure, p.block, p.nm)


class Structure:
    """What a group is, how groups are chosen at a rate, and what the export does with them."""

    name: ClassVar[str] = ""
    coupled: ClassVar[bool] = False  # groups span layers (channel analysis; needs graph and shapes)

    @classmethod
    def from_options(cls, **_) -> Structure:
        return cls()

    def plan(self, layers: list[PrunableLayer], weights: dict[str, np.ndarray],
             model: onnx.ModelProto | None = None, shapes: dict | None = None) -> GroupPlan:
        raise NotImplementedError

    def select(self, weights: dict[str, np.ndarray], plan: GroupPlan, rate: float, scope: str = "global",
               floor: float = 0.1, align: int = 1, unit_rates: dict | None = None) -> dict[str, np.ndarray]:
        """Masks (1 kept, 0 pruned) for every tensor of the plan at `rate` (per layer: `unit_rates`)."""
        return masking.ranked(weights, plan, rate, scope, floor, unit_rates)

    def rewrite(self, masked: onnx.ModelProto, plan: GroupPlan, masks: dict[str, np.ndarray],
                shapes: dict) -> tuple[onnx.ModelProto, list[str]]:
        """The masked model made smaller or more deployable, and what was done (nothing by default)."""
        return masked, []

    def describe(self) -> str:
        return self.name


class PerLayer(Structure):
    """A structure whose groups stay inside one layer."""

    def layer_ids(self, layer: PrunableLayer, w: np.ndarray) -> tuple[np.ndarray, np.ndarray | None]:
        """Local group id per element, and which local groups are forced out (or None)."""
        raise NotImplementedError

    def plan(self, layers, weights, model=None, shapes=None) -> GroupPlan:
        ids, units, forced, offset = {}, [], [], 0
        for layer in layers:
            local, force = self.layer_ids(layer, weights[layer.weight])
            local = np.unique(local.ravel(), return_inverse=True)[1].reshape(-1)  # dense 0..n-1
            n = int(local.max()) + 1
            ids[layer.weight] = local + offset
            units.append(np.full(n, len(units), np.int64))
            forced.append(force if force is not None else np.zeros(n, bool))
            offset += n
        return GroupPlan({layer.weight: layer.shape for layer in layers}, ids, offset,
                         np.concatenate(units), [layer.name for layer in layers],
                         tuple(layer.weight for layer in layers), forced=np.concatenate(forced))


@register
class Unstructured(PerLayer):
    """Each weight is its own group (non-structured sparsity)."""

    name = "unstructured"

    def layer_ids(self, layer, w):
        return np.arange(layer.size), None


@register
class Column(PerLayer):
    """One GEMM-view column: an (input channel, kh, kw) position across all filters."""

    name = "column"

    def layer_ids(self, layer, w):
        return gemm_view(layer)[1], None


@register
class Block(PerLayer):
    """R×C tiles of the GEMM view (edge tiles may be smaller)."""

    name = "block"

    def __init__(self, rows: int = 4, cols: int = 4) -> None:
        self.rows, self.cols = rows, cols

    @classmethod
    def from_options(cls, block: str = "4x4", **_) -> Block:
        return cls(*pair(block, "x", "--block", "RxC, e.g. 4x4"))

    def layer_ids(self, layer, w):
        row, col, _ = gemm_view(layer)
        tiles_per_row = -(-(int(col.max()) + 1) // self.cols)
        return (row // self.rows) * tiles_per_row + col // self.cols, None

    def describe(self) -> str:
        return f"{self.rows}x{self.cols} blocks"


@dataclass
class NMPlan(GroupPlan):
    """Per-weight groups, plus the M-block each weight belongs to."""

    nm: tuple[int, int] = (2, 4)
    blocks: dict[str, np.ndarray] = field(default_factory=dict)  # block id per element


@register
class NM(PerLayer):
    """At most N non-zeros in every M consecutive weights along the input channels (for a
    Conv, at each output channel and kernel position: the layout sparse tensor cores use).
    Each weight is penalized on its own; hard pruning keeps the N largest of each block, and
    a rank-2 MatMul is written as Gemm(transB=1), the form TensorRT's sparse kernels take."""

    name = "nm"

    def __init__(self, n: int = 2, m: int = 4) -> None:
        if n >= m:
            raise OnnxPruneError(f"--nm {n}:{m}: N must be smaller than M")
        self.n, self.m = n, m

    @classmethod
    def from_options(cls, nm: str = "2:4", **_) -> NM:
        return cls(*pair(nm, ":", "--nm", "N:M, e.g. 2:4"))

    def layer_ids(self, layer, w):
        return np.arange(layer.size), None

    def block_ids(self, layer: PrunableLayer) -> np.ndarray:
        row, col, kernel = gemm_view(layer)
        channel, position = col // kernel, col % kernel
        blocks_per_row = -(-(int(channel.max()) + 1) // self.m)
        return (row * kernel + position) * blocks_per_row + channel // self.m

    def plan(self, layers, weights, model=None, shapes=None) -> NMPlan:
        base = super().plan(layers, weights)
        return NMPlan(**base.__dict__, nm=(self.n, self.m),
                      blocks={layer.weight: self.block_ids(layer) for layer in layers})

    def select(self, weights, plan, rate, scope="global", floor=0.1, align=1, unit_rates=None):
        return masking.n_of_m(weights, plan)

    def rewrite(self, masked, plan, masks, shapes):
        model, converted = matmul_to_gemm(masked, shapes)
        return model, ([f"MatMul -> Gemm(transB=1) for TensorRT's sparse kernels: {', '.join(converted)}"]
                       if converted else [])

    def describe(self) -> str:
        return f"{self.n}:{self.m}"


@register
class Pattern(PerLayer):
    """PatDNN-style kernel patterns: every k×k kernel (k ≥ 3) keeps `keep` entries
    (4 of 9 for 3×3, the same share for larger kernels) in one of `count` shapes chosen
    from the trained weights (the most frequent top-`keep` shapes across all kernels).
    Each kernel is two groups: the entries its pattern drops (always pruned) and the
    entries it keeps (pruned whole by connectivity pruning to reach the rate). Layers
    without such kernels (Gemm, MatMul, 1×1 Conv) are pruned per weight."""

    name = "pattern"

    def __init__(self, count: int = 8) -> None:
        self.count = count

    def layer_ids(self, layer, w):
        shape = layer.shape
        if layer.op not in ("Conv", "ConvTranspose") or len(shape) < 4 or min(shape[2:]) < 3:
            return np.arange(layer.size), None
        area = int(np.prod(shape[2:]))
        keep = max(1, round(area * 4 / 9))
        kernels = np.abs(np.moveaxis(w, layer.out_axis, 0)).reshape(-1, area)
        chosen = self.patterns(kernels, keep)
        # each kernel takes the pattern that keeps the most of its energy
        best = np.argmax((kernels ** 2) @ chosen.T.astype(np.float64), axis=1)
        inside = chosen[best]  # [kernels, area] bool
        local = np.arange(len(kernels))[:, None] * 2 + np.where(inside, 0, 1)
        ids = np.empty(layer.size, np.int64)
        order = np.moveaxis(np.arange(layer.size).reshape(shape), layer.out_axis, 0).reshape(-1, area)
        ids[order.ravel()] = local.ravel()
        forced = np.zeros(2 * len(kernels), bool)
        forced[1::2] = inside.sum(1) < area  # complement groups (absent when a pattern keeps all)
        used = np.unique(ids)
        return ids, forced[used]

    def patterns(self, kernels: np.ndarray, keep: int) -> np.ndarray:
        """The `count` most frequent top-`keep` shapes ([count, area] bool), ties by first seen."""
        top = np.argsort(-kernels, axis=1, kind="stable")[:, :keep]
        shapes = np.zeros_like(kernels, dtype=bool)
        np.put_along_axis(shapes, top, True, axis=1)
        uniq, first, counts = np.unique(shapes, axis=0, return_index=True, return_counts=True)
        order = np.lexsort((first, -counts))
        return uniq[order[: self.count]]

    def describe(self) -> str:
        return f"{self.count} kernel patterns + connectivity"


@register
class Filter(Structure):
    """An output channel, with everything coupled to it across layers (channels.py). The
    export removes pruned channels from the graph (shrink.py)."""

    name = "filter"
    side = "out"
    coupled = True

    def plan(self, layers, weights, model=None, shapes=None):
        if model is None or shapes is None:
            raise OnnxPruneError(f"--structure {self.name} needs the graph and its tensor shapes")
        plan = channel_plan(analyze(model, shapes, layers), layers, self.side)
        if not plan.count:
            why = "; ".join(plan.notes[:3]) or "no Conv/Gemm/MatMul channels to remove"
            raise OnnxPruneError(f"--structure {self.name}: no channel can be removed safely ({why})")
        return plan

    def select(self, weights, plan, rate, scope="global", floor=0.1, align=1, unit_rates=None):
        return masking.coupled(weights, plan, rate, scope, floor, align)

    def rewrite(self, masked, plan, masks, shapes):
        pruned = plan.pruned_roots(masks)
        return shrink(masked, plan.channels, pruned), [f"removed {len(pruned)} channel(s) from the graph"]


@register
class Channel(Filter):
    """An input channel across all filters that read it, coupled across layers."""

    name = "channel"
    side = "in"
