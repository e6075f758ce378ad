"""Task-level fidelity: each output scored in its own terms against the dense model on the same
held-out samples (the text it reads, the objects it finds, the frames it decides), not only by
relative error, which can look small while the task is lost (PP-OCRv4's recognizer at 0.35
relative error read 62.5% of lines as the dense model did). Outputs are samples first.

Every score is a share in [0, 1] that the dense model scores 1.0 on, so a drop is in points.
"""
from __future__ import annotations

import numpy as np
import onnx

from .metrics import VIEWS, detections

SEQUENCE, PIXEL_CLASSES, MASK, FRAMES, DETECTIONS, EMBEDDING = (
    "sequence", "pixel classes", "mask", "frames", "detections", "embedding")
# the headline's name for each kind
HEADLINE = {SEQUENCE: "sequences read identically", PIXEL_CLASSES: "pixel class agreement", MASK: "mask IoU",
            FRAMES: "frame decision agreement", DETECTIONS: "detections matched",
            EMBEDDING: "nearest-neighbour agreement"}
THRESHOLD = 0.5  # a score in [0, 1] decides "yes" above it (VAD frames, mask pixels)
DETECTION_THRESHOLDS = (0.1, 0.25, 0.5)  # the sweep; the headline at 0.25, detectors' usual confidence
MATCH_IOU, NMS_IOU, MAX_DETECTIONS = 0.5, 0.7, 300
MIN_MASK_PIXELS = 64


def _producer(model: onnx.ModelProto, name: str):
    """The node that makes `name`, looked through views (Reshape, Squeeze, …)."""
    producer = {o: n for n in model.graph.node for o in n.output}
    node = producer.get(name)
    while node is not None and node.op_type in VIEWS and len(node.input) == 1:
        node = producer.get(node.input[0])
    return node


def kind_of(model: onnx.ModelProto, name: str, dense: np.ndarray, classes: bool) -> str | None:
    """What task an output serves, judged from the node that makes it and the dense values
    (samples first); None for class scores (top-1 serves) and for outputs without a task metric."""
    if dense.dtype.kind != "f" or not dense.size or classes:
        return None
    node = _producer(model, name)
    if node is not None and node.op_type in ("Softmax", "LogSoftmax"):
        axis = next((a.i for a in node.attribute if a.name == "axis"), -1) % dense.ndim
        if dense.ndim == 3 and axis == 2:
            return SEQUENCE  # [N, T, C]: per-position classes, read greedily (CTC)
        if dense.ndim == 4 and axis == 1:
            return PIXEL_CLASSES  # [N, C, H, W]: segmentation
    unit = dense.min() >= 0 and dense.max() <= 1
    per_sample = dense[0].size if dense.ndim > 1 else 1
    if unit and dense.ndim >= 3 and per_sample >= MIN_MASK_PIXELS and (dense.ndim == 3 or dense.shape[1] == 1):
        return MASK  # [N, 1, H, W] or [N, H, W] probabilities: a text or object map
    if unit and per_sample <= 4:
        return FRAMES  # one or a few probabilities per sample: a decision each
    if detections(dense) is not None:
        return DETECTIONS
    if dense.ndim == 2 and dense.shape[1] >= 8:
        return EMBEDDING  # [N, D] that metrics.class_outputs found made by an embedding head
    return None


def kinds(model: onnx.ModelProto, outputs: dict[str, np.ndarray], classes: frozenset) -> dict[str, str]:
    found = {name: kind_of(model, name, out, name in classes) for name, out in outputs.items()}
    return {k: v for k, v in found.items() if v is not None}


def score(kind: str, dense: np.ndarray, pruned: np.ndarray) -> dict:
    """The task's headline share ('value') and its details, dense vs pruned on the same samples."""
    return _SCORERS[kind](dense.astype(np.float64), pruned.astype(np.float64))


def headline(kind: str, dense: np.ndarray, pruned: np.ndarray, split: str, output: str) -> dict:
    """The run's headline metric from the task: dense 1.0 by construction, pruned its share."""
    details = score(kind, dense, pruned)
    rel = float(np.linalg.norm((pruned.astype(np.float64) - dense).ravel())
                / max(np.linalg.norm(dense.astype(np.float64).ravel()), 1e-12))
    return {"name": HEADLINE[kind], "dense": 1.0, "pruned": details.pop("value"),
            "extra": {**details, "relative_error": rel}, "samples": len(dense), "split": split, "output": output}


# --- sequences (CTC) -----------------------------------------------------------------------------

def greedy_decode(scores: np.ndarray, blank: int = 0) -> list[tuple[int, ...]]:
    """Best-path CTC decoding of [N, T, C] scores: argmax per position, repeats merged, blanks
    dropped (class 0 is the blank in PaddleOCR's and most CTC heads)."""
    best = scores.argmax(-1)
    out = []
    for row in best:
        keep = np.r_[True, row[1:] != row[:-1]] & (row != blank)
        out.append(tuple(int(c) for c in row[keep]))
    return out


def edit_distance(a: tuple, b: tuple) -> int:
    prev = list(range(len(b) + 1))
    for i, x in enumerate(a, 1):
        cur = [i]
        for j, y in enumerate(b, 1):
            cur.append(min(prev[j] + 1, cur[j - 1] + 1, prev[j - 1] + (x != y)))
        prev = cur
    return prev[-1]


