"""The load stage: read the user's file, check it, simplify it, make a copy that ONNX Runtime
1.19 can train, and find the prunable layers (layers.py).

Two graphs come out. `export_base` is the user's graph after simplification, at the
user's own opset: the trained weights are written back into it. `train_base` is the
same graph brought to an opset ORT trains (13..21); the training graph is built on it.
"""
from __future__ import annotations

import copy
import os
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import onnx
import onnxruntime as ort
from google.protobuf.message import DecodeError
from onnx import numpy_helper

from .binding import static_dims, bind, branch_hint, fold_ifs, parse_inputs
from .errors import OnnxPruneError
from .layers import STORED_VIEWS, PrunableLayer, Skipped, find_prunable, made_at_run_time
from .optimize import optimize as ort_basic
from .plumbing import default_opset, first_line, initializer_map, names_used_in_subgraphs, runtime_limits, session
from .quantize import check_not_quantized

MIN_TRAIN_OPSET = 13  # SoftmaxCrossEntropyLoss needs 12; 13 gives ReduceSum's axes input


@dataclass
class PreparedModel:
    original: onnx.ModelProto
    export_base: onnx.ModelProto
    train_base: onnx.ModelProto
    changes: list[str] = field(default_factory=list)  # what preparation did, for the report
    # tensors the input graph computes when it runs (ConstantOfShape, Transpose of a weight…):
    # folded into constants by onnxsim, they are not trained weights anyone stored
    computed: set[str] = field(default_factory=set)


@dataclass
class Loaded:
    source: Path | None  # the file read, if a path was given
    original: onnx.ModelProto  # as the user gave it
    prepared: PreparedModel
    base: onnx.ModelProto  # the graph the trained weights are written back into (it runs in ORT)
    dense: object  # an ORT session of `base`
    layers: list[PrunableLayer]
    skipped: list[Skipped]


def bound_original(model, inputs: tuple[str, ...] = ()) -> onnx.ModelProto:
    """The user's model with `--input` bindings applied: the inputs and outputs a written model keeps."""
    original = read_model(Path(model)) if isinstance(model, (str, os.PathLike)) else checked_proto(model)
    return bind(original, parse_inputs(inputs, original))


def load(model, exclude: tuple[str, ...] = (), simplify: bool = True, optimize: bool = False,
         inputs: tuple[str, ...] = ()) -> Loaded:
    """The load stage. `model`: a path or an onnx.ModelProto; `inputs`: NAME=VALUE bindings."""
    source = Path(model) if isinstance(model, (str, os.PathLike)) else None
    original = read_model(source) if source else checked_proto(model)
    check_not_quantized(original)
    _check_not_bfloat16(original)
    _check_runtime_runs(original)
    bound, folded = fold_ifs(bind(original, parse_inputs(inputs, original)))
    fixed_by_shape = 0
    if any(n.op_type == "If" for n in bound.graph.node):  # Ifs decided by dims the graph fixes fold for good
        candidate, fixed_by_shape = fold_ifs(static_dims(bound))
        bound = candidate if fixed_by_shape else bound
    made = made_at_run_time(bound)
    if made:
        raise OnnxPruneError(f"no prunable weights in the model: every layer weight is computed when it runs, "
                             f"not stored ({'; '.join(made[:3])}{' …' if len(made) > 3 else ''})")
    prepared = prepare(bound, simplify=simplify, optimize=optimize)
    if fixed_by_shape:
        prepared.changes.insert(0, f"{fixed_by_shape} If node(s) decided by dims the graph fixes (as a state input's "
                                   "[2, batch, 128] fixes its first) folded into the branch they always take")
    if inputs:
        prepared.changes.insert(0, f"input(s) bound to constants: {', '.join(inputs)}"
                                + (f"; {folded} If node(s) folded into the branch taken" if folded else ""))
    layers, skipped = find_prunable(prepared.export_base, tuple(exclude), prepared.computed)
    if not layers:
        why = ("; ".join(sorted({s.reason for s in skipped}))
               or "no Conv, ConvTranspose, Gemm, MatMul, LSTM, GRU or RNN with a constant weight")
        raise OnnxPruneError(f"no prunable weights in the model ({branch_hint(prepared.export_base) or why})")
    dense, base = _runnable(prepared)
    return Loaded(source, original, prepared, base, dense, layers, skipped)


