"""How the dense and the pruned model are scored on the same samples: accuracy with labels,
otherwise fidelity to the dense model (top-1 agreement, relative error)."""
from __future__ import annotations

import numpy as np


def is_classifier(output: np.ndarray) -> bool:
    """[N, C] float scores with C ≥ 2: compared by top-1 and distilled with KL on softmax."""
    return output.ndim == 2 and output.shape[1] >= 2 and output.dtype.kind == "f"


def softmax(x: np.ndarray) -> np.ndarray:
    z = x - x.max(axis=1, keepdims=True)
    e = np.exp(z)
    return (e / e.sum(axis=1, keepdims=True)).astype(np.float32)


def accuracy(scores: np.ndarray, labels: np.ndarray) -> float:
    return float(np.mean(np.argmax(scores, axis=1) == labels))


def fidelity(pruned: np.ndarray, dense: np.ndarray) -> dict[str, float]:
    """How closely the pruned model reproduces the dense one on the same inputs."""
    rel = float(np.linalg.norm((pruned - dense).ravel()) / max(np.linalg.norm(dense.ravel()), 1e-12))
    out = {"relative_error": rel}
    if is_classifier(dense):
        out["top1_agreement"] = float(np.mean(np.argmax(pruned, 1) == np.argmax(dense, 1)))
    return out


def metric(output: str, labels: np.ndarray | None, dense: np.ndarray, pruned: np.ndarray, split: str) -> dict:
    """The headline metric of `output` on the evaluation split, dense vs pruned."""
    if labels is not None:
        m = {"name": "accuracy", "dense": accuracy(dense, labels), "pruned": accuracy(pruned, labels),
             "extra": {"top-1 agreement": fidelity(pruned, dense).get("top1_agreement", float("nan"))}}
    else:
        f = fidelity(pruned, dense)
        if "top1_agreement" in f:
            m = {"name": "top-1 agreement", "dense": 1.0, "pruned": f["top1_agreement"],
                 "extra": {"relative error": f["relative_error"]}}
        else:  # lower is better: ‖pruned − dense‖ / ‖dense‖ on the same inputs
            m = {"name": "relative error", "dense": 0.0, "pruned": f["relative_error"]}
    m.update({"samples": len(dense), "split": split, "output": output})
    return m
