"""The data stage: the user's arrays (or synthesized ones), checked against the model's inputs,
the held-out split, and the dense model's outputs on both (the distillation targets and the
reference the pruned model is scored against).
"""
from __future__ import annotations

import os
import zipfile
from dataclasses import dataclass, field
from functools import cached_property
from pathlib import Path

import numpy as np
import onnx
from onnx import numpy_helper
import onnxruntime as ort

from . import tasks
from .errors import OnnxPruneError
from .layout import Layout, LayoutSession, input_axes, output_axes
from .metrics import class_outputs
from .plumbing import one_line, session, warn

LABELS = "labels"
SYNTH_BYTES = 512 * 2**20  # synthesized inputs stop at this size (but never below SYNTH_FLOOR samples)
SYNTH_FLOOR = 64


@dataclass
class InputSpec:
    name: str
    dtype: np.dtype
    dims: list  # int for a fixed size, str/None for a dynamic one


def input_specs(model: onnx.ModelProto) -> list[InputSpec]:
    inits = {t.name for t in model.graph.initializer}
    specs = []
    for vi in model.graph.input:
        if vi.name in inits:
            continue
        tt = vi.type.tensor_type
        dims = [d.dim_value if d.HasField("dim_value") else (d.dim_param or None) for d in tt.shape.dim]
        specs.append(InputSpec(vi.name, onnx.helper.tensor_dtype_to_np_dtype(tt.elem_type), dims))
    return specs


def parse_input_shapes(items: tuple[str, ...] | list[str]) -> dict[str, list[int]]:
    """`name=1x3x224x224` → {name: [1, 3, 224, 224]}."""
    shapes = {}
    for item in items:
        name, sep, dims = item.rpartition("=")
        try:
            parsed = [int(d) for d in dims.lower().split("x")]
        except ValueError:
            parsed = []
        if not sep or not name or not parsed or min(parsed) < 1:
            raise OnnxPruneError(f"--input-shape {item!r} is not NAME=D1xD2x... with positive sizes")
        shapes[name] = parsed
    return shapes


def resolve_shapes(specs: list[InputSpec], items: tuple[str, ...] | list[str]) -> dict[str, list]:
    """Every input's shape after `--input-shape`: an item names an input (its whole shape) or one
    of the graph's dimension names (`sequence_length=128`, one size). A named dimension fixed
    through one input is fixed in every input that shares it, as the exporter declared."""
    given = parse_input_shapes(items)
    names = {s.name for s in specs}
    declared = {d for s in specs for d in s.dims if isinstance(d, str)}
    sizes = {}
    for key, dims in given.items():
        if key in names:
            continue
        if key not in declared:
            raise OnnxPruneError(f"--input-shape names {key}, neither a model input ({', '.join(sorted(names))}) "
                                 f"nor a dimension name of one ({', '.join(sorted(declared)) or 'none'})")
        if len(dims) != 1:
            raise OnnxPruneError(f"--input-shape {key}=... fixes one dimension: give one size, e.g. {key}=128")
        sizes[key] = dims[0]
    for spec in specs:
        dims = given.get(spec.name)
        if dims is None:
            continue
        if len(dims) != len(spec.dims):
            raise OnnxPruneError(f"--input-shape for {spec.name} has {len(dims)} dims, the input has {len(spec.dims)}")
        for declared_dim, size in zip(spec.dims, dims):
            if isinstance(declared_dim, str):
                sizes.setdefault(declared_dim, size)
    return {s.name: given.get(s.name) or [sizes.get(d, d) if isinstance(d, str) else d for d in s.dims]
            for s in specs}


def load_npz(path: str | Path) -> dict[str, np.ndarray]:
    path = Path(path)
    if not path.is_file():
        raise OnnxPruneError(f"data file not found: {path}")
    try:
        with np.load(path, allow_pickle=False) as z:  # pickles could run code: never load them
            arrays = {k: z[k] for k in z.files}
    except ValueError as e:
        if "pickle" in str(e).lower():
            raise OnnxPruneError(f"{path} holds pickled objects; only plain numeric arrays are accepted") from None
        raise OnnxPruneError(f"{path} is not a readable .npz file: {e}") from None
    except (OSError, zipfile.BadZipFile, EOFError, KeyError) as e:
        raise OnnxPruneError(f"{path} is not a readable .npz file: {e}") from None
    odd = sorted(k for k, v in arrays.items() if not isinstance(v, np.ndarray))  # np.load hands back raw bytes
    if odd:
        raise OnnxPruneError(f"{path} is not a readable .npz file: member(s) {', '.join(odd)} are not .npy arrays")
    return arrays


