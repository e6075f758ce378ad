"""The training step as one plain ONNX graph, run by whatever ONNX Runtime is installed.

`Trainer(graph, trainable, frozen, …)` takes the training graph (the user's graph with masks,
penalty and loss blocks; outputs loss, task loss, penalty) and appends to it the gradient of the
loss with respect to every trainable tensor (`autodiff.backward`) and an AdamW update of each, so
one `session.run` is one optimizer step:

    inputs:  the data and targets, every trainable W with its moments m and v, the frozen tensors
             (masks, penalty coefficients, quantization corrections), the step size and the
             second-moment correction of this step
    outputs: loss, task loss, penalty, and the new W, m and v

Parameters and optimizer state live in ONNX Runtime's own buffers (OrtValues) between steps, never
round-tripped through numpy: two sets of state buffers and two IOBindings, one reading the first
set and writing the second and one the reverse, swapped after every step. Frozen tensors are bound
to both and rewritten in place between steps, so one graph serves every phase (dense, reweighted,
masked fine-tuning).
"""
from __future__ import annotations

import io
from pathlib import Path

import numpy as np
import onnx
import onnxruntime as ort
from onnx import helper, numpy_helper

from . import autodiff, device
from .errors import OnnxPruneError
from .losses import LOSS, PENALTY, TASK_LOSS
from .plumbing import first_line, serialized, session_options, tensor_shapes

BETAS, EPS = (0.9, 0.999), 1e-8  # PyTorch's AdamW defaults (no weight decay: the penalty is the regularizer)
STEP_SIZE, V_CORRECTION = "onnxprune_adam_step_size", "onnxprune_adam_v_correction"


def _moment(w: str, which: str) -> str:
    return f"{w}__onnxprune_adam_{which}"


def _new(name: str) -> str:
    return f"{name}__onnxprune_next"


def grad_name(w: str) -> str:
    return f"{w}__onnxprune_grad"


def build_step(graph: onnx.ModelProto, loss: str, trainable: list[str], frozen: list[str],
               shapes: dict[str, tuple[int, ...]], update: bool = True) -> tuple[onnx.ModelProto, list[str]]:
    """The step graph, and the trainable tensors the loss depends on (the others are left alone).
    Without `update`, the graph stops at the gradients (outputs `grad_name(w)`), for evaluation."""
    model = onnx.ModelProto()
    model.CopyFrom(graph)
    g = model.graph
    inits = {t.name: t for t in g.initializer}
    em, grads = autodiff.backward(model, loss, trainable, shapes)
    trained = [w for w in trainable if grads[w] is not None]
    g.node.extend(em.nodes)
    g.initializer.extend(em.consts)
    model = autodiff.expand_private(model)  # fused nodes whose rule was used become primitives
    g = model.graph
    f32 = onnx.TensorProto.FLOAT

    def scalar(value: float, name: str) -> str:
        g.initializer.append(numpy_helper.from_array(np.array(value, np.float32), name))
        return name

    if not update:
        for w in trained:
            g.node.append(helper.make_node("Identity", [grads[w]], [grad_name(w)], name=grad_name(w)))
            g.output.append(helper.make_tensor_value_info(grad_name(w), f32, None))
        state = list(trainable) + list(frozen)
        _state_as_inputs(g, state, inits)
        return model, trained
    b1, b2, eps = scalar(1 - BETAS[0], "onnxprune_adam_1mb1"), scalar(1 - BETAS[1], "onnxprune_adam_1mb2"), \
        scalar(EPS, "onnxprune_adam_eps")
    # the two scalars come in as [1] (ORT 1.19 makes an OrtValue of a 0-d array [1]) and are read as 0-d
    g.input.extend([helper.make_tensor_value_info(STEP_SIZE, f32, [1]),
                    helper.make_tensor_value_info(V_CORRECTION, f32, [1])])
    g.initializer.append(numpy_helper.from_array(np.zeros(0, np.int64), "onnxprune_adam_scalar"))
    for name in (STEP_SIZE, V_CORRECTION):
        g.node.append(helper.make_node("Reshape", [name, "onnxprune_adam_scalar"], [f"{name}_0d"], name=f"{name}_0d"))
    outputs = []
    for w in trained:
        m, v, dw = _moment(w, "m"), _moment(w, "v"), grads[w]
        p = f"onnxprune_adam/{w}"

        def node(op, ins, out):
            g.node.append(helper.make_node(op, ins, [out], name=out))
            return out
        # m ← m + (1−β1)(g − m); v ← v + (1−β2)(g² − v); W ← W − step·m / (√(v·c2) + ε)
        m_new = node("Add", [m, node("Mul", [node("Sub", [dw, m], f"{p}/gm"), b1], f"{p}/gm1")], _new(m))
        sq = node("Mul", [dw, dw], f"{p}/g2")
        v_new = node("Add", [v, node("Mul", [node("Sub", [sq, v], f"{p}/g2v"), b2], f"{p}/g2v1")], _new(v))
        den = node("Add", [node("Sqrt", [node("Mul", [v_new, f"{V_CORRECTION}_0d"], f"{p}/vc")], f"{p}/sqrt"), eps],
                   f"{p}/den")
        upd = node("Mul", [node("Div", [m_new, den], f"{p}/ratio"), f"{STEP_SIZE}_0d"], f"{p}/upd")
        node("Sub", [w, upd], _new(w))
        outputs += [_new(w), _new(m), _new(v)]
    # state and frozen tensors become inputs; the moments start at zero
    state = [t for w in trained for t in (w, _moment(w, "m"), _moment(w, "v"))] + \
        [w for w in trainable if w not in trained] + list(frozen)
    _state_as_inputs(g, state, inits)
    # the losses leave as [1]: preallocated outputs, whose 0-d form ORT 1.19 reads as [1]
    shape1 = "onnxprune_step_shape1"
    g.initializer.append(numpy_helper.from_array(np.array([1], np.int64), shape1))
    del g.output[:]
    for name in (LOSS, TASK_LOSS, PENALTY):
        g.node.append(helper.make_node("Reshape", [name, shape1], [_new(name)], name=_new(name)))
        outputs.append(_new(name))
    for name in outputs:
        g.output.append(helper.make_tensor_value_info(name, f32, None))
    return model, trained


