"""Least-squares reconstruction of what a mask keeps: the start of fine-tuning.

A mask chosen on magnitudes leaves each kept weight as it was, as if the cut ones had never
contributed. Given the layer's inputs on training samples, the kept weights of every output row
can instead be re-fitted so that the layer's output stays as close as possible to the dense
model's (ridge least squares over the row's kept inputs, plus the bias: the mean the cut weights
carried). This is the closed-form core of SparseGPT / OBC with the mask held, and of the channel
reconstruction of He et al. 2017 for structured masks, where a removed filter is an input column
the next layer re-fits without.

Two passes. The first fits every layer on the dense model's inputs. The second captures each
layer's inputs from the model as the first pass left it and fits to the dense model's outputs
(cross-covariance), so a later layer corrects what the earlier ones still miss. Every layer's
statistics come from one forward pass of each model over the samples, in small chunks, so memory
holds one chunk's activations and a Gram matrix per layer.

Layers covered: Conv (any groups, 1-D/2-D/3-D, explicit or auto pads), Gemm (transA = 0) and
MatMul with the weight as second input. Others keep their weights.
"""
from __future__ import annotations

import numpy as np
import onnx
from onnx import helper

from .data import run_model
from .export import with_weights
from .layers import PrunableLayer
from .plumbing import initializer_map, session, with_outputs

CHUNK = 16  # samples per capture: one chunk's activations of every layer are in memory at once
BUDGET = 2 ** 24  # values of one chunk's columns a layer's statistics use, rows sampled beyond (128 MB in float64)
RIDGE = 1e-2  # the ridge, in units of the mean diagonal of the row's Gram matrix (keeps a fit near the data's span)
PASSES = 2


class _Layer:
    """One node's weight seen as rows over its input columns (+1 for the bias)."""

    def __init__(self, node: onnx.NodeProto, layer: PrunableLayer, shape: tuple[int, ...], has_bias: bool):
        self.node, self.layer, self.shape, self.has_bias = node, layer, shape, has_bias
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

    def columns(self, x: np.ndarray) -> np.ndarray:
        """The layer's input as [groups, rows, cols + 1] (im2col for Conv, a trailing 1 for the bias)."""
        if self.node.op_type == "Conv":
            cols = _im2col(x, self.shape, self.attrs)
        else:
            cols = x.reshape(-1, x.shape[-1])[None]
        ones = np.ones(cols.shape[:2] + (1,), cols.dtype)
        return np.concatenate([cols, ones], axis=2)

    def add(self, x_in: np.ndarray, x_ref: np.ndarray, rng: np.random.Generator) -> None:
        a, b = self.columns(x_in), self.columns(x_ref) if x_ref is not x_in else None
        cap = max(256, BUDGET // (a.shape[0] * a.shape[2]))
        if a.shape[1] > cap:
            pick = np.sort(rng.choice(a.shape[1], cap, replace=False))
            a = a[:, pick]
            b = b[:, pick] if b is not None else None
        a64 = a.astype(np.float64)
        at = a64.transpose(0, 2, 1)
        gram = at @ a64
        self.gram += gram
        self.cross += gram if b is None else at @ b.astype(np.float64)

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


def _im2col(x: np.ndarray, shape: tuple[int, ...], attrs: dict) -> np.ndarray:
    """[N, C, *S] → [groups, N·positions, C/groups·prod(kernel)], in the weight's (C, *kernel) order."""
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
    x = np.pad(x, [(0, 0), (0, 0)] + [(pads[i], pads[i + spatial]) for i in range(spatial)])
    span = [(k - 1) * d + 1 for k, d in zip(kernel, dil)]
    win = np.lib.stride_tricks.sliding_window_view(x, span, axis=tuple(range(2, 2 + spatial)))
    win = win[(slice(None), slice(None)) + tuple(slice(None, None, s) for s in strides)
              + tuple(slice(None, None, d) for d in dil)]
    n, c = x.shape[:2]
    positions = int(np.prod(win.shape[2:2 + spatial]))
    # [N, C, *O, *K] → [N, *O, C, *K] → [N·O, groups, C/g·K]
    order = [0, *range(2, 2 + spatial), 1, *range(2 + spatial, 2 + 2 * spatial)]
    groups = c // shape[1]
    cols = np.ascontiguousarray(win.transpose(order)).reshape(n * positions, groups, -1)
    return cols.transpose(1, 0, 2)


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
                input_names: list[str], rng: np.random.Generator, samples: int = 2048) -> dict[str, np.ndarray]:
    """New values for the kept weights (and biases) of `layers` of `model` (the dense graph, whose
    initializers `dense` holds), starting from `weights` under `masks`; `arrays`: training inputs.
    Returns the changed tensors by name."""
    fit = covered(model, layers)
    fit = [(node, layer) for node, layer in fit if layer.weight in masks]
    if not fit:
        return {}
    inits = {**{t.name: onnx.numpy_helper.to_array(t) for t in model.graph.initializer}, **dense}
    n = len(arrays[input_names[0]])
    rows = np.sort(rng.permutation(n)[:samples])
    calib = {k: arrays[k][rows] for k in input_names}
    names = list(dict.fromkeys(node.input[0] for node, _ in fit))
    dense_session = session(with_outputs(model, names, only=True), "the dense model to capture layer inputs")
    current = {k: v for k, v in weights.items()}
    changed: dict[str, np.ndarray] = {}
    for p in range(PASSES):
        state = {node.name: _Layer(node, layer, layer.shape, len(node.input) > 2 and node.input[2] in inits)
                 for node, layer in fit}
        student = None if p == 0 else session(
            with_outputs(with_weights(model, {**current, **changed}), names, only=True),
            "the pruned model to capture layer inputs")
        for start in range(0, len(rows), CHUNK):
            chunk = {k: v[start:start + CHUNK] for k, v in calib.items()}
            ref = dict(zip(names, run_model(dense_session, chunk, input_names, rows_are_samples=True)))
            got = ref if student is None else dict(zip(names, run_model(student, chunk, input_names,
                                                                        rows_are_samples=True)))
            for node, layer in fit:
                x_ref = ref[node.input[0]].astype(np.float32)
                x_in = got[node.input[0]].astype(np.float32) if student is not None else x_ref
                state[node.name].add(x_in, x_ref, rng)
        for node, layer in fit:
            st = state[node.name]
            bias = node.input[2] if st.has_bias else None
            w_now = changed.get(layer.weight, current.get(layer.weight, inits[layer.weight]))
            b_now = changed.get(bias, current.get(bias, inits.get(bias))) if bias else None
            w, b = st.solve(inits[layer.weight], inits[bias] if bias else None, w_now, masks[layer.weight], b_now)
            changed[layer.weight] = w
            if bias:
                changed[bias] = b
    return changed