def check_arrays(arrays: dict[str, np.ndarray], specs: list[InputSpec], source: str,
                 num_classes: int | None, axes: dict[str, int | None] | None = None) -> int:
    """Check a user's arrays against the model's inputs (each with its samples on its sample axis,
    `axes`; a constant input's array has the input's whole shape); returns the sample count."""
    axes = axes if axes is not None else {s.name: 0 for s in specs}
    names = {s.name for s in specs}
    missing = sorted(names - set(arrays))
    extra = sorted(set(arrays) - names - {LABELS})
    if missing:
        raise OnnxPruneError(f"{source} lacks array(s) {', '.join(missing)} for the model input(s); it has {', '.join(sorted(arrays)) or 'none'}")
    if extra:
        raise OnnxPruneError(f"{source} has array(s) {', '.join(extra)} that are neither model inputs ({', '.join(sorted(names))}) nor '{LABELS}'")
    sampled = [s for s in specs if axes.get(s.name) is not None]
    if not sampled:
        raise OnnxPruneError(f"{source}: no model input has a sample axis")
    first = sampled[0]
    a0 = arrays[first.name]
    n = a0.shape[axes[first.name]] if a0.ndim > axes[first.name] else 0
    if n == 0:
        raise OnnxPruneError(f"{source}: array {first.name} holds no samples")
    for spec in specs:
        a, axis = arrays[spec.name], axes.get(spec.name)
        if a.dtype != spec.dtype:
            raise OnnxPruneError(f"{source}: array {spec.name} is {a.dtype}, the model input wants {spec.dtype}")
        if axis is None:
            if list(a.shape) != spec.dims:
                raise OnnxPruneError(f"{source}: array {spec.name} has shape {'x'.join(map(str, a.shape)) or '()'}; "
                                     f"input {spec.name} holds one value for every sample, of shape "
                                     f"{'x'.join(map(str, spec.dims)) or '()'}")
        elif a.ndim != len(spec.dims) or any(isinstance(d, int) and i != axis and a.shape[i] != d
                                             for i, d in enumerate(spec.dims)):
            want = "x".join("N" if i == axis else str(d) if isinstance(d, int) else "?" for i, d in enumerate(spec.dims))
            raise OnnxPruneError(f"{source}: array {spec.name} has shape {'x'.join(map(str, a.shape))}, the model input "
                                 f"wants {want} (N = samples, on axis {axis})")
        elif a.shape[axis] != n:
            raise OnnxPruneError(f"{source}: arrays disagree on the sample count ({n} in {first.name}, "
                                 f"{a.shape[axis]} in {spec.name})")
        if a.dtype.kind == "f" and not np.isfinite(a).all():
            raise OnnxPruneError(f"{source}: array {spec.name} holds NaN or infinite values")
    if LABELS in arrays:
        labels = arrays[LABELS]
        if labels.dtype.kind not in "iu":
            raise OnnxPruneError(f"{source}: '{LABELS}' must be integer class ids, not {labels.dtype}")
        if len(labels) != n:
            raise OnnxPruneError(f"{source}: arrays disagree on the sample count ({n} in {first.name}, {len(labels)} in {LABELS})")
        if num_classes is not None and (labels.min() < 0 or labels.max() >= num_classes):
            raise OnnxPruneError(f"{source}: labels span {labels.min()}..{labels.max()}, outside the output's {num_classes} classes (0..{num_classes - 1})")
    return n


def samples_first(arrays: dict[str, np.ndarray], axes: dict[str, int | None]) -> dict[str, np.ndarray]:
    """The sampled inputs (and labels) with their samples moved to axis 0; constants left out."""
    out = {k: np.moveaxis(v, axes[k], 0) if axes[k] else v for k, v in arrays.items() if axes.get(k) is not None}
    if LABELS in arrays:
        out[LABELS] = arrays[LABELS]
    return out


ID_VIEWS = {"Reshape", "Expand", "Unsqueeze", "Squeeze", "Cast", "Identity", "Flatten", "Transpose"}


