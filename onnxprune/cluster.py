"""Few-bit weight clustering: each layer's surviving weights share a codebook of 2^K values.
Entry 0 is 0.0 (the pruned weights, which stay exactly zero); the other 2^K − 1 entries are
fitted to the surviving weights by 1-D k-means and refined during fine-tuning. The written
graph stores codes and the codebook (`storage.py`), decoded with Gather.
"""
from __future__ import annotations

import numpy as np


def fit(values: np.ndarray, bits: int, iterations: int = 30) -> np.ndarray:
    """A codebook of 2^bits float32 entries (entry 0 = 0.0) for the non-zero `values`: k-means
    from a linear spread over their range (linear initialisation keeps the rare large weights,
    which matter most, their own centroids)."""
    k = 2 ** bits - 1
    v = np.sort(values[values != 0].astype(np.float64).ravel())
    if v.size == 0:
        return np.zeros(k + 1, np.float32)
    centroids = np.linspace(v[0], v[-1], k)
    for _ in range(iterations):
        new = _means(v, centroids)
        if np.allclose(new, centroids, rtol=0, atol=1e-12):
            break
        centroids = new
    return np.concatenate([[0.0], centroids]).astype(np.float32)


def snap(w: np.ndarray, mask: np.ndarray, book: np.ndarray) -> np.ndarray:
    """Each kept weight replaced by its nearest non-zero codebook entry; pruned ones are 0."""
    idx = nearest(w, book[1:]) + 1
    return np.where(mask != 0, book[idx], np.float32(0)).astype(np.float32)


def refine(w: np.ndarray, mask: np.ndarray, book: np.ndarray) -> np.ndarray:
    """One k-means step on the fine-tuned (latent) weights: each entry moves to the mean of the
    weights it now serves, so the codebook follows training (the entries' gradient, in effect)."""
    kept = w[mask != 0].astype(np.float64)
    if kept.size == 0:
        return book
    return np.concatenate([[0.0], _means(np.sort(kept), book[1:].astype(np.float64))]).astype(np.float32)


def nearest(w: np.ndarray, centroids: np.ndarray) -> np.ndarray:
    order = np.argsort(centroids, kind="stable")
    c = centroids[order]
    cut = np.searchsorted((c[1:] + c[:-1]) / 2, w, side="left")
    return order[cut]


def _means(sorted_values: np.ndarray, centroids: np.ndarray) -> np.ndarray:
    """Means of the values nearest each centroid; an empty cluster keeps its centroid."""
    idx = nearest(sorted_values, centroids)
    sums = np.bincount(idx, weights=sorted_values, minlength=len(centroids))
    counts = np.bincount(idx, minlength=len(centroids))
    return np.where(counts > 0, sums / np.maximum(counts, 1), centroids)


class Codebooks:
    """Clustering's quantizer for fine-tuning (`schedule.finetune`): one codebook per weight,
    fitted when fine-tuning starts and refined as the weights move."""

    def __init__(self, names: list[str], bits: int) -> None:
        self.names, self.bits = list(names), bits
        self.books: dict[str, np.ndarray] = {}
        self.label = f"{bits}-bit clusters"

    def start(self, weights: dict[str, np.ndarray], masks) -> None:
        for n in self.names:
            if n in weights:
                self.books[n] = fit(weights[n][masks[n] != 0], self.bits)

    def refine(self, name: str, w: np.ndarray, mask: np.ndarray) -> None:
        self.books[name] = refine(w, mask, self.books[name])

    def __call__(self, name: str, w: np.ndarray, mask: np.ndarray) -> np.ndarray:
        return snap(w, mask, self.books[name])
