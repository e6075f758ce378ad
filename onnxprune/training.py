"""The training graph the train stage runs in ORT: the user's graph plus, for every prunable weight W,
a mask M (forward uses W·M, so pruned weights are exactly zero) and a penalty
coefficient P (loss += Σ P·W²), then the task loss. M and P are frozen checkpoint
parameters, rewritten between steps, so one set of ORT artifacts serves every phase:
dense (P=0, M=1), reweighted (P refreshed), masked fine-tuning (P=0, M fixed).
"""
from __future__ import annotations

import copy
import json
import os
import re
import signal
import subprocess
import sys
from pathlib import Path

import numpy as np
import onnx
from onnx import helper, numpy_helper

from . import batchnorm, device, standins
from .errors import NativeCrash, OnnxPruneError
from .losses import PREFIX, LossTerm
from .plumbing import first_line, session_options

LOSS, TASK_LOSS, PENALTY = f"{PREFIX}_loss", f"{PREFIX}_task_loss", f"{PREFIX}_penalty"


def mask_name(weight: str) -> str:
    return f"{weight}__{PREFIX}_mask"


def coef_name(weight: str) -> str:
    return f"{weight}__{PREFIX}_coef"


def correction_name(weight: str) -> str:
    return f"{weight}__{PREFIX}_qcorr"


class Builder:
    """What a loss block adds nodes and constants through."""

    def __init__(self, graph: onnx.GraphProto) -> None:
        self.graph, self.nodes = graph, []

    def node(self, op, inputs, outputs, **attrs) -> str:
        self.nodes.append(helper.make_node(op, inputs, outputs, name=f"{PREFIX}/{outputs[0]}", **attrs))
        return outputs[0]

    def const(self, name: str, value: np.ndarray) -> str:
        if not any(t.name == name for t in self.graph.initializer):
            self.graph.initializer.append(numpy_helper.from_array(value, name))
        return name


def build_training_graph(base: onnx.ModelProto, tensors: dict[str, tuple[int, ...]], penalized: set[str],
                         terms: list[LossTerm], shapes: dict[str, tuple[int, ...]],
                         corrected: set[str] = frozenset(), norms: str = "batch",
                         owned: set[str] | None = None) -> onnx.ModelProto:
    """`tensors`: every masked tensor (prunable weights, and the biases and norms that
    channel groups take with them); `penalized`: those the group penalty covers; `shapes`: real
    tensor shapes (ORT's, on a probe batch); `corrected`: those trained against a quantizer.
    Their forward value is W·M + C, with C = Q(W·M) − W·M a frozen tensor refreshed after every
    step: the forward pass sees the quantized weight and the gradient reaches W unchanged (a
    straight-through estimator; ORT has no stop-gradient). `norms`: BatchNorm trains on each
    batch's statistics ("batch"), on its frozen running ones ("frozen"), or on either as the
    frozen scalar `batchnorm.SWITCH` says ("switch"); see `batchnorm`. Only BatchNorms whose
    statistics are `owned` (stored by the written model) can leave their frozen ones."""
    model = copy.deepcopy(base)
    graph = model.graph
    if norms != "frozen":
        {"batch": batchnorm.on_batch_statistics, "switch": batchnorm.switchable}[norms](model, shapes, owned)
    batchnorm.as_affine(model, shapes)  # the rest
    weights = set(tensors)
    b = Builder(graph)
    node = b.node

    # forward pass reads W·M instead of W
    for n in graph.node:
        for i, name in enumerate(n.input):
            if name in weights:
                n.input[i] = f"{name}__{PREFIX}_masked"
    masked_nodes = []
    for w, shape in tensors.items():
        graph.initializer.append(numpy_helper.from_array(np.ones(shape, np.float32), mask_name(w)))
        if w in penalized:
            graph.initializer.append(numpy_helper.from_array(np.zeros(shape, np.float32), coef_name(w)))
        if w in corrected:
            graph.initializer.append(numpy_helper.from_array(np.zeros(shape, np.float32), correction_name(w)))
            masked_nodes.append(helper.make_node("Mul", [w, mask_name(w)], [f"{w}__{PREFIX}_premask"],
                                                 name=f"{PREFIX}/mask/{w}"))
            masked_nodes.append(helper.make_node("Add", [f"{w}__{PREFIX}_premask", correction_name(w)],
                                                 [f"{w}__{PREFIX}_masked"], name=f"{PREFIX}/quant/{w}"))
            continue
        masked_nodes.append(helper.make_node("Mul", [w, mask_name(w)], [f"{w}__{PREFIX}_masked"], name=f"{PREFIX}/mask/{w}"))
    body = list(graph.node)
    del graph.node[:]
    graph.node.extend(masked_nodes + body)  # they read only initializers, so they may come first

    # penalty Σ P·W·W (ReduceSumSquare has no gradient in ORT 1.19, and Sum neither)
    penalty = None
    for w in (t for t in tensors if t in penalized):
        sq = node("Mul", [w, w], [f"{w}__{PREFIX}_sq"])
        weighted = node("Mul", [sq, coef_name(w)], [f"{w}__{PREFIX}_psq"])
        term = node("ReduceSum", [weighted], [f"{w}__{PREFIX}_pen"], keepdims=0)
        penalty = term if penalty is None else node("Add", [penalty, term], [f"{w}__{PREFIX}_pacc"])

    if penalty is None:  # nothing penalized (dense training): a constant zero keeps the outputs alike
        penalty = f"{PREFIX}_no_penalty"
        graph.initializer.append(numpy_helper.from_array(np.zeros((), np.float32), penalty))
    task = None
    for i, t in enumerate(terms):
        value = t.build(b, i)
        task = value if task is None else node("Add", [task, value], [f"{PREFIX}_task_acc{i}"])
    node("Identity", [task], [TASK_LOSS])
    node("Identity", [penalty], [PENALTY])
    node("Add", [TASK_LOSS, PENALTY], [LOSS])
    graph.node.extend(b.nodes)
    graph.input.extend(t.target_info() for t in terms)
    del graph.output[:]
    for name in (LOSS, TASK_LOSS, PENALTY):  # the first output is the loss ORT differentiates
        graph.output.append(helper.make_tensor_value_info(name, onnx.TensorProto.FLOAT, []))
    return model