def _sequences(dense, pruned):
    d, p = greedy_decode(dense), greedy_decode(pruned)
    chars = sum(len(s) for s in d)
    errors = sum(edit_distance(a, b) for a, b in zip(d, p))
    return {"value": float(np.mean([a == b for a, b in zip(d, p)])),
            "character_agreement": max(0.0, 1 - errors / max(chars, 1)), "samples": len(d)}


# --- maps ----------------------------------------------------------------------------------------

def _pixel_classes(dense, pruned):
    return {"value": float(np.mean(dense.argmax(1) == pruned.argmax(1)))}


def _mask(dense, pruned):
    d, p = dense > THRESHOLD, pruned > THRESHOLD
    union = int((d | p).sum())
    return {"value": float((d & p).sum() / union) if union else 1.0, "threshold": THRESHOLD,
            "dense_pixels": int(d.sum()), "pruned_pixels": int(p.sum())}


def _frames(dense, pruned):
    d, p = dense > THRESHOLD, pruned > THRESHOLD
    return {"value": float(np.mean(d == p)), "threshold": THRESHOLD, "dense_positive": float(d.mean()),
            "pruned_positive": float(p.mean())}


# --- detections ----------------------------------------------------------------------------------

def decode(out: np.ndarray, threshold: float) -> list[tuple[np.ndarray, np.ndarray, np.ndarray]]:
    """Per sample: boxes (xyxy), classes and scores of a YOLO-style output ([N, 4+C, A] or
    [N, A, 4+C]: the first four coordinate slices are cx, cy, w, h; the slices in [0, 1] are class
    scores), over `threshold`, after per-class non-maximum suppression."""
    axis, unit = detections(out)
    rows = np.moveaxis(out, axis, 1).reshape(len(out), out.shape[axis], -1)
    coords, scores = rows[:, ~unit][:, :4], rows[:, unit]
    found = []
    for c, s in zip(coords, scores):
        cls, conf = s.argmax(0), s.max(0)
        keep = np.flatnonzero(conf > threshold)
        keep = keep[np.argsort(-conf[keep])]
        cx, cy, w, h = c[:, keep]
        boxes = np.stack([cx - w / 2, cy - h / 2, cx + w / 2, cy + h / 2], 1)
        chosen = _nms(boxes, cls[keep])
        found.append((boxes[chosen], cls[keep][chosen], conf[keep][chosen]))
    return found


def iou(box: np.ndarray, boxes: np.ndarray) -> np.ndarray:
    lo, hi = np.maximum(box[:2], boxes[:, :2]), np.minimum(box[2:], boxes[:, 2:])
    inter = np.prod(np.clip(hi - lo, 0, None), 1)
    area = lambda b: np.prod(np.clip(b[..., 2:] - b[..., :2], 0, None), -1)  # noqa: E731
    return inter / np.maximum(area(box) + area(boxes) - inter, 1e-12)


def _nms(boxes: np.ndarray, cls: np.ndarray) -> list[int]:
    """Greedy NMS over boxes sorted by score, within each class."""
    chosen: list[int] = []
    for i in range(len(boxes)):
        if len(chosen) >= MAX_DETECTIONS:
            break
        same = [j for j in chosen if cls[j] == cls[i]]
        if not same or iou(boxes[i], boxes[same]).max() < NMS_IOU:
            chosen.append(i)
    return chosen


def matched(dense_found, pruned_found) -> tuple[int, int, int]:
    """(dense detections matched by a pruned one of the same class at IoU ≥ 0.5, dense count,
    pruned count), greedy by the dense model's score."""
    hits = total = extra = 0
    for (db, dc, _), (pb, pc, _) in zip(dense_found, pruned_found):
        free = np.ones(len(pb), bool)
        for box, c in zip(db, dc):
            cand = np.flatnonzero(free & (pc == c))
            if len(cand):
                overlaps = iou(box, pb[cand])
                if overlaps.max() >= MATCH_IOU:
                    free[cand[overlaps.argmax()]] = False
                    hits += 1
        total += len(db)
        extra += len(pb)
    return hits, total, extra


def _detections(dense, pruned):
    sweep = {}
    for t in DETECTION_THRESHOLDS:
        hits, total, found = matched(decode(dense, t), decode(pruned, t))
        sweep[f"{t:g}"] = {"matched": hits, "dense": total, "pruned": found,
                           "share": hits / total if total else None}
    head = sweep[f"{DETECTION_THRESHOLDS[1]:g}"]
    if head["share"] is None:  # nothing found at 0.25: the lowest threshold with detections
        head = next((v for v in sweep.values() if v["share"] is not None), head)
    return {"value": 1.0 if head["share"] is None else head["share"], "by_threshold": sweep, "iou": MATCH_IOU}


# --- embeddings ----------------------------------------------------------------------------------

def _embedding(dense, pruned):
    def unit(x):
        return x / np.maximum(np.linalg.norm(x, axis=1, keepdims=True), 1e-12)
    d, p = unit(dense.reshape(len(dense), -1)), unit(pruned.reshape(len(pruned), -1))
    cosine = float(np.mean(np.sum(d * p, 1)))
    if len(d) < 3:
        return {"value": cosine, "cosine": cosine}

    def nearest(x):
        sim = x @ x.T
        np.fill_diagonal(sim, -np.inf)
        return sim.argmax(1)
    return {"value": float(np.mean(nearest(d) == nearest(p))), "cosine": cosine}


_SCORERS = {SEQUENCE: _sequences, PIXEL_CLASSES: _pixel_classes, MASK: _mask, FRAMES: _frames,
            DETECTIONS: _detections, EMBEDDING: _embedding}