def _check_runtime_runs(model: onnx.ModelProto) -> None:
    """A model stamped with an opset newer than the installed runtime runs is refused, naming both."""
    opset, newest = default_opset(model), runtime_limits()[1]
    if opset > newest:
        raise OnnxPruneError(f"the model uses opset {opset}, newer than the installed onnxruntime {ort.__version__} "
                             f"runs (up to {newest}); upgrade it: pip install -U onnxruntime")


def _check_not_bfloat16(model: onnx.ModelProto) -> None:
    """ONNX Runtime 1.19's CPU build has no bfloat16 Conv/MatMul kernel and its Python API cannot
    feed a bfloat16 array: such a model can be neither evaluated nor trained here."""
    bf16 = onnx.TensorProto.BFLOAT16
    found = [v.name for v in [*model.graph.input, *model.graph.output] if v.type.tensor_type.elem_type == bf16]
    found += [t.name for t in model.graph.initializer if t.data_type == bf16]
    if found:
        raise OnnxPruneError(f"the model holds bfloat16 tensors ({', '.join(found[:3])}{' …' if len(found) > 3 else ''}), "
                             "which ONNX Runtime 1.19 on CPU can neither run nor feed; convert it to float32 or float16 "
                             "first and prune that")


def checked_proto(model) -> onnx.ModelProto:
    if not isinstance(model, onnx.ModelProto):
        raise OnnxPruneError(f"model must be a path or an onnx.ModelProto, not {type(model).__name__}")
    try:
        onnx.checker.check_model(model)
    except (onnx.checker.ValidationError, ValueError) as e:
        raise OnnxPruneError(f"not a valid ONNX model: {first_line(e)}") from None
    return model


def _runnable(prepared: PreparedModel):
    """The dense session, and the graph to write back into: the user's opset where ORT runs it,
    otherwise the opset training converted it to."""
    try:
        return session(prepared.export_base), prepared.export_base
    except OnnxPruneError as first:
        if default_opset(prepared.train_base) == default_opset(prepared.export_base):
            raise
        converted = _trainable_opset(prepared.export_base, [])  # the user's types, not training's float32
        try:
            dense = session(converted)
        except OnnxPruneError:
            raise first from None
        prepared.changes.append(f"onnxruntime {ort.__version__} cannot run the graph at opset "
                                f"{default_opset(prepared.export_base)}; the output uses opset "
                                f"{default_opset(prepared.train_base)}")
        return dense, converted


def read_model(path: str | os.PathLike) -> onnx.ModelProto:
    """Load an ONNX file (external data too), with one-line errors for bad files."""
    path = Path(path)
    if not path.exists():
        raise OnnxPruneError(f"model file not found: {path}")
    if not path.is_file():
        raise OnnxPruneError(f"model path is not a file: {path}")
    try:
        raw = path.read_bytes()
    except OSError as e:
        raise OnnxPruneError(f"cannot read model file {path}: {e.strerror}") from None
    if not raw:
        raise OnnxPruneError(f"{path} is empty, not an ONNX model")
    try:
        model = onnx.load_model_from_string(raw)
    except (DecodeError, RuntimeWarning, ValueError) as e:
        raise OnnxPruneError(f"{path} is not an ONNX model (corrupt or truncated protobuf: {first_line(e)})") from None
    if not model.graph.node or not model.opset_import:
        raise OnnxPruneError(f"{path} is not an ONNX model (no graph nodes or no opset after parsing)")
    _check_external_paths(model, path)
    try:
        onnx.load_external_data_for_model(model, str(path.parent))
    except (OSError, ValueError) as e:
        raise OnnxPruneError(f"cannot load the external data of {path}: {first_line(e)}") from None
    try:
        onnx.checker.check_model(model)
    except (onnx.checker.ValidationError, ValueError) as e:
        raise OnnxPruneError(f"{path} is not a valid ONNX model: {first_line(e)}") from None
    return model