class Trainer:
    """ORT training artifacts for one training graph, and the step loop's primitives."""

    def __init__(self, graph: onnx.ModelProto, trainable: list[str], frozen: list[str], workdir: Path,
                 learning_rate: float, threads: int | None = None, checkpoint: Path | None = None,
                 probe: dict[str, np.ndarray] | None = None) -> None:
        """`checkpoint`: start from this saved state (weights, frozen tensors, optimizer) instead.
        `probe`: one batch of the training inputs. With it, the artifacts are generated and one
        step is taken on them in a child process first, so that a crash in ORT's native code ends
        as a one-line error instead of taking this process down."""
        from . import ort_training as ot

        workdir.mkdir(parents=True, exist_ok=True)
        try:
            if probe is not None:
                _generate_isolated(graph, trainable, frozen, workdir, probe, threads)
            else:
                with ot.quiet_artifact_logs():
                    ot.artifacts.generate_artifacts(
                        graph, requires_grad=trainable, frozen_params=frozen, loss=None,
                        optimizer=ot.onnxblock.optim.AdamW(eps=1e-8, weight_decay=0.0),
                        artifact_directory=str(workdir))
            self.state = ot.CheckpointState.load_checkpoint(str(checkpoint or workdir / "checkpoint"))
            self.module = ot.Module(str(workdir / "training_model.onnx"), self.state, str(workdir / "eval_model.onnx"),
                                    device=device.current(), session_options=session_options(threads))
            self.optimizer = ot.Optimizer(str(workdir / "optimizer_model.onnx"), self.module)
        except RuntimeError as e:  # a missing gradient shows up at one of these two points
            raise OnnxPruneError(_explain_gradient_error(str(e), graph, trainable)) from None
        self.optimizer.set_learning_rate(learning_rate)
        self.input_names = self.module.input_names()
        self.module.train()

    def set(self, name: str, value: np.ndarray) -> None:
        self.state.parameters[name].data = np.ascontiguousarray(value, dtype=np.float32)

    def has(self, name: str) -> bool:
        try:
            self.state.parameters[name]
        except Exception:  # ORT raises its own error type for a name it does not hold
            return False
        return True

    def get(self, name: str) -> np.ndarray:
        return np.array(self.state.parameters[name].data, copy=True)  # .data is a live view

    def set_learning_rate(self, lr: float) -> None:
        self.optimizer.set_learning_rate(lr)

    def step(self, feed: dict[str, np.ndarray]) -> tuple[float, float, float]:
        self.module.lazy_reset_grad()  # or gradients accumulate across steps
        loss, task, penalty = self.module(*[feed[n] for n in self.input_names])
        self.optimizer.step()
        return float(loss), float(task), float(penalty)


