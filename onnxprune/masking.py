"""Hard pruning to exactly the requested rate: keep the highest-norm groups, per layer
(`scope='layer'`) or across all layers (`scope='global'`) with a per-layer floor so
that no layer is wiped out. Rates count weights, so a group weighs as much as it holds.
"""
from __future__ import annotations

import math

import numpy as np

from .errors import OnnxPruneError
from .groups import LayerGroups


def hard_prune(weights: dict[str, np.ndarray], groups: dict[str, LayerGroups], rate: float,
               scope: str = "global", floor: float = 0.1) -> dict[str, np.ndarray]:
    """Masks (1 kept, 0 pruned) keeping `round((1 - rate) · total)` weights."""
    if scope not in ("global", "layer"):
        raise OnnxPruneError(f"scope must be 'global' or 'layer', not {scope!r}")
    keep: dict[str, np.ndarray] = {}
    scores = {}
    for name, g in groups.items():
        scores[name] = g.sq_norms(weights[name]) / g.sizes  # mean square: fair across group sizes
        keep[name] = np.zeros(g.count, bool)
    if scope == "layer":
        for name, g in groups.items():
            _take(scores[name], g.sizes, round((1 - rate) * g.sizes.sum()), keep[name])
    else:
        total = sum(int(g.sizes.sum()) for g in groups.values())
        budget = round((1 - rate) * total)
        for name, g in groups.items():  # the floor: each layer keeps a share of its uniform quota
            reserve = max(1, math.ceil(floor * (1 - rate) * g.sizes.sum()))
            budget -= _take(scores[name], g.sizes, reserve, keep[name], at_least_one=True)
        names = list(groups)
        cand_score = np.concatenate([np.where(keep[n], -np.inf, scores[n]) for n in names])
        cand_size = np.concatenate([groups[n].sizes for n in names])
        chosen = np.zeros(len(cand_score), bool)
        _take(cand_score, cand_size, max(budget, 0), chosen, skip=np.isneginf(cand_score))
        offset = 0
        for n in names:
            keep[n] |= chosen[offset:offset + groups[n].count]
            offset += groups[n].count
    return {name: g.expand(keep[name].astype(np.float32)) for name, g in groups.items()}


def _take(scores: np.ndarray, sizes: np.ndarray, budget: int, keep: np.ndarray,
          at_least_one: bool = False, skip: np.ndarray | None = None) -> int:
    """Mark the best-scoring groups whose sizes fit in `budget` weights; returns weights taken.
    Ties go to the lower index, so results are deterministic."""
    order = np.argsort(-scores, kind="stable")
    if skip is not None:
        order = order[~skip[order]]
    fits = np.cumsum(sizes[order]) <= budget
    if at_least_one and len(order):
        fits[0] = True
    chosen = order[fits] if fits.all() else order[: int(np.argmin(fits))]
    keep[chosen] = True
    return int(sizes[chosen].sum())
