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
    pruned, dense = pruned.astype(np.float64), dense.astype(np.float64)  # float16 norms overflow
    rel = float(np.linalg.norm((pruned - dense).ravel()) / max(np.linalg.norm(dense.ravel()), 1e-12))
    out = {"relative_error": rel}
    if is_classifier(dense):
        out["top1_agreement"] = float(np.mean(np.argmax(pruned, 1) == np.argmax(dense, 1)))
    return out


def output_fidelity(dense: np.ndarray, pruned: np.ndarray) -> dict:
    """How one output changed, in the terms its kind allows: relative error always; top-1
    agreement for class scores; for scores in [0, 1], how many cross 0.5 before and after."""
    out = fidelity(pruned, dense)
    if dense.size and dense.min() >= 0 and dense.max() <= 1:
        out["scores_over_half"] = {"dense": int((dense > 0.5).sum()), "pruned": int((pruned > 0.5).sum())}
    return out


def drop_points(m: dict) -> float:
    """What the pruned model lost, in points: of accuracy or top-1 agreement (percent), or of
    relative error (percent) for outputs without classes."""
    if m["name"] == "relative error":
        return 100 * (m["pruned"] - m["dense"])
    return 100 * (m["dense"] - m["pruned"])


def collapse(dense: np.ndarray, pruned: np.ndarray) -> str | None:
    """Why a pruned output looks collapsed (the model is broken, whatever its loss said), or None:
    top-1 agreement no better than chance given how often each model picks each class; scores in
    [0, 1] that no longer cross 0.5 where the dense model's do; an output no closer to the dense
    one than zeros are."""
    dense, pruned = dense.astype(np.float64), pruned.astype(np.float64)
    unit = bool(dense.size) and dense.min() >= 0 and dense.max() <= 1
    # [N, C] logits or softmax rows are classes; independent sigmoid scores in [0, 1] are not
    if is_classifier(dense) and (not unit or np.allclose(dense.sum(1), 1, atol=1e-3)):
        if len(dense) >= 10:
            d, p = np.argmax(dense, 1), np.argmax(pruned, 1)
            c = dense.shape[1]
            counts_d, counts_p = np.bincount(d, minlength=c), np.bincount(p, minlength=c)
            chance = float(counts_d @ counts_p) / len(d) ** 2
            agree = float(np.mean(d == p))
            # a dense model that itself puts most samples in one class (noise inputs) says nothing
            if agree < 0.9 and agree <= 1.25 * chance and counts_d.max() / len(d) < 0.8:
                return (f"top-1 agreement {agree:.0%} is what chance gives ({chance:.0%}); the pruned model puts "
                        f"{counts_p.max() / len(p):.0%} of samples in one class")
    elif unit:
        high_d, high_p = int((dense > 0.5).sum()), int((pruned > 0.5).sum())
        if high_d >= 10 and high_p < 0.1 * high_d:
            return f"{high_p} scores above 0.5 where the dense model has {high_d}"
    err = fidelity(pruned, dense)["relative_error"]
    if err >= 1:
        return f"relative error {err:.3g}: the output is no closer to the dense one than zeros are"
    return None


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
