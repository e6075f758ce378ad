"""How the dense and the pruned model are scored on the same samples: accuracy with labels,
otherwise fidelity to the dense model (top-1 agreement, relative error)."""
from __future__ import annotations

import numpy as np
import onnx


def is_classifier(output: np.ndarray) -> bool:
    """[N, C] float scores with C ≥ 2: compared by top-1 and distilled with KL on softmax."""
    return output.ndim == 2 and output.shape[1] >= 2 and output.dtype.kind == "f"


MIN_JUDGED = 10  # samples below which top-1 agreement cannot be told from chance
# ops that end an embedding (pooled or normalized features), never class scores
EMBEDDING_HEADS = {"Div", "LpNormalization", "ReduceSum", "ReduceL2", "LayerNormalization"}
VIEWS = {"Identity", "Reshape", "Flatten", "Squeeze", "Unsqueeze", "Cast", "Concat"}


def class_outputs(model: onnx.ModelProto, outputs: dict[str, np.ndarray]) -> set[str]:
    """The outputs that hold class scores: [N, C] floats not made by an op that ends an
    embedding (a sentence encoder's mean-pooled, normalized vector is [N, C] too, and its
    argmax means nothing)."""
    producer = {o: n for n in model.graph.node for o in n.output}
    found = set()
    for name, out in outputs.items():
        node = producer.get(name)
        while node is not None and node.op_type in VIEWS and len(node.input) >= 1 and (
                node.op_type != "Concat" or len(node.input) == 1):
            node = producer.get(node.input[0])
        if is_classifier(out) and (node is None or node.op_type not in EMBEDDING_HEADS):
            found.add(name)
    return found


def softmax(x: np.ndarray) -> np.ndarray:
    z = x - x.max(axis=1, keepdims=True)
    e = np.exp(z)
    return (e / e.sum(axis=1, keepdims=True)).astype(np.float32)


def accuracy(scores: np.ndarray, labels: np.ndarray) -> float:
    return float(np.mean(np.argmax(scores, axis=1) == labels))


def fidelity(pruned: np.ndarray, dense: np.ndarray, classes: bool | None = None) -> dict[str, float]:
    """How closely the pruned model reproduces the dense one on the same inputs. `classes`: the
    output holds class scores (None: judged by its shape alone)."""
    pruned, dense = pruned.astype(np.float64), dense.astype(np.float64)  # float16 norms overflow
    rel = float(np.linalg.norm((pruned - dense).ravel()) / max(np.linalg.norm(dense.ravel()), 1e-12))
    out = {"relative_error": rel}
    if (is_classifier(dense) if classes is None else classes) and one_class(dense) is None:
        out["top1_agreement"] = float(np.mean(np.argmax(pruned, 1) == np.argmax(dense, 1)))
    return out


def one_class(dense: np.ndarray) -> int | None:
    """The class a classifier picks for every one of several samples (inputs unlike its training
    data can do that), or None. Top-1 agreement then scores a constant model 100%: it measures
    nothing, and fidelity is judged by relative error instead."""
    if dense.ndim != 2 or len(dense) < 2:
        return None
    top = np.argmax(dense, 1)
    return int(top[0]) if (top == top[0]).all() else None


def detections(dense: np.ndarray) -> tuple[int, np.ndarray] | None:
    """A detector's output ([N, 4+C, A] as YOLOv8 writes it, or [N, A, 5+C]): (axis, mask) where
    `mask` marks the slices along `axis` that are scores in [0, 1]; the others are coordinates.
    None when no short axis splits the output that way."""
    for axis in sorted(range(1, dense.ndim), key=lambda a: dense.shape[a]):
        if not 2 <= dense.shape[axis] <= 1024 or dense.shape[axis] * 4 > dense.size // max(len(dense), 1):
            continue
        rest = tuple(a for a in range(dense.ndim) if a != axis)
        unit = (dense.min(axis=rest) >= 0) & (dense.max(axis=rest) <= 1)
        if unit.any() and not unit.all():
            return axis, unit
    return None


def score_counts(dense: np.ndarray, pruned: np.ndarray) -> dict:
    """How many scores cross the threshold before and after: 0.5, or a detector's usual 0.25
    when the dense model has fewer than 10 over 0.5."""
    threshold = 0.5 if (dense > 0.5).sum() >= 10 else 0.25
    return {"threshold": threshold, "dense": int((dense > threshold).sum()), "pruned": int((pruned > threshold).sum())}


