"""Hard pruning to the requested rate: keep the highest-norm groups, per layer
(`scope='layer'`) or across all layers (`scope='global'`) with a per-layer floor so
that no layer is wiped out. Rates count prunable weights, so a group weighs as much as
it holds. Three rules, each a structure's `select` (structures.py): `ranked` for groups
inside one layer (exact rate), `coupled` for channel groups that span layers (to within
half a chunk), `n_of_m` for N:M (its rate is built in: 1 − N/M).
"""
from __future__ import annotations

import math
from typing import TYPE_CHECKING

import numpy as np

from .errors import OnnxPruneError
from .groups import GroupPlan

if TYPE_CHECKING:
    from .channels import ChannelPlan
    from .structures import NMPlan


def mean_square(weights: dict[str, np.ndarray], plan: GroupPlan) -> np.ndarray:
    """Each group's score: its mean square, fair across group sizes."""
    return plan.sq_norms(weights) / np.maximum(plan.sizes(), 1)


def ranked(weights: dict[str, np.ndarray], plan: GroupPlan, rate: float, scope: str = "global",
           floor: float = 0.1, unit_rates: dict[str, float] | None = None) -> dict[str, np.ndarray]:
    """Masks (1 kept, 0 pruned) that keep the best-scoring groups, exactly at `rate`. With
    `unit_rates` (`--layer-rates`: layer name → rate), every layer is pruned alone, at its own
    rate where it has one and at `rate` elsewhere."""
    scores = mean_square(weights, plan)
    sizes = plan.sizes(plan.counted)  # counted weights per group
    forced = plan.forced if plan.forced is not None else np.zeros(plan.count, bool)
    keep = np.zeros(plan.count, bool)
    units = range(len(plan.units))
    unit_total = np.bincount(plan.unit, weights=sizes, minlength=len(plan.units))
    total = int(sizes.sum())
    check_rate(plan, rate)
    scores = np.where(forced, -np.inf, scores)
    if scope == "layer" or unit_rates:
        for u in units:
            sel = np.flatnonzero(plan.unit == u)
            r = (unit_rates or {}).get(plan.units[u], rate)
            _take(scores[sel], sizes[sel], round((1 - r) * unit_total[u]), keep, index=sel, skip=forced[sel])
    else:
        budget = round((1 - rate) * total)
        for u in units:  # the floor: each layer keeps a share of its uniform quota
            sel = np.flatnonzero(plan.unit == u)
            reserve = max(1, math.ceil(floor * (1 - rate) * unit_total[u]))
            budget -= _take(scores[sel], sizes[sel], reserve, keep, index=sel, at_least_one=True, skip=forced[sel])
        _take(scores, sizes, max(budget, 0), keep, skip=keep | forced)
    return plan.masks(~keep)


def check_rate(plan: GroupPlan, rate: float) -> None:
    least = plan.least_rate()
    if rate < least:
        raise OnnxPruneError(f"this structure removes at least {least:.1%} of the weights; ask for --rate ≥ {least:.3f}")


def _take(scores: np.ndarray, sizes: np.ndarray, budget: int, keep: np.ndarray, index: np.ndarray | None = None,
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
    keep[chosen if index is None else index[chosen]] = True
    return int(sizes[chosen].sum())


def coupled(weights: dict[str, np.ndarray], plan: ChannelPlan, rate: float, scope: str = "global",
            floor: float = 0.1, align: int = 1) -> dict[str, np.ndarray]:
    """Masks for channel groups: prune channel groups weakest first, counting exactly what each removes (groups
    overlap: a consumer's column can belong to one channel and its row to another).
    Channels go in chunks, so that every channel space keeps a multiple of `align`
    channels (CPU kernels are fastest on multiples of 8 or 16) and at least one chunk.
    The rate is met to within half a chunk: the chunk that crosses it is taken if that
    lands closer."""
    scores = mean_square(weights, plan)
    counted = {n: np.ones(int(np.prod(plan.tensors[n])), bool) for n in plan.counted}
    cost = {n: plan.cost.get(n, 1.0) for n in counted}  # weights, or MACs per sample
    total = sum(len(c) * cost[n] for n, c in counted.items())
    chunks = []  # (mean score, unit, groups), weakest first within each unit
    for u in range(len(plan.units)):
        members = np.flatnonzero(plan.unit == u)
        members = members[np.argsort(scores[members], kind="stable")]
        n = len(members)
        least = max(1, math.ceil(floor * (1 - rate) * n)) if scope == "global" else n - round(rate * n)
        least = max(align, math.ceil(least / align) * align)
        removable = max(0, n - least)  # so that n - removable is a multiple of align
        start = 0
        while start < removable:
            size = (n - start) % align or align
            chunks.append((float(scores[members[start:start + size]].mean()), u, members[start:start + size]))
            start += size
    pruned = np.zeros(plan.count, bool)
    target = rate * total if scope == "global" else total
    removed = 0
    for _, u, groups in sorted(chunks, key=lambda c: c[0]):
        slices = [(n, idx) for g in groups for n, idx in plan.removes[g] if n in counted]
        gain = sum(int(counted[n][idx].sum()) * cost[n] for n, idx in slices)
        over = removed + gain > target
        if over and removed + gain - target >= target - removed:
            break  # the ranking decides: no weaker-ranked fill-in past the first chunk that overshoots
        for n, idx in slices:
            counted[n][idx] = False
        removed += gain
        pruned[groups] = True
        if over:
            break
    return plan.masks(pruned)


def n_of_m(weights: dict[str, np.ndarray], plan: NMPlan) -> dict[str, np.ndarray]:
    """Keep the N largest magnitudes of every block of M."""
    n, _ = plan.nm
    masks = {}
    for name, blocks in plan.blocks.items():
        mag = np.abs(weights[name].ravel())
        order = np.lexsort((np.arange(len(mag)), -mag, blocks))  # by block, largest first, stable
        sorted_blocks = blocks[order]
        starts = np.flatnonzero(np.r_[True, sorted_blocks[1:] != sorted_blocks[:-1]])
        rank = np.arange(len(order)) - np.repeat(starts, np.diff(np.r_[starts, len(order)]))
        m = np.zeros(len(mag), np.float32)
        m[order[rank < n]] = 1
        masks[name] = m.reshape(plan.tensors[name])
    return masks