def prepare(model: onnx.ModelProto, simplify: bool = True, optimize: bool = False) -> PreparedModel:
    """`optimize`: ORT's basic graph optimizations too, before anything else sees the graph, so
    every later stage (training, quantization, storage) works on the nodes that are written."""
    changes: list[str] = []
    work = copy.deepcopy(model)
    _constants_to_initializers(work, changes)
    _drop_initializer_inputs(work, changes)
    stored = {t.name for t in work.graph.initializer}
    # stored weights seen through layout ops (old PyTorch Linear: Transpose(W) → MatMul; an LSTM's
    # gates reordered by Slice/Concat) are still stored weights once onnxsim folds them; anything
    # else a node makes is computed at run time
    for n in work.graph.node:
        if n.op_type in STORED_VIEWS and all(i in stored for i in n.input if i):
            stored.update(n.output)
    computed = {o for n in work.graph.node for o in n.output if o not in stored}
    if simplify or optimize:
        work = _simplify(work, changes)
    if optimize:
        work, steps = ort_basic(work)
        changes.extend(steps)
    _static_reshapes(work, changes)
    _untie_norm_parameters(work, changes)
    _name_nodes(work)
    _expose_float_sources(work, changes)
    train = in_float32(_trainable_opset(work, changes), changes)
    return PreparedModel(original=model, export_base=work, train_base=train, changes=changes, computed=computed)


HALF = onnx.TensorProto.FLOAT16


def in_float32(model: onnx.ModelProto, changes: list[str]) -> onnx.ModelProto:
    """A float16 graph as float32, for training (ORT trains float32; half-precision gradients
    underflow): half initializers and Constant values widened, Casts to half made Casts to
    float32, half inputs and outputs declared float32. The written model keeps its types.
    (bfloat16 is refused before this: see `_check_not_bfloat16`.)"""
    m = copy.deepcopy(model)
    changed = False

    def widen(t: onnx.TensorProto) -> None:
        nonlocal changed
        if t.data_type == HALF:
            t.CopyFrom(numpy_helper.from_array(numpy_helper.to_array(t).astype(np.float32), t.name))
            changed = True

    def fix(g: onnx.GraphProto) -> None:
        nonlocal changed
        for t in g.initializer:
            widen(t)
        for v in [*g.input, *g.output, *g.value_info]:
            if v.type.tensor_type.elem_type == HALF:
                v.type.tensor_type.elem_type = onnx.TensorProto.FLOAT
                changed = True
        for node in g.node:
            for a in node.attribute:
                if a.type == onnx.AttributeProto.TENSOR:
                    widen(a.t)
                elif a.name in ("to", "dtype") and a.type == onnx.AttributeProto.INT and a.i == HALF:
                    a.i = onnx.TensorProto.FLOAT
                    changed = True
                for sub in ([a.g] if a.type == onnx.AttributeProto.GRAPH else list(a.graphs)):
                    fix(sub)
    fix(m.graph)
    if not changed:
        return model
    changes.append("float16 tensors trained in float32 (the output keeps their types)")
    return m


