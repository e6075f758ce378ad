"""What a *group* is. The reweighted penalty and hard pruning act on groups; the
sparsity structure is nothing but the choice of groups. A structure turns the layers
into a GroupPlan: for every tensor it touches, each element's penalized group id
(-1: not penalized), so penalties, norms and masks are the same code for all structures.

Structures, in the GEMM view of a weight (rows = output features, columns = the rest):
unstructured (each weight), column (one input position across all rows), block (R×C
tiles), pattern (PatDNN kernel shapes + whole-kernel connectivity), nm (N of every M
consecutive input weights), and the coupled channel structures filter and channel,
whose groups come from the graph's channel dependencies (channels.py) and span layers.
"""
from __future__ import annotations

from dataclasses import dataclass, field
from functools import cached_property

import numpy as np

from .errors import OnnxPruneError
from .layers import PrunableLayer


@dataclass
class GroupPlan:
    """Groups over a set of tensors."""

    tensors: dict[str, tuple[int, ...]]  # every tensor the groups mask
    ids: dict[str, np.ndarray]  # tensor -> flat penalized group id per element (-1: none)
    count: int
    unit: np.ndarray  # per group: index into `units` (a layer, or a coupled channel space)
    units: list[str]
    counted: tuple[str, ...]  # the prunable weights: the rate counts their elements
    forced: np.ndarray | None = None  # per group: always pruned (pattern complements)
    removes: list | None = None  # coupled: per group, [(tensor, flat indices)] zeroed with it
    nm: tuple[int, int] | None = None  # N:M: keep N of every M-block
    blocks: dict[str, np.ndarray] = field(default_factory=dict)  # N:M block id per element
    notes: list[str] = field(default_factory=list)  # what the structure left alone, and why
    channels: object = None  # the channel analysis behind filter/channel plans (for shrinking)
    roots: list[int] | None = None  # per group: its channel in `channels`
    cost: dict[str, float] = field(default_factory=dict)  # what one element of a counted tensor is worth
    # toward the rate: 1 (a weight) unless the rate counts MACs (then the MACs it does per sample)

    @cached_property
    def penalized(self) -> list[str]:
        """The tensors that carry a group penalty."""
        return [name for name, ids in self.ids.items() if (ids >= 0).any()]

    @cached_property
    def removal_sizes(self) -> np.ndarray:
        """Counted weights each group takes with it (a channel: its rows and its readers' columns)."""
        if self.removes is None:
            return self.sizes(self.counted)
        counted = set(self.counted)
        return np.array([sum(len(idx) * self.cost.get(t, 1.0) for t, idx in slices if t in counted)
                         for slices in self.removes])

    def least_rate(self) -> float:
        """The share of counted weights that forced groups remove whatever the rate."""
        if self.forced is None or not self.forced.any():
            return 0.0
        sizes = self.sizes(self.counted)
        return float(sizes[self.forced].sum() / sizes.sum())

    def sq_norms(self, weights: dict[str, np.ndarray]) -> np.ndarray:
        """‖W_g‖² of every group, over its penalized elements."""
        out = np.zeros(self.count)
        for name in self.penalized:
            ids = self.ids[name]
            flat = weights[name].ravel().astype(np.float64)
            sel = ids >= 0
            out += np.bincount(ids[sel], weights=flat[sel] ** 2, minlength=self.count)
        return out

    def sizes(self, names=None) -> np.ndarray:
        """Elements per group (penalized ones; only in `names` when given)."""
        out = np.zeros(self.count, np.int64)
        for name, ids in self.ids.items():
            if names is None or name in names:
                out += np.bincount(ids[ids >= 0], minlength=self.count)
        return out

    def expand(self, per_group: np.ndarray, name: str) -> np.ndarray:
        """A per-group value spread over one tensor (0 where no group)."""
        ids = self.ids[name]
        out = np.where(ids >= 0, per_group[np.maximum(ids, 0)], 0)
        return out.reshape(self.tensors[name]).astype(np.float32)

    def masks(self, pruned: np.ndarray) -> dict[str, np.ndarray]:
        """Masks (1 kept, 0 pruned) for a boolean per-group choice."""
        out = {}
        pruned = np.append(pruned, False)  # index -1 (no group) reads this: never pruned
        for name, shape in self.tensors.items():
            ids = self.ids[name]
            out[name] = np.where(pruned[ids], 0, 1).astype(np.float32)
        for g in np.flatnonzero(pruned) if self.removes is not None else ():
            for name, idx in self.removes[g]:
                out[name][idx] = 0
        return {name: m.reshape(self.tensors[name]) for name, m in out.items()}