def id_bounds(model: onnx.ModelProto) -> dict[str, int]:
    """For each integer input, the bound the graph implies for its values (ids in [0, R)): the
    rows of a table it indexes (Gather), a OneHot's depth, or the classes of a one-hot made by
    Equal against a constant 0..R-1, looking through reshapes and casts."""
    inits = {t.name: t for t in model.graph.initializer}
    readers: dict[str, list[onnx.NodeProto]] = {}
    for node in model.graph.node:
        for i in node.input:
            readers.setdefault(i, []).append(node)
    out = {}
    for vi in model.graph.input:
        if vi.name in inits or onnx.helper.tensor_dtype_to_np_dtype(vi.type.tensor_type.elem_type).kind not in "iu":
            continue
        bounds, frontier, seen = [], [vi.name], set()
        while frontier:
            t = frontier.pop()
            if t in seen:
                continue
            seen.add(t)
            for n in readers.get(t, []):
                if n.op_type in ID_VIEWS and n.input[0] == t:
                    frontier.append(n.output[0])
                elif n.op_type == "Gather" and len(n.input) > 1 and n.input[1] == t and n.input[0] in inits:
                    axis = next((a.i for a in n.attribute if a.name == "axis"), 0)
                    bounds.append(int(inits[n.input[0]].dims[axis]))
                elif n.op_type == "OneHot" and n.input[0] == t and n.input[1] in inits:
                    bounds.append(int(np.asarray(numpy_helper.to_array(inits[n.input[1]])).reshape(-1)[0]))
                elif n.op_type == "Equal":
                    other = inits.get(n.input[1] if n.input[0] == t else n.input[0])
                    values = np.unique(numpy_helper.to_array(other)) if other is not None else np.array([])
                    if values.size > 1 and values.dtype.kind in "iu" and np.array_equal(values, np.arange(values.size)):
                        bounds.append(int(values.size))
        if bounds:
            out[vi.name] = min(bounds)
    return out


def synthesize(specs: list[InputSpec], n: int, shapes: dict[str, list[int]], rng: np.random.Generator,
               axes: dict[str, int | None] | None = None,
               bounds: dict[str, int] | None = None) -> tuple[dict[str, np.ndarray], dict[str, np.ndarray]]:
    """Random inputs from the declared shapes, samples first: floats half uniform in [0, 1), half
    standard normal, to cover the two common input normalizations; integer ids uniform below the
    bound the graph implies (`bounds`); the constant inputs (no sample axis), zeros. A last
    resort: real data is better."""
    axes = axes if axes is not None else {s.name: 0 for s in specs}
    bounds = bounds or {}
    out, constants = {}, {}
    for spec in specs:
        axis = axes.get(spec.name)
        dims = shapes.get(spec.name, spec.dims)
        if len(dims) != len(spec.dims):
            raise OnnxPruneError(f"--input-shape for {spec.name} has {len(dims)} dims, the input has {len(spec.dims)}")
        rest = [d for i, d in enumerate(dims) if i != axis]
        missing = [str(d) if d else "?" for d in rest if not isinstance(d, int) or d < 1]
        if missing:
            named = [d for d in missing if d != "?"]
            example = "x".join("1" if i == axis else str(d) if isinstance(d, int) and d > 0 else "L"
                               for i, d in enumerate(dims))
            raise OnnxPruneError(f"input {spec.name} has dynamic dimension(s) {', '.join(missing)} and no --data: fix "
                                 f"them with --input-shape {named[0] + '=L' if named else spec.name + '=' + example}"
                                 f"{' (or ' + spec.name + '=' + example + ')' if named else ''}, L a size")
        if axis is None:
            if spec.dtype.kind != "f":
                raise OnnxPruneError(f"input {spec.name} holds one {spec.dtype} value for every sample (shape "
                                     f"{'x'.join(map(str, rest)) or '()'}); give it with --input {spec.name}=VALUE")
            constants[spec.name] = np.zeros(rest, spec.dtype)
            continue
        if spec.dtype.kind in "iu" and spec.name not in bounds and "mask" in spec.name.lower():
            out[spec.name] = np.ones((n, *rest), spec.dtype)  # an attention mask: every position attended
            continue
        if spec.dtype.kind in "iu" and spec.name in bounds:
            out[spec.name] = rng.integers(0, bounds[spec.name], (n, *rest)).astype(spec.dtype)
            continue
        if spec.dtype.kind != "f":
            raise OnnxPruneError(f"input {spec.name} is {spec.dtype} (ids or byte values), and the graph implies no range "
                                 "for them (no Gather, OneHot or one-hot Equal reads it): pass real samples with --data")
        half = n // 2
        a = np.concatenate([rng.random((half, *rest), np.float32), rng.standard_normal((n - half, *rest), np.float32)])
        out[spec.name] = a.astype(spec.dtype, copy=False)
    return out, constants