def _expose_float_sources(model: onnx.ModelProto, changes: list[str]) -> None:
    """An output of integer ids made in the graph (ArgMax, ArgMin, TopK's indices) has no gradient:
    the float tensor they are taken from becomes an extra output that training distills on (the
    written model has only the user's outputs)."""
    producer = {o: n for n in model.graph.node for o in n.output}
    outputs = {o.name for o in model.graph.output}
    for out in list(model.graph.output):
        node = producer.get(out.name)
        if node is None or not (node.op_type in ("ArgMax", "ArgMin")
                                or (node.op_type == "TopK" and list(node.output).index(out.name) == 1)):
            continue
        src = node.input[0]
        if src and src not in outputs:
            model.graph.output.append(onnx.ValueInfoProto(name=src))
            outputs.add(src)
            changes.append(f"output {out.name} is integer ids ({node.op_type} of {src}): training distills on {src}")


def _check_external_paths(model: onnx.ModelProto, path: Path) -> None:
    """External data must lie in the model's folder: a location that is absolute, climbs out
    with '..', or is a link leading elsewhere could read any file on the machine (the
    path-traversal class of ONNX CVEs)."""
    from onnx.external_data_helper import _get_all_tensors, uses_external_data

    folder = path.parent.resolve()
    for tensor in _get_all_tensors(model):
        if not uses_external_data(tensor):
            continue
        location = next((e.value for e in tensor.external_data if e.key == "location"), "")
        target = (folder / location).resolve()
        if not location or Path(location).is_absolute() or not target.is_relative_to(folder):
            raise OnnxPruneError(f"{path}: external data of tensor {tensor.name!r} points outside the model's "
                                 f"folder ({location!r}); refused")


def _name_nodes(model: onnx.ModelProto) -> None:
    """Unnamed nodes get unique names: layers, quantization and storage find nodes by name."""
    taken = {n.name for n in model.graph.node if n.name}
    for index, node in enumerate(model.graph.node):
        if not node.name:
            name = f"{node.op_type}_{index}"
            while name in taken:
                name += "_"
            node.name = name
            taken.add(name)


def _constants_to_initializers(model: onnx.ModelProto, changes: list[str]) -> None:
    """Weights held in `Constant` nodes become initializers, so they can be found and trained."""
    graph = model.graph
    kept, moved = [], 0
    for node in graph.node:
        tensor = _constant_value(node) if node.op_type == "Constant" and node.domain in ("", "ai.onnx") else None
        if tensor is None:
            kept.append(node)
            continue
        tensor.name = node.output[0]
        graph.initializer.append(tensor)
        moved += 1
    if moved:
        del graph.node[:]
        graph.node.extend(kept)
        changes.append(f"{moved} Constant node(s) turned into initializers")


def _static_reshapes(model: onnx.ModelProto, changes: list[str]) -> None:
    """A Reshape whose target is assembled at run time from its own input's leading dims and
    constants (`Concat(Shape(x)[0], Shape(x)[1], 12, 32)`: every attention head split a PyTorch
    export writes) gets the constant target `[0, 0, 12, 32]` (0 copies the dim): the same
    reshape for every batch and length, and one the channel analysis can follow and shrink."""
    graph = model.graph
    inits = {t.name: t for t in graph.initializer}
    producer = {o: n for n in graph.node for o in n.output}

    def const(name):
        t = inits.get(name)
        return numpy_helper.to_array(t) if t is not None else None

    def copied_dim(piece: str, data: str) -> int | None:
        """i, where `piece` is Unsqueeze(Gather(Shape(data), i)) — one dim of `data`."""
        u = producer.get(piece)
        if u is None or u.op_type != "Unsqueeze":
            return None
        axes = const(u.input[1]) if len(u.input) > 1 else next(
            (np.array(a.ints) for a in u.attribute if a.name == "axes"), None)
        g = producer.get(u.input[0])
        if axes is None or list(np.ravel(axes)) != [0] or g is None or g.op_type != "Gather":
            return None
        shape, index = producer.get(g.input[0]), const(g.input[1])
        if shape is None or shape.op_type != "Shape" or shape.input[0] != data or index is None or index.ndim:
            return None
        if any(a.name in ("start", "end") for a in shape.attribute) or any(a.i for a in g.attribute if a.name == "axis"):
            return None
        return int(index)

    fixed = 0
    for node in graph.node:
        if node.op_type != "Reshape" or any(a.i for a in node.attribute if a.name == "allowzero"):
            continue
        concat = producer.get(node.input[1])
        if concat is None or concat.op_type != "Concat":
            continue
        target = []
        for piece in concat.input:
            value = const(piece)
            if value is not None and value.dtype == np.int64 and value.ndim == 1:
                target.extend(int(v) for v in value)
            elif copied_dim(piece, node.input[0]) == len(target):
                target.append(0)
            else:
                break
        else:
            name = f"{node.input[1]}__static"
            graph.initializer.append(numpy_helper.from_array(np.array(target, np.int64), name))
            inits[name] = graph.initializer[-1]
            node.input[1] = name
            fixed += 1
    if fixed:
        _drop_dead(graph, {"Shape", "Gather", "Unsqueeze", "Concat"})
        changes.append(f"{fixed} Reshape target(s) computed from the input's own dims made constant (0 copies a dim)")