def output_fidelity(dense: np.ndarray, pruned: np.ndarray, classes: bool | None = None) -> dict:
    """How one output changed, in the terms its kind allows: relative error always; top-1
    agreement for class scores; for scores in [0, 1], how many cross the threshold before and
    after; a detector's scores and coordinates apart."""
    out = fidelity(pruned, dense, classes)
    if dense.size and dense.min() >= 0 and dense.max() <= 1:
        out["scores_over_threshold"] = score_counts(dense, pruned)
    elif (split := detections(dense)) is not None:
        axis, unit = split
        scores, coords = np.compress(unit, dense, axis), np.compress(~unit, dense, axis)
        out["scores_over_threshold"] = score_counts(scores, np.compress(unit, pruned, axis))
        out["coordinates_relative_error"] = fidelity(np.compress(~unit, pruned, axis), coords)["relative_error"]
        out["scores_relative_error"] = fidelity(np.compress(unit, pruned, axis), scores)["relative_error"]
    return out


def drop_points(m: dict) -> float:
    """What the pruned model lost, in points: of accuracy or top-1 agreement (percent), or of
    relative error (percent) for outputs without classes."""
    # rounded: 100·(0.9875 − 0.9825) is 0.5000000000000004, which a budget of 0.5 must admit
    if m["name"] == "relative error":
        return round(100 * (m["pruned"] - m["dense"]), 9)
    return round(100 * (m["dense"] - m["pruned"]), 9)


def collapse(dense: np.ndarray, pruned: np.ndarray, classes: bool | None = None) -> str | None:
    """Why a pruned output looks collapsed (the model is broken, whatever its loss said), or None:
    top-1 agreement no better than chance given how often each model picks each class; scores in
    [0, 1] that no longer cross 0.5 where the dense model's do; an output no closer to the dense
    one than zeros are."""
    dense, pruned = dense.astype(np.float64), pruned.astype(np.float64)
    unit = bool(dense.size) and dense.min() >= 0 and dense.max() <= 1
    # [N, C] logits or softmax rows are classes; independent sigmoid scores in [0, 1] are not
    classes = is_classifier(dense) if classes is None else classes
    if classes and (not unit or np.allclose(dense.sum(1), 1, atol=1e-3)):
        if len(dense) >= MIN_JUDGED:
            d, p = np.argmax(dense, 1), np.argmax(pruned, 1)
            c = dense.shape[1]
            counts_d, counts_p = np.bincount(d, minlength=c), np.bincount(p, minlength=c)
            chance = float(counts_d @ counts_p) / len(d) ** 2
            agree = float(np.mean(d == p))
            # a dense model that itself puts most samples in one class (noise inputs) says nothing
            noise = 2 * np.sqrt(chance * (1 - chance) / len(d))  # two standard errors of agreement by chance
            if agree < 0.9 and agree <= 1.25 * chance + noise and counts_d.max() / len(d) < 0.8:
                return (f"top-1 agreement {agree:.0%} is what chance gives ({chance:.0%}); the pruned model puts "
                        f"{counts_p.max() / len(p):.0%} of samples in one class")
    elif unit or (split := detections(dense)) is not None:
        if not unit:  # a detector: its scores, apart from its coordinates
            dense, pruned = np.compress(split[1], dense, split[0]), np.compress(split[1], pruned, split[0])
        counts = score_counts(dense, pruned)
        if counts["dense"] >= 10 and counts["pruned"] < 0.1 * counts["dense"]:
            return (f"{counts['pruned']} scores above {counts['threshold']:g} where the dense model has "
                    f"{counts['dense']}" + ("" if unit else " (detections lost)"))
    err = fidelity(pruned, dense)["relative_error"]
    if err >= 1:
        return f"relative error {err:.3g}: the output is no closer to the dense one than zeros are"
    return None


def metric(output: str, labels: np.ndarray | None, dense: np.ndarray, pruned: np.ndarray, split: str,
           classes: bool | None = None) -> dict:
    """The headline metric of `output` on the evaluation split, dense vs pruned."""
    if labels is not None:
        m = {"name": "accuracy", "dense": accuracy(dense, labels), "pruned": accuracy(pruned, labels),
             "extra": {"top1_agreement": fidelity(pruned, dense).get("top1_agreement", float("nan"))}}
    else:
        f = fidelity(pruned, dense, classes)
        if "top1_agreement" in f:
            m = {"name": "top-1 agreement", "dense": 1.0, "pruned": f["top1_agreement"],
                 "extra": {"relative_error": f["relative_error"]}}
        else:  # lower is better: ‖pruned − dense‖ / ‖dense‖ on the same inputs
            m = {"name": "relative error", "dense": 0.0, "pruned": f["relative_error"]}
            if (is_classifier(dense) if classes is None else classes) and (k := one_class(dense)) is not None:
                m["note"] = (f"the dense model picks class {k} for all {len(dense)} evaluation samples of {output}, "
                             "so top-1 agreement would score a constant model 100%; the headline is relative error "
                             "(samples like the model's real inputs make agreement meaningful)")
    m.update({"samples": len(dense), "split": split, "output": output})
    return m
