"""Least-squares reconstruction of what a mask keeps: the start of fine-tuning.

A mask chosen on magnitudes leaves each kept weight as it was, as if the cut ones had never
contributed. Given the layer's inputs on training samples, the kept weights of every output row
can instead be re-fitted so that the layer's output stays as close as possible to the dense
model's (ridge least squares over the row's kept inputs, plus the bias: the mean the cut weights
carried). This is the closed-form core of SparseGPT / OBC with the mask held, and of the channel
reconstruction of He et al. 2017 for structured masks, where a removed filter is an input column
the next layer re-fits without.

Two passes. The first fits every layer on the dense model's inputs (one capture). The second goes
through the layers in stages, in graph order: the inputs of each stage's first layers (those no
other layer of the stage feeds) are captured from the model as the stages before it left it and
fitted to the dense model's outputs (cross-covariance), so they correct what the earlier stages
still miss. Captures run over the samples in small
chunks, so memory holds one chunk's activations and a Gram matrix per layer. Where a scorer on
held-out samples is given, the cut as it was, pass 1 and pass 2 compete and the best is kept.

Layers covered: Conv (any groups, 1-D/2-D/3-D, explicit or auto pads), Gemm (transA = 0) and
MatMul with the weight as second input. Others keep their weights.
"""
from __future__ import annotations

import logging
import time

import numpy as np
import onnx
from onnx import helper

from .data import run_model
from .export import with_weights
from .layers import PrunableLayer
from .plumbing import initializer_map, session, with_outputs

CHUNK = 16  # samples per capture at most: one chunk's activations of every layer are in memory at once
# and at most this many bytes of them (YOLOv8n's layer inputs at 1024×1024: 173 MB per page)
CHUNK_BYTES = 1 << 30
# rows (samples × positions) a layer's statistics draw over all chunks: enough for a Gram matrix of
# its columns to be well estimated, few enough that a wide early layer is not a pass over every pixel
ROWS_PER_COLUMN, MIN_ROWS = 32, 16384
RIDGE = 1e-2  # the ridge, in units of the mean diagonal of the row's Gram matrix (keeps a fit near the data's span)
PASSES = 2
# the second pass re-fits the first layers of each stage to what the stages before it leave
# (PP-OCRv4 rec one-shot at 0.5: 8 stages 85.0% of held-out lines, 16 stages the same at twice the time)
STAGES = 8
stage = logging.getLogger("onnxprune.stage")  # shown in a terminal: on a large model a pass takes minutes