def _state_as_inputs(g: onnx.GraphProto, state: list[str], inits: dict) -> None:
    """The state tensors (initializers, or moments shaped as their weight) become graph inputs."""
    kept = [t for t in g.initializer if t.name not in set(state)]
    for name in state:
        like = inits[name] if name in inits else inits[name.split("__onnxprune_adam_")[0]]
        g.input.append(helper.make_tensor_value_info(name, onnx.TensorProto.FLOAT, list(like.dims)))
    del g.initializer[:]
    g.initializer.extend(kept)


class Trainer:
    """A training graph's step graph in an ONNX Runtime session, and the step loop's primitives:
    `step(feed)`, `get`/`set`/`has` of any trainable or frozen tensor, `set_learning_rate`, and
    `save`/load of the whole state (a checkpoint) for --resume."""

    def __init__(self, graph: onnx.ModelProto, trainable: list[str], frozen: list[str], workdir: Path,
                 learning_rate: float, threads: int | None = None, checkpoint: Path | None = None,
                 probe: dict[str, np.ndarray] | None = None) -> None:
        """`probe`: one full training batch (inputs and targets); the step graph is built for the
        tensor shapes it gives (training batches are always full)."""
        if probe is None:
            raise ValueError("the step graph is built for the shapes of a probe batch")
        inits = {t.name: numpy_helper.to_array(t) for t in graph.graph.initializer
                 if t.name in set(trainable) | set(frozen)}
        shapes = tensor_shapes(autodiff.expand_private(graph), probe)
        step_graph, self.trained = build_step(graph, LOSS, trainable, frozen, shapes)
        workdir.mkdir(parents=True, exist_ok=True)
        onnx.save_model(step_graph, workdir / "step_graph.onnx")  # for whoever wants to look at it (--workdir)
        self._build = (graph, trainable, frozen, shapes, threads)
        self._eval = None
        self.session = _session(step_graph, threads)
        kind, _, idx = device.current().partition(":")
        self._where = (kind, int(idx or 0))
        state = {**inits}
        for w in self.trained:
            state[_moment(w, "m")] = np.zeros_like(inits[w])
            state[_moment(w, "v")] = np.zeros_like(inits[w])
        self.t = 0
        if checkpoint is not None:
            state, self.t = _load(checkpoint, state)
        self.lr = learning_rate
        self._cycle = [n for w in self.trained for n in (w, _moment(w, "m"), _moment(w, "v"))]
        # two buffers per cycled tensor; frozen and untrained tensors have one, bound to both sides
        self._values = {n: [self._ortvalue(state[n]), self._ortvalue(state[n])] for n in self._cycle}
        self._fixed = {n: self._ortvalue(state[n]) for n in state if n not in self._values}
        self._scalars = {n: self._ortvalue(np.zeros(1, np.float32)) for n in (STEP_SIZE, V_CORRECTION)}
        self._losses = [ort.OrtValue.ortvalue_from_numpy(np.zeros(1, np.float32)) for _ in range(3)]  # host memory
        self.input_names = [i.name for i in self.session.get_inputs()
                            if i.name not in state and i.name not in self._scalars]
        self._side = 0
        self._bindings = [self._binding(0), self._binding(1)]

    def evaluate(self, feed: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
        """Loss, task loss, penalty and every trained tensor's gradient (`grad_name(w)`) on `feed`
        at the current state, without a step."""
        if self._eval is None:
            graph, trainable, frozen, shapes, threads = self._build
            self._eval = _session(build_step(graph, LOSS, trainable, frozen, shapes, update=False)[0], threads)
        state = {n: self.get(n) for n in [*self._values, *self._fixed] if "__onnxprune_adam_" not in n}
        names = [o.name for o in self._eval.get_outputs()]
        return dict(zip(names, self._eval.run(names, {**state, **{n: feed[n] for n in self.input_names}})))

    def _ortvalue(self, a: np.ndarray) -> ort.OrtValue:
        return ort.OrtValue.ortvalue_from_numpy(np.ascontiguousarray(a, dtype=np.float32), *self._where)

    def _binding(self, side: int):
        b = self.session.io_binding()
        for n, pair in self._values.items():
            b.bind_ortvalue_input(n, pair[side])
            b.bind_ortvalue_output(_new(n), pair[1 - side])
        for n, v in {**self._fixed, **self._scalars}.items():
            b.bind_ortvalue_input(n, v)
        for n, v in zip((LOSS, TASK_LOSS, PENALTY), self._losses):
            b.bind_ortvalue_output(_new(n), v)
        return b

    def _current(self, name: str) -> ort.OrtValue:
        if name in self._values:
            return self._values[name][self._side]
        if name in self._fixed:
            return self._fixed[name]
        raise KeyError(name)

    def has(self, name: str) -> bool:
        return name in self._values or name in self._fixed

    def get(self, name: str) -> np.ndarray:
        return np.array(self._current(name).numpy(), copy=True)

    def set(self, name: str, value: np.ndarray) -> None:
        self._current(name).update_inplace(np.ascontiguousarray(value, dtype=np.float32))

    def set_learning_rate(self, lr: float) -> None:
        self.lr = lr

    def step(self, feed: dict[str, np.ndarray]) -> tuple[float, float, float]:
        self.t += 1
        self._scalars[STEP_SIZE].update_inplace(np.array([self.lr / (1 - BETAS[0] ** self.t)], np.float32))
        self._scalars[V_CORRECTION].update_inplace(np.array([1 / (1 - BETAS[1] ** self.t)], np.float32))
        b = self._bindings[self._side]
        for n in self.input_names:
            b.bind_cpu_input(n, np.ascontiguousarray(feed[n]))
        self.session.run_with_iobinding(b)
        self._side = 1 - self._side
        return tuple(float(v.numpy()[0]) for v in self._losses)

    def save(self, path: Path) -> None:
        """Every tensor of the state and the step count, as one .npz written to `path`."""
        arrays = {n: self.get(n) for n in [*self._values, *self._fixed]}
        buf = io.BytesIO()
        np.savez(buf, **{f"t{i}": a for i, a in enumerate(arrays.values())}, names=np.array(list(arrays)),
                 step=np.array(self.t))
        Path(path).write_bytes(buf.getvalue())


def _session(model: onnx.ModelProto, threads: int | None) -> ort.InferenceSession:
    try:
        return ort.InferenceSession(serialized(model), session_options(threads), providers=device.providers())
    except Exception as e:  # ORT's own refusal of a graph onnxprune built: say which
        raise OnnxPruneError(f"ONNX Runtime cannot run the training step graph: {first_line(e)}") from None


def _load(path: Path, state: dict[str, np.ndarray]) -> tuple[dict[str, np.ndarray], int]:
    try:
        with np.load(path, allow_pickle=False) as z:
            saved = {str(n): z[f"t{i}"] for i, n in enumerate(z["names"])}
            step = int(z["step"])
    except (OSError, ValueError, KeyError) as e:
        raise OnnxPruneError(f"--resume: the checkpoint {path} cannot be read ({first_line(e)})") from None
    if set(saved) != set(state) or any(saved[n].shape != state[n].shape for n in state):
        raise OnnxPruneError(f"--resume: the checkpoint {path} holds other tensors than this job trains")
    return saved, step


__all__ = ["Trainer", "build_step", "grad_name"]