def _explain_gradient_error(message: str, graph: onnx.ModelProto, trainable: list[str]) -> str:
    """ORT's graph-builder errors in our words: the op and node, and the routes that need no gradient."""
    for pattern in (r"gradient builder has not been registered: (\S+) for node (\S*)",
                    r"Could not find an implementation for (\w+)\(\d+\) node with name '([^']*)'",
                    r"operator \((\w+)\) in node \(([^)]*)\)"):
        m = re.search(pattern, message)
        if m:
            op, node = m.group(1), m.group(2).split("_Grad/")[0].removesuffix("_training")
            grad = op.endswith("Grad")
            op = op[: -len("Grad")] if grad else op
            node = f" (node {node})" if node else ""
            what = (f"ONNX Runtime 1.19 has no working CPU gradient for op {op}{node}" if grad
                    else f"ONNX Runtime cannot differentiate op {op}{node}")
            return f"{what}, which lies between the weights and the output; {standins.NO_GRADIENT_ROUTES}"
    suspects = [f"{n.op_type} (node {n.name})" for n in standins.gradient_path(graph, trainable, [LOSS])
                if n.op_type not in standins.KNOWN_TRAINABLE and not n.name.startswith(PREFIX)]
    if suspects:
        return (f"ONNX Runtime 1.19 could not build the training graph (an internal check failed); between the "
                f"weights and the loss it is not known to train {', '.join(dict.fromkeys(suspects))}; "
                f"{standins.NO_GRADIENT_ROUTES}")
    return "ONNX Runtime could not build the training graph: " + first_line(message.strip().splitlines()[-1])


# run in a child process by _generate_isolated: generate the artifacts, then take one step on a
# copy of the fresh state (the parent starts from the untouched checkpoint)
_CHILD = r"""
import json, sys
import numpy as np
sys.path.insert(0, sys.argv[1])
import ort_training as ot
graph, workdir, spec = sys.argv[2], sys.argv[3], json.loads(sys.argv[4])
try:
    with ot.quiet_artifact_logs():
        ot.artifacts.generate_artifacts(graph, requires_grad=spec["trainable"], frozen_params=spec["frozen"],
                                        loss=None, optimizer=ot.onnxblock.optim.AdamW(eps=1e-8, weight_decay=0.0),
                                        artifact_directory=workdir)
    state = ot.CheckpointState.load_checkpoint(workdir + "/checkpoint")
    module = ot.Module(workdir + "/training_model.onnx", state, workdir + "/eval_model.onnx", device=spec["device"])
    optimizer = ot.Optimizer(workdir + "/optimizer_model.onnx", module)
    with np.load(spec["feed"]) as z:
        feed = [z[n] for n in module.input_names()]
    module.train()
    module.lazy_reset_grad()
    module(*feed)
    optimizer.step()
except RuntimeError as e:
    sys.stderr.write("ORT-ERROR:" + str(e))
    sys.exit(3)
"""


def _generate_isolated(graph: onnx.ModelProto, trainable, frozen, workdir: Path, probe: dict[str, np.ndarray],
                       threads: int | None) -> None:
    workdir = workdir.resolve()
    path, feed = workdir / "training_graph.onnx", workdir / "probe_feed.npz"
    onnx.save_model(graph, path)
    np.savez(feed, **probe)
    spec = json.dumps({"trainable": list(trainable), "frozen": list(frozen), "feed": str(feed),
                       "device": device.current()})
    env = {**os.environ, **({"OMP_NUM_THREADS": str(threads)} if threads else {})}
    # in the workdir: given a path, onnxblock writes its scratch copy of the graph (temp.onnx) into
    # the current folder, which trials run side by side would share and a read-only one would refuse
    done = subprocess.run([sys.executable, "-c", _CHILD, str(Path(__file__).resolve().parent), str(path), str(workdir),
                           spec], capture_output=True, text=True, env=env, cwd=workdir)
    path.unlink(missing_ok=True)
    feed.unlink(missing_ok=True)
    if done.returncode == 0:
        return
    if done.returncode == 3 and "ORT-ERROR:" in done.stderr:
        raise RuntimeError(done.stderr.split("ORT-ERROR:", 1)[1])
    if done.returncode < 0:
        try:
            what = signal.Signals(-done.returncode).name
        except ValueError:
            what = f"signal {-done.returncode}"
        suspects = [f"{n.op_type} (node {n.name})" for n in standins.gradient_path(graph, trainable, [LOSS])
                    if n.op_type not in standins.KNOWN_TRAINABLE and not n.name.startswith(PREFIX)]
        raise NativeCrash(f"ONNX Runtime 1.19 crashed ({what}) taking a training step on this graph"
                             + (f"; ops on the path it is not known to train: {', '.join(dict.fromkeys(suspects))}"
                                if suspects else "")
                             + f"; nothing was written. {standins.NO_GRADIENT_ROUTES[0].upper()}"
                             + standins.NO_GRADIENT_ROUTES[1:])
    raise OnnxPruneError("ONNX Runtime could not build the training graph: "
                         + first_line((done.stderr.strip().splitlines() or ["no message"])[-1]))