class _Layer:
    """One node's weight seen as rows over its input columns (+1 for the bias)."""

    def __init__(self, node: onnx.NodeProto, shape: tuple[int, ...], has_bias: bool):
        self.node, self.shape, self.has_bias = node, shape, has_bias
        attrs = {a.name: helper.get_attribute_value(a) for a in node.attribute}
        self.attrs = attrs
        if node.op_type == "Conv":
            self.groups = int(attrs.get("group", 1))
            self.cols = int(np.prod(shape[1:]))  # per group
        else:
            self.groups = 1
            self.cols = shape[0] if node.op_type == "MatMul" or not attrs.get("transB", 0) else shape[1]
        self.gram = np.zeros((self.groups, self.cols + 1, self.cols + 1))
        self.cross = np.zeros_like(self.gram)

    def rows_of(self, w: np.ndarray) -> np.ndarray:
        """[groups, rows per group, cols]"""
        if self.node.op_type == "Conv":
            return w.reshape(self.groups, w.shape[0] // self.groups, -1)
        return (w.T if self.node.op_type == "MatMul" or not self.attrs.get("transB", 0) else w)[None]

    def from_rows(self, rows: np.ndarray) -> np.ndarray:
        if self.node.op_type == "Conv":
            return rows.reshape(self.shape)
        rows = rows[0]
        return rows.T if self.node.op_type == "MatMul" or not self.attrs.get("transB", 0) else rows

    def views(self, x: np.ndarray) -> np.ndarray:
        """The layer's input as [N, positions…, cols…] without copying (windows for Conv)."""
        if self.node.op_type == "Conv":
            win = _windows(x, self.shape, self.attrs)  # [N, C, *O, *K]
            spatial = len(self.shape) - 2
            return win.transpose(0, *range(2, 2 + spatial), 1, *range(2 + spatial, 2 + 2 * spatial))
        return x

    def lead(self, view: np.ndarray) -> int:
        """How many leading axes of a view index rows (samples and positions)."""
        return view.ndim - (len(self.shape) - 1 if self.node.op_type == "Conv" else 1)

    def columns(self, view: np.ndarray, rows: np.ndarray) -> np.ndarray:
        """Rows `rows` (flat over samples and positions) of the layer's columns as
        [groups, rows, cols + 1] (a trailing 1 for the bias)."""
        picked = view[np.unravel_index(rows, view.shape[:self.lead(view)])]  # [rows, C, *K] or [rows, features]
        cols = picked.reshape(len(rows), self.groups, -1).transpose(1, 0, 2)
        ones = np.ones(cols.shape[:2] + (1,), cols.dtype)
        return np.concatenate([cols, ones], axis=2)

    def add(self, x_in: np.ndarray, x_ref: np.ndarray, rng: np.random.Generator, chunks: int) -> None:
        """Adds one chunk of samples (`chunks` of them in all) to the statistics: the Gram matrix of
        the inputs this layer gets, and its cross-product with the dense model's inputs."""
        v_in = self.views(x_in)
        total = int(np.prod(v_in.shape[:self.lead(v_in)]))
        cap = -(-max(MIN_ROWS, ROWS_PER_COLUMN * (self.cols + 1)) // chunks)
        rows = np.sort(rng.choice(total, cap, replace=False)) if total > cap else np.arange(total)
        a = self.columns(v_in, rows).astype(np.float64)  # float32 products overflow on large activations
        at = a.transpose(0, 2, 1)
        gram = at @ a
        self.gram += gram
        self.cross += gram if x_ref is x_in else at @ self.columns(self.views(x_ref), rows).astype(np.float64)

    def solve(self, w_dense: np.ndarray, b_dense: np.ndarray | None, w_now: np.ndarray, mask: np.ndarray,
              b_now: np.ndarray | None) -> tuple[np.ndarray, np.ndarray | None]:
        """Kept weights (and the bias) that best reproduce the dense output; cut ones stay 0."""
        dense = self._with_bias(self.rows_of(w_dense), b_dense)
        now = self._with_bias(self.rows_of(w_now * mask), b_now)
        keep = np.concatenate([self.rows_of(mask) != 0, np.full(dense.shape[:2] + (1,), self.has_bias)], axis=2)
        out = now.astype(np.float64)  # rows with nothing kept (a cut filter) keep their bias
        for g in range(self.groups):
            gram, target = self.gram[g], self.cross[g] @ dense[g].T.astype(np.float64)  # [cols+1, rows]
            ridge = RIDGE * max(float(np.mean(np.diag(gram)[:-1])), 1e-12)
            patterns: dict[bytes, list[int]] = {}
            for r in range(dense.shape[1]):
                patterns.setdefault(keep[g, r].tobytes(), []).append(r)
            for key, rows in patterns.items():
                k = keep[g, rows[0]]
                if not k[:-1].any():
                    continue
                a = gram[np.ix_(k, k)] + ridge * np.eye(int(k.sum()))
                rhs = target[k][:, rows] + ridge * now[g][rows][:, k].T.astype(np.float64)
                try:
                    sol = np.linalg.solve(a, rhs)
                except np.linalg.LinAlgError:
                    sol = now[g][rows][:, k].T
                out[g][np.ix_(rows, np.flatnonzero(k))] = sol.T
        if not np.isfinite(out).all():
            return w_now * mask, b_now
        w = self.from_rows(out[..., :-1]).astype(w_now.dtype) * mask
        b = out[..., -1].reshape(-1).astype(b_now.dtype) if self.has_bias else None
        return w, b

    def _with_bias(self, rows: np.ndarray, b: np.ndarray | None) -> np.ndarray:
        col = (b.reshape(rows.shape[0], rows.shape[1], 1) if b is not None
               else np.zeros(rows.shape[:2] + (1,), rows.dtype))
        return np.concatenate([rows, col.astype(rows.dtype)], axis=2)


def _windows(x: np.ndarray, shape: tuple[int, ...], attrs: dict) -> np.ndarray:
    """A Conv's input windows as a view [N, C, *positions, *kernel] (pads applied, strides and
    dilations by slicing)."""
    spatial = len(shape) - 2
    kernel = shape[2:]
    strides = list(attrs.get("strides", [1] * spatial))
    dil = list(attrs.get("dilations", [1] * spatial))
    pads = list(attrs.get("pads", [0] * 2 * spatial))
    auto = attrs.get("auto_pad", b"NOTSET")
    auto = auto.decode() if isinstance(auto, bytes) else auto
    if auto in ("SAME_UPPER", "SAME_LOWER"):
        for i in range(spatial):
            size = x.shape[2 + i]
            out = -(-size // strides[i])
            total = max(0, (out - 1) * strides[i] + (kernel[i] - 1) * dil[i] + 1 - size)
            lo = total // 2 if auto == "SAME_UPPER" else total - total // 2
            pads[i], pads[i + spatial] = lo, total - lo
    elif auto == "VALID":
        pads = [0] * 2 * spatial
    if any(pads):
        x = np.pad(x, [(0, 0), (0, 0)] + [(pads[i], pads[i + spatial]) for i in range(spatial)])
    span = [(k - 1) * d + 1 for k, d in zip(kernel, dil)]
    win = np.lib.stride_tricks.sliding_window_view(x, span, axis=tuple(range(2, 2 + spatial)))
    return win[(slice(None), slice(None)) + tuple(slice(None, None, s) for s in strides)
               + tuple(slice(None, None, d) for d in dil)]


def _entries(model: onnx.ModelProto, group: list) -> list:
    """The layers of `group` whose input does not depend on another layer of `group`: only they
    are re-fitted to what the stages before leave. A layer behind another of its stage would
    correct, against inputs captured before that one was re-fitted, an error the re-fit of that
    one already corrects: the two corrections add up (PP-OCRv4 rec: 0% of lines read after a
    stage of six layers fitted at once), and fitted alone it is what pass 1 made it."""
    names = {node.name for node, _ in group}
    reach: set[str] = set()
    for node in model.graph.node:  # graph order is topological
        if node.name in names or any(i in reach for i in node.input):
            reach.update(node.output)
    return [(node, layer) for node, layer in group if node.input[0] not in reach]


def covered(model: onnx.ModelProto, layers: list[PrunableLayer]) -> list[tuple[onnx.NodeProto, PrunableLayer]]:
    """The layers reconstruction can fit: their node reads the weight as its second input."""
    nodes = {n.name: n for n in model.graph.node}
    inits = initializer_map(model.graph)
    out = []
    for layer in layers:
        node = nodes.get(layer.node)
        if node is None or len(node.input) < 2 or node.input[1] != layer.weight or node.input[0] in inits:
            continue
        attrs = {a.name: helper.get_attribute_value(a) for a in node.attribute}
        if node.op_type == "Conv" or (node.op_type == "MatMul" and len(layer.shape) == 2) or (
                node.op_type == "Gemm" and not attrs.get("transA", 0) and attrs.get("alpha", 1.0) == 1.0
                and attrs.get("beta", 1.0) == 1.0):
            out.append((node, layer))
    return out


def reconstruct(model: onnx.ModelProto, layers: list[PrunableLayer], dense: dict[str, np.ndarray],
                weights: dict[str, np.ndarray], masks: dict[str, np.ndarray], arrays: dict[str, np.ndarray],
                input_names: list[str], rng: np.random.Generator, samples: int = 2048,
                score=None) -> tuple[dict[str, np.ndarray], list]:
    """New values for the kept weights (and biases) of `layers` of `model` (the dense graph, whose
    initializers `dense` holds), starting from `weights` under `masks`; `arrays`: training inputs.
    `score(weights) -> comparable` (higher is better), where given, judges the start and each
    pass, and the best is returned: a refit can lose on samples it did not see (a deep, thin
    network at a high rate). Returns (the changed tensors by name, [(pass, score)] with pass 0 the
    start, the kept one first)."""
    fit = covered(model, layers)
    fit = [(node, layer) for node, layer in fit if layer.weight in masks]
    if not fit:
        return {}, []
    inits = {**{t.name: onnx.numpy_helper.to_array(t) for t in model.graph.initializer}, **dense}
    n = len(arrays[input_names[0]])
    rows = np.sort(rng.permutation(n)[:samples])
    calib = {k: arrays[k][rows] for k in input_names}
    current = dict(weights)
    changed: dict[str, np.ndarray] = {}

    def fit_layers(group, student: dict | None) -> None:
        """Statistics of `group`'s inputs over the samples (the dense model's, and the model with
        weights `student`'s where given), then each layer's kept weights solved."""
        # a layer that reads a graph input takes it from the samples: ORT 1.23 gives a graph input
        # asked back as an output from reused memory (different values run to run)
        wanted = list(dict.fromkeys(node.input[0] for node, _ in group))
        names = [n for n in wanted if n not in calib]
        dense_session = session(with_outputs(model, names, only=True), "the dense model to capture layer inputs") \
            if names else None
        student_session = None if student is None or not names else session(
            with_outputs(with_weights(model, student), names, only=True), "the pruned model to capture layer inputs")
        state = {node.name: _Layer(node, layer.shape, len(node.input) > 2 and node.input[2] in inits)
                 for node, layer in group}
        size = CHUNK
        if dense_session:  # the bytes one sample's captures take decide the chunk
            one = run_model(dense_session, {k: v[:1] for k, v in calib.items()}, input_names, rows_are_samples=True)
            size = int(max(1, min(CHUNK, CHUNK_BYTES // max(sum(a.nbytes for a in one), 1))))
        chunks = -(-len(rows) // size)
        for start in range(0, len(rows), size):
            chunk = {k: v[start:start + size] for k, v in calib.items()}
            given = {n: chunk[n] for n in wanted if n in chunk}
            ref = {**given, **(dict(zip(names, run_model(dense_session, chunk, input_names, rows_are_samples=True)))
                               if dense_session else {})}
            got = ref if student_session is None else {**given, **dict(zip(names, run_model(
                student_session, chunk, input_names, rows_are_samples=True)))}
            for node, layer in group:
                x_ref = ref[node.input[0]].astype(np.float32)
                x_in = got[node.input[0]].astype(np.float32) if student_session is not None else x_ref
                state[node.name].add(x_in, x_ref, rng, chunks)
        for node, layer in group:
            st = state[node.name]
            bias = node.input[2] if st.has_bias else None
            w_now = changed.get(layer.weight, current.get(layer.weight, inits[layer.weight]))
            b_now = changed.get(bias, current.get(bias, inits.get(bias))) if bias else None
            w, b = st.solve(inits[layer.weight], inits[bias] if bias else None, w_now, masks[layer.weight], b_now)
            changed[layer.weight] = w
            if bias:
                changed[bias] = b

    scores = [(0, score(current))] if score else []
    best: dict[str, np.ndarray] = {}
    for p in range(PASSES):
        started = time.perf_counter()
        if p == 0:  # every layer on the dense model's inputs: one capture
            fit_layers(fit, None)
            count = len(fit)
        else:  # in stages, in graph order: a stage fits to the inputs the stages before it leave
            count = 0
            for part in np.array_split(np.arange(len(fit)), min(STAGES, len(fit))):
                entries = _entries(model, [fit[i] for i in part])
                fit_layers(entries, {**current, **changed})
                count += len(entries)
        stage.info("refit: pass %d of %d: the kept weights of %d layers fitted to the dense model's layer outputs on "
                   "%d samples (%.0f s)", p + 1, PASSES, count, len(rows), time.perf_counter() - started)
        if score:
            scores.append((p + 1, score({**current, **changed})))
            if scores[-1][1] >= max(s for _, s in scores):
                best = dict(changed)
    if not score:
        return changed, []
    kept = max(scores, key=lambda ps: (ps[1], ps[0]))
    return best if kept[0] else {}, [kept] + [ps for ps in scores if ps is not kept]