NORMS = ("BatchNormalization", "InstanceNormalization", "LayerNormalization")


def _untie_norm_parameters(model: onnx.ModelProto, changes: list[str]) -> None:
    """A normalization parameter stored once for several readers gets a copy per reader: PyTorch's
    exporter stores equal tensors once (a fresh BatchNorm's weight and running variance are both
    ones), which would tie channels that only look alike."""
    graph = model.graph
    inits = {t.name: t for t in graph.initializer}
    readers: dict[str, int] = {}
    for node in graph.node:
        for i in node.input:
            readers[i] = readers.get(i, 0) + 1
    copied = 0
    for node in graph.node:
        if node.op_type not in NORMS:
            continue
        for slot in range(1, len(node.input)):
            name = node.input[slot]
            if name in inits and readers[name] > 1:
                own = copy.deepcopy(inits[name])
                own.name = f"{name}__{node.name or node.output[0]}_{slot}"
                graph.initializer.append(own)
                node.input[slot] = own.name
                readers[name] -= 1
                copied += 1
    if copied:
        changes.append(f"{copied} normalization parameter(s) stored once for several readers given their own copies")


def _drop_dead(graph: onnx.GraphProto, ops: set[str]) -> None:
    """Nodes of `ops` whose outputs nothing reads (also not a subgraph), and then their unused initializers."""
    def used() -> set[str]:
        return {i for n in graph.node for i in n.input} | names_used_in_subgraphs(graph)

    while True:
        live = used() | {o.name for o in graph.output}
        dead = [n for n in graph.node if n.op_type in ops and not any(o in live for o in n.output)]
        if not dead:
            break
        for n in dead:
            graph.node.remove(n)
    live = used()
    for t in [t for t in graph.initializer if t.name not in live]:
        graph.initializer.remove(t)


def _constant_value(node: onnx.NodeProto) -> onnx.TensorProto | None:
    for attr in node.attribute:
        if attr.name == "value":
            return copy.deepcopy(attr.t)
        if attr.name == "value_float":
            return numpy_helper.from_array(np.array(attr.f, np.float32))
        if attr.name == "value_floats":
            return numpy_helper.from_array(np.array(list(attr.floats), np.float32))
        if attr.name == "value_int":
            return numpy_helper.from_array(np.array(attr.i, np.int64))
        if attr.name == "value_ints":
            return numpy_helper.from_array(np.array(list(attr.ints), np.int64))
    return None  # sparse_value / string constants stay as they are


def _drop_initializer_inputs(model: onnx.ModelProto, changes: list[str]) -> None:
    """IR<4 files list every initializer as a graph input too; they are weights, not inputs."""
    inits = {t.name for t in model.graph.initializer}
    inputs = [i for i in model.graph.input if i.name not in inits]
    dropped = len(model.graph.input) - len(inputs)
    if dropped:
        del model.graph.input[:]
        model.graph.input.extend(inputs)
        changes.append(f"{dropped} initializer(s) listed as graph inputs are treated as weights")
    if model.ir_version < 4:  # IR 3 requires every initializer to be an input; IR 4 lifted that
        model.ir_version = 4
        changes.append("IR version raised from 3 to 4 (initializers need not be inputs)")


