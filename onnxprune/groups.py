"""What a *group* is. The reweighted penalty and hard pruning act on groups; a sparsity
structure (structures.py) is nothing but a choice of groups. A `GroupPlan` says, for every
tensor the groups touch, each element's penalized group id (-1: not penalized), so penalties,
norms and masks are the same code for every structure. Structures that need more (N:M blocks,
coupled channels) extend it.
"""
from __future__ import annotations

from dataclasses import dataclass, field
from functools import cached_property

import numpy as np

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
    notes: list[str] = field(default_factory=list)  # what the structure left alone, and why
    cost: dict[str, float] = field(default_factory=dict)  # what one element of a counted tensor is worth
    # toward the rate: 1 (a weight) unless the rate counts MACs (then the MACs it does per sample)

    @cached_property
    def penalized(self) -> list[str]:
        """The tensors that carry a group penalty."""
        return [name for name, ids in self.ids.items() if (ids >= 0).any()]

    @cached_property
    def removal_sizes(self) -> np.ndarray:
        """Counted weights each group takes with it."""
        return self.sizes(self.counted)

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
        pruned = np.append(pruned, False)  # index -1 (no group) reads this: never pruned
        return {name: np.where(pruned[self.ids[name]], 0, 1).astype(np.float32).reshape(shape)
                for name, shape in self.tensors.items()}


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
