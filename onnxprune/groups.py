"""What a *group* is. The reweighted penalty and hard pruning act on groups; the
sparsity structure is nothing but the choice of groups. Every structure maps each
weight element to a group id, so penalties, norms and masks are the same code for all.
"""
from __future__ import annotations

import numpy as np

from .layers import PrunableLayer


class Unstructured:
    """Each weight is its own group (non-structured sparsity)."""

    name = "unstructured"

    def group_ids(self, layer: PrunableLayer) -> np.ndarray:
        return np.arange(layer.size, dtype=np.int64).reshape(layer.shape)


STRUCTURES = {s.name: s for s in (Unstructured(),)}


class LayerGroups:
    """A layer's group ids with the per-group sums the penalty and the pruner need."""

    def __init__(self, layer: PrunableLayer, structure) -> None:
        self.layer = layer
        self.ids = structure.group_ids(layer).ravel()
        self.count = int(self.ids.max()) + 1
        self.sizes = np.bincount(self.ids, minlength=self.count)

    def sq_norms(self, w: np.ndarray) -> np.ndarray:
        """‖W_g‖² for each group."""
        flat = w.ravel().astype(np.float64)
        return np.bincount(self.ids, weights=flat * flat, minlength=self.count)

    def expand(self, per_group: np.ndarray) -> np.ndarray:
        """A per-group value spread over the weight's shape."""
        return per_group[self.ids].reshape(self.layer.shape)