def gemm_view(layer: PrunableLayer) -> tuple[np.ndarray, np.ndarray, int]:
    """(row, column) of every element of the weight in its GEMM view, and the kernel
    area: a Conv [O, I, kh, kw] is O rows × (I·kh·kw) columns ordered (i, kh, kw)."""
    flat = np.arange(layer.size).reshape(layer.shape)
    view = np.moveaxis(flat, layer.out_axis, 0).reshape(layer.shape[layer.out_axis], -1)
    row, col = np.empty(layer.size, np.int64), np.empty(layer.size, np.int64)
    r, c = np.indices(view.shape)
    row[view.ravel()], col[view.ravel()] = r.ravel(), c.ravel()
    kernel = int(np.prod(layer.shape[2:])) if layer.op in ("Conv", "ConvTranspose") else 1
    return row, col, kernel


class _PerLayer:
    """A structure whose groups stay inside one layer."""

    name = ""

    def layer_ids(self, layer: PrunableLayer, w: np.ndarray) -> tuple[np.ndarray, np.ndarray | None]:
        """Local group id per element, and which local groups are forced out (or None)."""
        raise NotImplementedError

    def plan(self, layers: list[PrunableLayer], weights: dict[str, np.ndarray], **_) -> GroupPlan:
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


class Unstructured(_PerLayer):
    """Each weight is its own group (non-structured sparsity)."""

    name = "unstructured"

    def layer_ids(self, layer, w):
        return np.arange(layer.size), None


class Column(_PerLayer):
    """One GEMM-view column: an (input channel, kh, kw) position across all filters."""

    name = "column"

    def layer_ids(self, layer, w):
        return gemm_view(layer)[1], None


class Block(_PerLayer):
    """R×C tiles of the GEMM view (edge tiles may be smaller)."""

    name = "block"

    def __init__(self, rows: int = 4, cols: int = 4) -> None:
        self.rows, self.cols = rows, cols

    def layer_ids(self, layer, w):
        row, col, _ = gemm_view(layer)
        tiles_per_row = -(-(int(col.max()) + 1) // self.cols)
        return (row // self.rows) * tiles_per_row + col // self.cols, None


class NM(_PerLayer):
    """At most N non-zeros in every M consecutive weights along the input channels (for a
    Conv, at each output channel and kernel position: the layout sparse tensor cores use).
    Each weight is penalized on its own; hard pruning keeps the N largest of each block."""

    name = "nm"

    def __init__(self, n: int = 2, m: int = 4) -> None:
        self.n, self.m = n, m

    def layer_ids(self, layer, w):
        return np.arange(layer.size), None

    def block_ids(self, layer: PrunableLayer) -> np.ndarray:
        row, col, kernel = gemm_view(layer)
        channel, position = col // kernel, col % kernel
        blocks_per_row = -(-(int(channel.max()) + 1) // self.m)
        return (row * kernel + position) * blocks_per_row + channel // self.m

    def plan(self, layers, weights, **kw) -> GroupPlan:
        plan = super().plan(layers, weights)
        plan.nm = (self.n, self.m)
        plan.blocks = {layer.weight: self.block_ids(layer) for layer in layers}
        return plan


class Pattern(_PerLayer):
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


class Filter:
    """An output channel, with everything coupled to it across layers (channels.py)."""

    name = "filter"
    side = "out"

    def plan(self, layers, weights, model=None, shapes=None) -> GroupPlan:
        from .channels import analyze, channel_plan

        if model is None or shapes is None:
            raise OnnxPruneError(f"--structure {self.name} needs the graph and its tensor shapes")
        plan = channel_plan(analyze(model, shapes, layers), layers, self.side)
        if not plan.count:
            why = "; ".join(plan.notes[:3]) or "no Conv/Gemm/MatMul channels to remove"
            raise OnnxPruneError(f"--structure {self.name}: no channel can be removed safely ({why})")
        return plan


class Channel(Filter):
    """An input channel across all filters that read it, coupled across layers."""

    name = "channel"
    side = "in"


NAMES = ("unstructured", "filter", "channel", "column", "pattern", "block", "nm")


def make_structure(name: str, block: str = "4x4", nm: str = "2:4"):
    """The structure object for a CLI/API name, with its --block / --nm setting."""
    if name == "block":
        r, c = _pair(block, "x", "--block", "RxC, e.g. 4x4")
        return Block(r, c)
    if name == "nm":
        n, m = _pair(nm, ":", "--nm", "N:M, e.g. 2:4")
        if n >= m:
            raise OnnxPruneError(f"--nm {nm}: N must be smaller than M")
        return NM(n, m)
    classes = {"unstructured": Unstructured, "filter": Filter, "channel": Channel, "column": Column,
               "pattern": Pattern}
    if name not in classes:
        raise OnnxPruneError(f"structure must be one of {', '.join(NAMES)}, not {name!r}")
    return classes[name]()


def _pair(text: str, sep: str, option: str, want: str) -> tuple[int, int]:
    parts = str(text).lower().split(sep)
    if len(parts) != 2 or not all(p.strip().isdigit() and int(p) > 0 for p in parts):
        raise OnnxPruneError(f"{option} {text!r} is not {want}")
    return int(parts[0]), int(parts[1])