def synth_count(specs: list[InputSpec], n: int, shapes: dict[str, list[int]],
                axes: dict[str, int | None] | None = None) -> int:
    """`n`, or fewer where n samples would take more than SYNTH_BYTES (large images): random
    inputs teach little per sample, and the dense passes over them cost time and memory."""
    axes = axes if axes is not None else {s.name: 0 for s in specs}
    per = sum(int(np.prod([d for i, d in enumerate(shapes.get(s.name, s.dims))
                           if i != axes.get(s.name) and isinstance(d, int) and d > 0])) * s.dtype.itemsize
              for s in specs if axes.get(s.name) is not None)
    return max(min(n, SYNTH_FLOOR), min(n, SYNTH_BYTES // max(per, 1)))


def split(arrays: dict[str, np.ndarray], n: int, val_fraction: float, rng: np.random.Generator):
    """Shuffle once, then hold out `val_fraction` of the samples."""
    order = rng.permutation(n)
    n_val = int(round(n * val_fraction))
    if val_fraction > 0 and n_val == 0:
        n_val = 1
    if n - n_val < 1:
        raise OnnxPruneError(f"--val-fraction {val_fraction} leaves no training samples out of {n}")
    val, train = order[:n_val], order[n_val:]
    return {k: a[train] for k, a in arrays.items()}, {k: a[val] for k, a in arrays.items()}


# samples per inference run: ORT's arena keeps the largest run's activations for the session's
# life (PP-OCRv4 rec over 400 lines: 2.2 GB peak at 256, 1.5 GB at 32, the same 19 s)
INFERENCE_BATCH = 32


def run_model(session: ort.InferenceSession, arrays: dict[str, np.ndarray], input_names: list[str],
              batch: int = INFERENCE_BATCH, rows_are_samples: bool = False) -> list[np.ndarray]:
    """All outputs of `session` over all samples, computed in batches. A model whose inputs fix
    the batch size runs in chunks of exactly that size, the last one padded and trimmed.
    `rows_are_samples`: every output is stacked along axis 0, also where samples are merged
    with another axis there ([N·T, C] inside a transformer)."""
    fixed = session_batch(session)
    batch = fixed or batch
    n = len(arrays[input_names[0]])
    # where the layout measured an output's sample axis, that decides (merged [N·T, C] outputs too)
    known = session.layout.outputs if isinstance(session, LayoutSession) else {}
    names = [o.name for o in session.get_outputs()]
    parts: list[list[np.ndarray]] = []
    batched: list[bool] | None = None  # per output: does it have a sample axis?
    for start in range(0, n, batch):
        rows = np.arange(start, min(start + batch, n))
        take = np.resize(rows, batch) if fixed else rows
        try:
            outs = session.run(None, {k: arrays[k][take] for k in input_names})
        except Exception as e:  # shapes the model refuses: ORT's message, whole, on one line
            raise OnnxPruneError(f"ONNX Runtime cannot run the model on these inputs: {one_line(e)}") from None
        per = [known[k] is not None if k in known else o.ndim > 0 and (o.shape[0] == len(take) or rows_are_samples)
               for k, o in zip(names, outs)]
        batched = per if batched is None else [a and b for a, b in zip(batched, per)]
        # padded samples trimmed (rows per sample: 1, or T where samples are merged with T)
        parts.append([o[: len(rows) * max(1, o.shape[0] // len(take))] if b else o for o, b in zip(outs, per)])
    # an output without a sample axis (a scalar, a constant) is the same for every batch: keep one
    return [np.concatenate([p[i] for p in parts]) if batched[i] else parts[0][i] for i in range(len(parts[0]))]


def session_batch(session: ort.InferenceSession) -> int | None:
    """The batch size the model's inputs fix, or None when it is dynamic."""
    if isinstance(session, LayoutSession):
        return session.fixed_batch
    for i in session.get_inputs():
        if i.shape and isinstance(i.shape[0], int) and i.shape[0] > 0:
            return i.shape[0]
    return None


@dataclass
class Dataset:
    """Samples for training and evaluation (samples first, whatever the model's own layout), and
    what the dense model makes of them."""

    train: dict[str, np.ndarray]
    val: dict[str, np.ndarray]
    split: str  # what `val` is, for the report
    input_names: list[str]  # the inputs that hold samples (constant inputs are in `layout`)
    output_names: list[str]
    dense_val: dict[str, np.ndarray]  # output name -> the dense model's outputs on `val`
    selected: list[str]  # the outputs training scores (the first one is the headline metric)
    fixed_batch: int | None  # the batch size the model's inputs fix
    probe: dict[str, np.ndarray]  # one batch (`fixed_batch or 1` samples) for shapes and costs
    layout: Layout = field(default_factory=lambda: Layout({}))
    dense: object = None  # the dense model's session, samples first
    classes: frozenset = frozenset()  # the selected outputs that hold class scores (see metrics.class_outputs)
    tasks: dict = field(default_factory=dict)  # selected output -> the task it serves (see tasks.kind_of)

    @cached_property
    def dense_train(self) -> dict[str, np.ndarray]:
        """The dense model's outputs on `train`: computed when training first needs them, so a
        one-shot run never passes over the training data."""
        return dict(zip(self.output_names, run_model(self.dense, self.train, self.input_names)))

    @property
    def labels(self) -> bool:
        return LABELS in self.train

    @property
    def val_labels(self) -> np.ndarray | None:
        return self.val.get(LABELS)

    def inputs(self, arrays: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
        return {k: arrays[k] for k in self.input_names}

    def session(self, model: onnx.ModelProto, what: str):
        """A session of `model` (same inputs and outputs as the dense one) that takes and gives
        samples first."""
        return with_layout(session(model, what), self.layout)

    def outputs(self, model: onnx.ModelProto, what: str, arrays: dict[str, np.ndarray] | None = None):
        """`model`'s outputs on `arrays` (default: the evaluation samples), samples first."""
        return run_model(self.session(model, what), self.val if arrays is None else arrays, self.input_names)

    def model_feed(self, arrays: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
        """Samples-first arrays as the model itself takes them (for ORT's own tools)."""
        return self.layout.to_model(self.inputs(arrays))


def with_layout(sess, layout: Layout):
    return sess if layout.plain else LayoutSession(sess, layout)


def prepare(dense: ort.InferenceSession, model: onnx.ModelProto, data, eval_data, cfg, rng: np.random.Generator,
            warnings: list[str]) -> Dataset:
    """The data stage. `data`/`eval_data`: an .npz path or a dict of arrays (or None); `cfg`: the
    config's `Data` group; `dense`: a session of the dense model `model`."""
    specs = input_specs(model)
    axes = input_axes(specs)
    fixed = next((s.dims[axes[s.name]] for s in specs if axes[s.name] is not None
                  and isinstance(s.dims[axes[s.name]], int) and s.dims[axes[s.name]] > 0), None)
    layout = Layout({k: a for k, a in axes.items() if a is not None}, fixed_batch=fixed)
    train, val, split_name, layout.constants = _datasets(data, eval_data, specs, axes, fixed, dense, model, cfg, rng, warnings)
    names = [s.name for s in specs if axes[s.name] is not None]
    output_names = [o.name for o in dense.get_outputs()]
    inputs_first = LayoutSession(dense, layout)  # outputs still in the model's layout
    try:
        layout.outputs, layout.ranks = output_axes(lambda f: inputs_first.run(None, f), {k: val[k] for k in names},
                                                   output_names, fixed)
    except Exception as e:
        raise OnnxPruneError(f"ONNX Runtime cannot run the model on these inputs: {one_line(e)}") from None
    dense = with_layout(dense, layout)
    dense_val = dict(zip(output_names, run_model(dense, val, names)))  # val is never empty (see _datasets)
    selected = _select_outputs(cfg.output_name, output_names, dense_val, LABELS in train, len(val[names[0]]))
    if not fixed and _rows_interact(dense, val, names, selected):
        warn(warnings, f"the rows of {names[0]} are not independent samples: the model's outputs for a row change "
                       "with the rows run beside it (a sequence along the first axis, as in silero-vad's sequence "
                       "export); training draws rows in shuffled batches, which breaks their order, and the scores "
                       "depend on how rows are grouped: give one sample per row where the model has such an export")
    probe = feed(val, names, fixed or 1)
    classes = frozenset(class_outputs(model, {k: dense_val[k] for k in selected}))
    chosen = {k: dense_val[k] for k in selected}
    return Dataset(train, val, split_name, names, output_names, dense_val, selected, fixed, probe, layout, dense,
                   classes, tasks.kinds(model, chosen, classes))


def _rows_interact(session, arrays: dict[str, np.ndarray], names: list[str], selected: list[str],
                   rows: int = 8) -> bool:
    """Whether the outputs for the second half of the first `rows` rows differ when the first half
    runs beside them."""
    rows = min(rows, len(arrays[names[0]]))
    if rows < 4:
        return False
    half = rows // 2
    together = run_model(session, {k: arrays[k][:rows] for k in names}, names, batch=rows)
    alone = run_model(session, {k: arrays[k][half:rows] for k in names}, names, batch=half)
    outs = [o.name for o in session.get_outputs()]
    for name, a, b in zip(outs, together, alone):
        if name not in selected or a.dtype.kind != "f" or a.shape[:1] != (rows,) or b.shape[:1] != (half,):
            continue
        tail = a[half:].astype(np.float64)
        if np.abs(tail - b).max() > 1e-3 * (np.abs(tail).max() + 1e-6):
            return True
    return False


def feed(arrays: dict[str, np.ndarray], names: list[str], batch: int) -> dict[str, np.ndarray]:
    """`batch` samples (repeated if there are fewer) of the model inputs."""
    n = len(arrays[names[0]])
    rows = np.resize(np.arange(n), batch)
    return {k: arrays[k][rows] for k in names}


def _load(source, what: str) -> tuple[dict[str, np.ndarray], str]:
    if isinstance(source, (str, os.PathLike)):
        return load_npz(source), str(source)
    return dict(source), what


def _datasets(data, eval_data, specs, axes, fixed, dense, model, cfg, rng, warnings):
    """(train, val, what val is, constant inputs): arrays samples first."""
    shapes = resolve_shapes(specs, cfg.input_shapes)
    num_classes = None
    if data is None:
        count = synth_count(specs, cfg.synth_samples, shapes, axes)
        arrays, constants = synthesize(specs, count, shapes, rng, axes, id_bounds(model))
        warn(warnings, "no --data: training on synthesized inputs by distillation from the dense model; "
                       "accuracy is only assured with real data"
             + (f" ({count} samples, not {cfg.synth_samples}: larger inputs stop at "
                f"{SYNTH_BYTES // 2**20} MB)" if count < cfg.synth_samples else ""))
        for name in constants:
            warn(warnings, f"input {name} holds one value for every sample; it is held at zero (give its value "
                           f"in --data, as an array of the input's whole shape)")
        source = "synthesized"
        n = len(next(iter(arrays.values())))
    else:
        raw, source = _load(data, "data")
        n = check_arrays(raw, specs, source, None, axes)  # shapes first: the class probe runs the model
        if LABELS in raw:
            num_classes = _classes(dense, raw, specs, axes, fixed, source)
            check_arrays(raw, specs, source, num_classes, axes)
        arrays, constants = samples_first(raw, axes), {s.name: raw[s.name] for s in specs if axes[s.name] is None}
    if eval_data is not None:
        ev, ev_source = _load(eval_data, "eval data")
        check_arrays(ev, specs, ev_source, num_classes, axes)
        if (LABELS in ev) != (LABELS in arrays):
            raise OnnxPruneError("training data and eval data must both have labels, or both lack them")
        return arrays, samples_first(ev, axes), Path(str(ev_source)).name, constants  # shuffled each epoch
    train, val = split(arrays, n, cfg.val_fraction, rng)
    if not len(next(iter(val.values()))):
        return train, train, "training (no held-out split)", constants
    return train, val, f"held-out {cfg.val_fraction:.0%}", constants


def _classes(dense, raw, specs, axes, fixed, source) -> int | None:
    """The class count of the first output (for checking labels), from a batch of the first sample."""
    try:
        rows = [0] * (fixed or 2)
        feed = {s.name: raw[s.name] if axes[s.name] is None else np.take(raw[s.name], rows, axis=axes[s.name])
                for s in specs}
        first = dense.run(None, feed)[0]
    except Exception as e:
        raise OnnxPruneError(f"the model cannot run on {source}: {one_line(e)}") from None
    return first.shape[1] if first.ndim >= 2 else None


def _select_outputs(output_name, names, dense_train, has_labels, n) -> list[str]:
    if output_name is not None:
        if output_name not in names:
            raise OnnxPruneError(f"--output {output_name!r} is not a model output ({', '.join(names)})")
        return [output_name]
    floats = [k for k in names if dense_train[k].dtype.kind == "f" and dense_train[k].ndim
              and dense_train[k].shape[0] == n]  # per-sample float outputs only
    if not floats:
        raise OnnxPruneError("the model has no float output to train against")
    return floats[:1] if has_labels else floats