def _simplify(model: onnx.ModelProto, changes: list[str]) -> onnx.ModelProto:
    import onnxsim

    n_before = len(model.graph.node)
    ops_before = _op_counts(model)
    try:
        # BatchNorm stays: folded into the convs, its per-layer scales skew any global ranking and
        # fine-tuning loses the per-channel scale and shift (a converged ResNet at 10×: 47% after
        # magnitude + fine-tune folded, 95% kept); ORT fuses it again when the written model loads.
        # No batched MatMul+Add → Gemm: it wraps each Gemm in reshapes whose targets are computed
        # from another tensor's shape, which hides a transformer's channels from the analysis
        simplified, ok = onnxsim.simplify(model, skip_fuse_bn=True,
                                          skipped_optimizers=["fuse_matmul_add_bias_into_gemm_batched"])
    except Exception as e:  # onnxsim raises many kinds; the model is still usable unsimplified
        changes.append(f"onnxsim could not simplify the graph ({first_line(e)}); kept as it was")
        return model
    if not ok:
        changes.append("onnxsim's check of the simplified graph failed; kept the graph as it was")
        return model
    _restore_weight_names(model, simplified)
    ops_after = _op_counts(simplified)
    folded = [f"{op}×{n - ops_after.get(op, 0)}" for op, n in sorted(ops_before.items()) if n > ops_after.get(op, 0)]
    if folded:
        changes.append(f"onnxsim simplified {n_before} → {len(simplified.graph.node)} nodes (removed {', '.join(folded)})")
    return simplified


def _restore_weight_names(before: onnx.ModelProto, after: onnx.ModelProto) -> None:
    """onnxsim renames weights it rewrites (e.g. BatchNorm folded into a Conv becomes `_v_15`);
    give them back the user's names so the report and the output stay recognizable."""
    old_nodes = {n.name: n for n in before.graph.node if n.name}
    old_inits = initializer_map(before.graph)
    new_inits = initializer_map(after.graph)
    taken = set(new_inits) | {v.name for v in after.graph.input} | {o for n in after.graph.node for o in n.output}
    renames: dict[str, str] = {}
    for node in after.graph.node:
        old = old_nodes.get(node.name)
        if old is None or old.op_type != node.op_type:
            continue
        for new_name, old_name in zip(node.input, old.input):
            if (new_name != old_name and new_name in new_inits and old_name in old_inits
                    and old_name not in taken and new_name not in renames):
                renames[new_name] = old_name
                taken.add(old_name)
    if not renames:
        return
    for t in after.graph.initializer:
        t.name = renames.get(t.name, t.name)
    for node in after.graph.node:
        for i, name in enumerate(node.input):
            node.input[i] = renames.get(name, name)


def _trainable_opset(model: onnx.ModelProto, changes: list[str]) -> onnx.ModelProto:
    opset = default_opset(model)
    target = max(opset, MIN_TRAIN_OPSET)
    if target == opset:
        return copy.deepcopy(model)
    from onnx import version_converter

    try:
        converted = version_converter.convert_version(model, target)
    except Exception as e:
        raise OnnxPruneError(
            f"opset {opset} cannot be trained (it needs {MIN_TRAIN_OPSET} or newer) and onnx's version converter "
            f"could not convert it to {target}: {first_line(e)}") from None
    converted.ir_version = max(converted.ir_version, 7)
    changes.append(f"trained at opset {target} (the output keeps opset {opset})")
    return converted


def _op_counts(model: onnx.ModelProto) -> dict[str, int]:
    counts: dict[str, int] = {}
    for node in model.graph.node:
        counts[node.op_type] = counts.get(node.op_type, 0) + 1
    return counts
