"""The pipeline: load → find layers → data → train (reweighted, prune, fine-tune) → export → report.
`prune()` is the Python API; the CLI is a thin shell over it.
"""
from __future__ import annotations

import contextlib
import os
import shutil
import sys
import tempfile
import time
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import onnx
import onnxruntime as ort
from onnx import numpy_helper

from . import data as D
from . import layerwise
from .errors import OnnxPruneError
from .channels import tensor_shapes
from .costs import count_macs, latencies, macs_per_weight, param_count
from .cluster import Codebooks
from .export import check_output_path, matmul_to_gemm, save_atomic, verify, with_weights
from .groups import make_structure
from .layers import find_prunable, made_at_run_time, trainable_parameters
from .loading import default_opset, initializer_map, prepare, read_model
from .masking import check_rate, hard_prune
from .resume import Checkpoints, fingerprint
from .quantize import TARGETS, FakeInt8, check_not_quantized, int8, kept_in_float, quantized_layers
from .report import format_table, layer_rows, totals
from .shrink import shrink as shrink_graph
from .storage import FORMS, encode, stored_tensors, weight_slots, weight_storage
from .schedule import Phase, Schedule, current_weights, finetune, reweighted
from .training import (LossTerm, Trainer, build_training_graph, coef_name, correction_name, logits_of, mask_name,
                       session_options)

METHODS = ("reweighted", "magnitude")
QUANTIZE = ("int8", "cluster")
MODES = ("endtoend", "layerwise")


@dataclass
class PruneResult:
    model: onnx.ModelProto
    report: dict
    masks: dict[str, np.ndarray]

    def summary(self) -> str:
        return format_table(self.report)

    def save(self, path: str | os.PathLike) -> None:
        save_atomic(self.model, Path(path))


def prune(model, rate: float | None = None, *, data=None, eval_data=None, out=None, output_name: str | None = None,
          method: str = "reweighted", finetune_baseline: bool = False, scope: str = "global", layer_floor: float = 0.1,
          structure: str = "unstructured", block: str = "4x4", nm: str = "2:4", shrink: bool = True,
          channel_multiple: int = 8, rate_of: str = "weights",
          exclude=(), schedule: Schedule | None = None, val_fraction: float = 0.1, input_shapes=(),
          synth_samples: int = 2048, seed: int = 0, simplify: bool = True, workdir=None, threads: int | None = None,
          quantize: str | None = None, target: str = "ort", qat: bool = False, bits: int = 4,
          storage: str | None = None, optimize: bool = False, mode: str = "endtoend", resume: bool = False,
          latency: bool = True, progress: bool = False, log=None) -> PruneResult:
    """Prune `model` (a path or an onnx.ModelProto) to `rate` and recover accuracy by training.

    data / eval_data: a .npz path or a dict of arrays named like the model's inputs (+ optional
    'labels'). With labels: cross-entropy; without: distillation from the dense model; with no
    data: synthesized inputs. `out`: where to write the pruned model (atomically).
    structure: unstructured | filter | channel | column | pattern | block (`block` 'RxC') |
    nm (`nm` 'N:M', rate 1 − N/M). Filter and channel models are shrunk physically unless
    `shrink=False`; with them, `rate_of='macs'` makes the rate a share of the MACs per sample.
    quantize: None | 'int8' (ORT static quantization for `target` 'ort' or 'trt'; `qat` trains
    against it) | 'cluster' (`bits`-bit k-means codebooks per layer, refined by fine-tuning).
    storage: 'compact' | 'sparse' | 'dense' (default: dense for target 'trt', else compact).
    optimize: ORT basic graph optimizations. mode: 'endtoend' (train the whole graph) or
    'layerwise' (reconstruct each layer's dense output alone: no labels, no gradient through the
    rest of the graph). resume: continue from the checkpoint a run with the same `workdir` and
    arguments left (after every epoch). `latency`: time dense vs compressed in
    ORT for the report. Mirrors the CLI.
    """
    started = time.perf_counter()
    sched = schedule or Schedule()
    options = dict(  # everything that shapes training, for --resume's check
        rate=rate, method=method, finetune_baseline=finetune_baseline, scope=scope, layer_floor=layer_floor,
        structure=structure, block=block, nm=nm, channel_multiple=channel_multiple, rate_of=rate_of,
        exclude=list(exclude), schedule=sched.__dict__, val_fraction=val_fraction, seed=seed,
        simplify=simplify, quantize=quantize, target=target, qat=qat, bits=bits, optimize=optimize,
        output_name=output_name, synth_samples=synth_samples, input_shapes=list(input_shapes))
    say = log or (lambda msg: None)
    structure_ = make_structure(structure, block, nm)
    if structure == "nm":
        implied = 1 - structure_.n / structure_.m
        if rate is not None and abs(rate - implied) > 1e-9:
            raise OnnxPruneError(f"--structure nm --nm {nm} prunes exactly {implied:g} of the weights; "
                                 f"leave out --rate or set it to {implied:g}")
        rate = implied
    rate = 0.9 if rate is None else rate
    _check_options(rate, method, scope, val_fraction, layer_floor, channel_multiple, sched)
    storage = storage or ("dense" if target == "trt" else "compact")
    _check_compression(quantize, target, qat, bits, storage, method, finetune_baseline)
    if resume and workdir is None:
        raise OnnxPruneError("--resume continues from the checkpoint in --workdir: give the same --workdir")
    rng = np.random.default_rng(seed)
    source = Path(model) if isinstance(model, (str, os.PathLike)) else None
    if out is not None:
        check_output_path(Path(out), source)
    original = read_model(source) if source else _checked_proto(model)
    check_not_quantized(original)
    made = made_at_run_time(original)
    if made:
        raise OnnxPruneError(f"no prunable weights in the model: every layer weight is computed when it runs, "
                             f"not stored ({'; '.join(made[:3])}{' …' if len(made) > 3 else ''})")
    prepared = prepare(original, simplify=simplify, optimize=optimize)
    base = prepared.export_base

    layers, skipped = find_prunable(base, tuple(exclude), prepared.computed)
    if not layers:
        why = "; ".join(sorted({s.reason for s in skipped})) or "no Conv, ConvTranspose, Gemm or MatMul with a constant weight"
        raise OnnxPruneError(f"no prunable weights in the model ({why})")

    dense, base = _runnable(prepared)
    specs = D.input_specs(base)
    warnings: list[str] = []
    train, val, split_name, has_labels = _datasets(data, eval_data, specs, dense, val_fraction, input_shapes,
                                                  synth_samples, rng, warnings, say)
    output_names = [o.name for o in dense.get_outputs()]
    dense_train = dict(zip(output_names, D.run_model(dense, train, [s.name for s in specs])))
    dense_val = dict(zip(output_names, D.run_model(dense, val, [s.name for s in specs])))
    selected = _select_outputs(output_name, output_names, dense_train, has_labels, train)

    fixed = D.session_batch(dense)
    if fixed and fixed != sched.batch_size:
        warnings.append(f"the model's inputs fix the batch size at {fixed}; training uses batches of {fixed}")
        sched = Schedule(**{**sched.__dict__, "batch_size": fixed})

    input_names = [s.name for s in specs]
    probe = _feed(val if len(next(iter(val.values()))) else train, input_names, fixed or 1)
    shapes = tensor_shapes(base, probe)
    inits = initializer_map(base.graph)
    weights_of = {layer.weight: numpy_helper.to_array(inits[layer.weight]).astype(np.float32) for layer in layers}
    plan = structure_.plan(layers, weights_of, model=base, shapes=shapes)
    dense_weights = {w: weights_of[w] if w in weights_of else numpy_helper.to_array(inits[w]).astype(np.float32)
                     for w in plan.tensors}

    if rate_of == "macs":
        if plan.removes is None:
            raise OnnxPruneError("--rate-of macs needs --structure filter or channel (only they change the MACs run)")
        plan.cost = macs_per_weight(base, shapes, fixed or 1)
    elif rate_of != "weights":
        raise OnnxPruneError(f"rate-of must be 'weights' or 'macs', not {rate_of!r}")
    check_rate(plan, rate)  # before any training
    keep_float = kept_in_float(base, layers, target, shapes) if quantize == "int8" else {}
    if quantize == "int8" and len(keep_float) == len(layers):  # before any training
        raise OnnxPruneError("--quantize int8 has nothing to quantize: "
                             + "; ".join(f"{k}: {v}" for k, v in keep_float.items()))
    quantizer = None
    if quantize == "cluster":
        quantizer = Codebooks([layer.weight for layer in layers if layer.weight in plan.tensors], bits)
    elif quantize == "int8" and qat:
        quantizer = FakeInt8({layer.weight: layer.out_axis for layer in layers
                              if layer.name not in keep_float and layer.weight in plan.tensors})

    def select(weights):
        return hard_prune(weights, plan, rate, scope, layer_floor, channel_multiple)
    trains = method == "reweighted" or finetune_baseline
    phases: list[Phase] = []
    terms: list[LossTerm] = []
    bars = _progress_bars if progress else _no_progress
    if mode not in MODES:
        raise OnnxPruneError(f"mode must be one of {', '.join(MODES)}, not {mode!r}")
    if mode == "layerwise":
        if resume:
            raise OnnxPruneError("--resume is for --mode endtoend; layer-wise runs are short enough to rerun")
        if plan.removes is not None:
            raise OnnxPruneError("--mode layerwise prunes each layer alone; filter/channel pruning couples layers "
                                 "(use --mode endtoend)")
        if method != "reweighted":
            raise OnnxPruneError("--mode layerwise trains with the reweighted method (leave out --method)")
        # each layer's share comes from the chosen scope over the dense weights (global: magnitude
        # ranking with floors), then each layer is reconstructed at exactly its share
        shares = {w: 1 - float(m.sum()) / m.size for w, m in select(dense_weights).items()}

        def plan_of(layer):
            return structure_.plan([layer], {layer.weight: weights_of[layer.weight]}, model=base, shapes=shapes)

        def select_of(p):
            return lambda w: hard_prune(w, p, max(shares[t] for t in p.counted), "layer", layer_floor,
                                        channel_multiple)
        with _workdir(workdir) as wd:
            masks, new_weights, phases = layerwise.run(
                prepared.train_base, layers, plan_of, select_of, {s.name: train[s.name] for s in specs},
                input_names, sched, rng, bars, wd, threads, quantizer)
    elif trains:
        terms, targets, target_infos = _loss_terms(prepared.train_base, selected, has_labels, train, dense_train)
        arrays = {**{s.name: train[s.name] for s in specs}, **targets}
        wanted = set(plan.tensors) | set(trainable_parameters(prepared.train_base, layers))
        trainable = [t.name for t in prepared.train_base.graph.initializer if t.name in wanted]
        corrected = set(quantizer.names) if quantizer else set()
        graph = build_training_graph(prepared.train_base, plan.tensors, set(plan.penalized), terms, target_infos,
                                     corrected)
        frozen = ([mask_name(w) for w in plan.tensors] + [coef_name(w) for w in plan.penalized]
                  + [correction_name(w) for w in plan.tensors if w in corrected])
        with _workdir(workdir) as wd:
            ckpt = None
            if workdir is not None:  # a kept work folder gets a checkpoint after every epoch
                ckpt = Checkpoints(wd, fingerprint(original.SerializeToString(), arrays, options), resume)
            trainer = Trainer(graph, trainable, frozen, wd, sched.lr, threads, ckpt.checkpoint if ckpt else None)
            if method == "reweighted":
                masks, phases = reweighted(trainer, arrays, plan, select, sched, rng, bars, quantizer, ckpt)
            else:  # magnitude + fine-tune: the same total budget, all of it masked fine-tuning
                masks = select(dense_weights)
                phases = [finetune(trainer, arrays, masks, Phase("fine-tune", sched.epochs + sched.finetune_epochs),
                                   sched, rng, bars, quantizer, ckpt)]
            new_weights = {n: trainer.get(n) for n in trainable}
            new_weights.update(current_weights(trainer, plan))  # fold W·M: pruned weights exactly zero
    else:
        masks = select(dense_weights)
        new_weights = {w: dense_weights[w] * masks[w] for w in dense_weights}
        if quantizer:
            quantizer.start({n: new_weights[n] for n in quantizer.names}, masks)
    if quantizer:  # what training saw: Q(W·M) (int8 values ORT's quantizer reproduces, or codebook entries)
        for n in quantizer.names:
            new_weights[n] = quantizer(n, new_weights[n], masks[n])

    masked_model = with_weights(base, new_weights)
    masked_out = D.run_model(_session(masked_model), val, input_names)
    pruned_model, rewrites, outs = _rewrite(masked_model, masked_out, plan, masks, structure, shrink, shapes, val,
                                            input_names, warnings, say)
    pruned_out = dict(zip(output_names, outs))
    float_metric = _metric(selected, has_labels, val, dense_val, pruned_out, split_name)

    # compression of the pruned float model: optimize → int8 → compact storage
    slots = weight_slots(base, layers)
    final = pruned_model
    quantized = []
    if quantize == "int8":
        final = int8(final, train, input_names, target, layers, keep_float, fixed)
        quantized = quantized_layers(final, slots)
        outs = D.run_model(_session(final), val, input_names)
    stored = stored_tensors(final, slots)
    kept = {layer.weight: int(np.count_nonzero(numpy_helper.to_array(stored[layer.name]))) if layer.name in stored
            else 0 for layer in layers}
    _check_zeros_kept(pruned_model, final, slots, stored)
    encoded, forms = encode(final, [t.name for t in stored.values()], storage)
    if encoded is not final:
        _same_outputs(encoded, outs, val, input_names, 0.0, f"--storage {storage}")
    final = encoded
    final_out = dict(zip(output_names, outs))
    metric = _metric(selected, has_labels, val, dense_val, final_out, split_name)

    written = None
    if out is not None:
        save_atomic(final, Path(out))
        written = verify(Path(out), original)
    rows = layer_rows(layers, kept)
    storage_report = _storage_report(written if written is not None else final, layers, slots, stored, forms, storage)
    all_params = sum(int(np.prod(t.dims)) for t in base.graph.initializer if t.data_type == onnx.TensorProto.FLOAT)
    costs = _costs(base, pruned_model, probe, train, input_names, fixed, latency, threads, shapes, final,
                   quantize == "int8")
    slower = [b for b, t in costs["latency_ms"].items() if quantize == "int8" and t["compressed"] > t["pruned float"]]
    if slower:
        msg = (f"the int8 model ran slower than the pruned float one here ({', '.join(slower)}): ORT's int8 kernels "
               "beat float on CPUs with VNNI (AVX512-VNNI, AVX-VNNI) or ARM dot-product instructions; "
               "on others int8 mainly saves storage")
        warnings.append(msg)
        say("warning: " + msg)
    masked_sparsity = 1 - sum(float(masks[w].sum()) for w in plan.counted) / sum(masks[w].size for w in plan.counted)
    report = {
        "input": str(source) if source else None, "output": str(out) if out is not None else None,
        "method": method + (" + fine-tune" if finetune_baseline and method == "magnitude" else ""),
        "structure": structure, "structure_detail": _structure_detail(structure_, structure),
        "rate": rate, "rate_of": rate_of, "masked_sparsity": masked_sparsity, "scope": scope, "seed": seed,
        "rewrites": rewrites, "left_alone": plan.notes, "costs": costs,
        "compression": {"quantize": quantize, "target": target if quantize == "int8" else None,
                        "qat": qat if quantize == "int8" else None, "bits": bits if quantize == "cluster" else None,
                        "quantized_layers": quantized if quantize == "int8" else
                        ([layer.name for layer in layers if quantizer and layer.weight in quantizer.names]),
                        "kept_float": keep_float, "float_metric": float_metric if quantize else None,
                        "optimize": [c for c in prepared.changes if c.startswith("ORT basic")]},
        "storage": storage_report,
        "layers": rows, "totals": totals(rows, all_params),
        "skipped": [s.__dict__ for s in skipped], "metric": metric,
        "mode": mode,
        "loss": ("mean squared error to each layer's dense output (layer-wise reconstruction)" if mode == "layerwise"
                 else "; ".join(t.describe() for t in terms) if terms else "none (no training)"),
        "file_size": {"input": source.stat().st_size if source else original.ByteSize(),
                      "output": Path(out).stat().st_size if out is not None else pruned_model.ByteSize()},
        "phases": [{"name": p.name, "epochs": p.epochs, "steps": p.steps, "seconds": p.seconds,
                    "final_task_loss": p.final_task_loss} for p in phases],
        "schedule": sched.__dict__, "preparation": prepared.changes, "warnings": warnings,
        "workdir": str(workdir) if workdir is not None and trains else None,
        "wall_time_s": time.perf_counter() - started,
    }
    return PruneResult(final, report, masks)


def _feed(arrays: dict[str, np.ndarray], names: list[str], batch: int) -> dict[str, np.ndarray]:
    """`batch` samples (repeated if there are fewer) of the model inputs."""
    n = len(arrays[names[0]])
    rows = np.resize(np.arange(n), batch)
    return {k: arrays[k][rows] for k in names}


def _rewrite(masked, want, plan, masks, structure, shrink, shapes, val, names, warnings, say):
    """The masked model made smaller or more deployable: channels removed for filter/channel,
    MatMul → Gemm for N:M. Each rewrite must reproduce the masked model's outputs `want`
    (relative error ≤ 1e-4 on the eval samples), or the masked model is kept and the report
    says why. Returns (model, rewrites done, its outputs on the eval samples)."""
    model, done = masked, []
    if plan.channels is not None and shrink:
        pruned = {root for g, root in enumerate(plan.roots)
                  if all(not masks[t].ravel()[idx].any() for t, idx in plan.removes[g])}
        model = shrink_graph(masked, plan.channels, pruned)
        done.append(f"removed {len(pruned)} channel(s) from the graph")
    elif structure == "nm":
        model, converted = matmul_to_gemm(masked, shapes)
        if converted:
            done.append(f"MatMul -> Gemm(transB=1) for TensorRT's sparse kernels: {', '.join(converted)}")
    if model is masked:
        return masked, done, want
    try:
        got = D.run_model(_session(model), val, names)
    except OnnxPruneError as e:
        got, problem = None, str(e)
    if got is not None:
        err = max(float(np.abs(g - w).max() / max(np.abs(w).max(), 1e-12)) for g, w in zip(got, want))
        problem = None if err <= 1e-4 else f"outputs differ from the masked model by {err:.2g} (relative)"
    if problem:
        msg = f"the rewritten graph was not written ({problem}); the output is the masked model"
        warnings.append(msg)
        say("warning: " + msg)
        return masked, [], want
    return model, done, got


def _check_zeros_kept(pruned, final, slots, stored) -> None:
    """Every weight pruned to zero must still be exactly zero after quantization."""
    if final is pruned:
        return
    before = stored_tensors(pruned, slots)
    for name, t in stored.items():
        if name in before and before[name].dims == t.dims:
            was_zero = numpy_helper.to_array(before[name]) == 0
            if np.any(numpy_helper.to_array(t)[was_zero] != 0):
                raise OnnxPruneError(f"quantization made pruned weights of {name} non-zero; nothing was written")


def _same_outputs(model, want, val, names, tolerance, what):
    """`model`'s outputs on the eval samples, which must match `want` within `tolerance` (relative)."""
    got = D.run_model(_session(model), val, names)
    err = max(float(np.abs(g.astype(np.float64) - w).max() / max(np.abs(w).max(), 1e-12)) if g.size else 0.0
              for g, w in zip(got, want))
    if err > tolerance:
        raise OnnxPruneError(f"{what} changed the model's outputs by {err:.2g} (relative); nothing was written")
    return got


def _storage_report(model, layers, slots, stored, forms, mode) -> dict:
    """Bytes that store each layer's weight in the written graph (values, indices or gaps, codes,
    codebooks, quantization scales and zero points) against its float32 dense size."""
    nodes = {n.name: n for n in model.graph.node}
    rows = []
    for layer in layers:
        node = nodes.get(layer.name)
        if node is None or layer.name not in stored:
            continue
        nbytes, tensors = weight_storage(model, node.input[slots[layer.name]])
        rows.append({"name": layer.name, "form": forms.get(stored[layer.name].name, "dense"),
                     "dtype": onnx.helper.tensor_dtype_to_np_dtype(stored[layer.name].data_type).name,
                     "bytes": nbytes, "dense_fp32_bytes": 4 * layer.size, "tensors": tensors})
    total = sum(r["bytes"] for r in rows)
    dense = sum(r["dense_fp32_bytes"] for r in rows)
    return {"mode": mode, "layers": rows, "bytes": total, "dense_fp32_bytes": dense,
            "reduction": dense / total if total else float("inf")}


def _costs(dense, pruned, one, arrays, names, fixed, latency, threads, dense_shapes, final, int8) -> dict:
    """`one`: a batch of `fixed or 1` samples, the one `dense_shapes` were measured on. `pruned`:
    the float model (counted), `final`: the one written (timed; with `int8`, beside `pruned`)."""
    macs_d, _ = count_macs(dense, one, dense_shapes)
    macs_p, sparse_p = count_macs(pruned, one)
    out = {"params": {"dense": param_count(dense), "compressed": param_count(pruned)},
           "macs": {"dense": macs_d, "compressed": macs_p, "compressed_nonzero": sparse_p},
           "latency_ms": {}}
    if latency:
        for b in sorted({fixed} if fixed else {1, 32}):
            models = {"dense": dense, "pruned float": pruned, "compressed": final} if int8 else \
                {"dense": dense, "compressed": final}
            t = latencies(models, _feed(arrays, names, b), threads=threads)
            out["latency_ms"][f"batch {b}"] = t
    return out


def _check_compression(quantize, target, qat, bits, storage, method, finetune_baseline) -> None:
    if quantize not in (None, *QUANTIZE):
        raise OnnxPruneError(f"quantize must be one of {', '.join(QUANTIZE)}, not {quantize!r}")
    if target not in TARGETS:
        raise OnnxPruneError(f"target must be one of {', '.join(TARGETS)}, not {target!r}")
    if storage not in FORMS:
        raise OnnxPruneError(f"storage must be one of {', '.join(FORMS)}, not {storage!r}")
    if not 1 <= bits <= 8:
        raise OnnxPruneError(f"--bits must be between 1 and 8, not {bits}")
    if qat and quantize != "int8":
        raise OnnxPruneError("--qat trains against the int8 quantizer: add --quantize int8 "
                             "(--quantize cluster always fine-tunes its codebooks)")
    if qat and method == "magnitude" and not finetune_baseline:
        raise OnnxPruneError("--qat needs training: use --method reweighted, or --method magnitude --finetune")


def _structure_detail(s, name: str) -> str:
    if name == "block":
        return f"{s.rows}x{s.cols} blocks"
    if name == "nm":
        return f"{s.n}:{s.m}"
    if name == "pattern":
        return f"{s.count} kernel patterns + connectivity"
    return name


def _check_options(rate, method, scope, val_fraction, layer_floor, channel_multiple, sched: Schedule) -> None:
    if not 0 < rate < 1:
        raise OnnxPruneError(f"rate must be between 0 and 1 (exclusive), not {rate}")
    if method not in METHODS:
        raise OnnxPruneError(f"method must be one of {', '.join(METHODS)}, not {method!r}")
    if scope not in ("global", "layer"):
        raise OnnxPruneError(f"scope must be 'global' or 'layer', not {scope!r}")
    if not 0 <= val_fraction < 1:
        raise OnnxPruneError(f"val fraction must be in [0, 1), not {val_fraction}")
    if channel_multiple < 1:
        raise OnnxPruneError(f"channel multiple must be ≥ 1, not {channel_multiple}")
    if not 0 <= layer_floor <= 1:
        raise OnnxPruneError(f"layer floor must be in [0, 1], not {layer_floor}")
    if sched.batch_size < 1 or sched.epochs < 0 or sched.finetune_epochs < 0 or sched.reweight_every < 1:
        raise OnnxPruneError("batch size and reweight interval must be ≥ 1, epochs ≥ 0")


def _checked_proto(model) -> onnx.ModelProto:
    if not isinstance(model, onnx.ModelProto):
        raise OnnxPruneError(f"model must be a path or an onnx.ModelProto, not {type(model).__name__}")
    try:
        onnx.checker.check_model(model)
    except (onnx.checker.ValidationError, ValueError) as e:
        raise OnnxPruneError(f"not a valid ONNX model: {str(e).splitlines()[0]}") from None
    return model


def _runnable(prepared):
    """The dense session, and the graph to write back into: the user's opset where ORT runs it,
    otherwise the opset training converted it to."""
    try:
        return _session(prepared.export_base), prepared.export_base
    except OnnxPruneError as first:
        if default_opset(prepared.train_base) == default_opset(prepared.export_base):
            raise
        try:
            dense = _session(prepared.train_base)
        except OnnxPruneError:
            raise first from None
        prepared.changes.append(f"ONNX Runtime 1.19 cannot run the graph at opset {default_opset(prepared.export_base)}; "
                                f"the output uses opset {default_opset(prepared.train_base)}")
        return dense, prepared.train_base


def _session(model: onnx.ModelProto) -> ort.InferenceSession:
    try:
        return ort.InferenceSession(model.SerializeToString(), session_options(),
                                    providers=["CPUExecutionProvider"])
    except Exception as e:
        raise OnnxPruneError(f"ONNX Runtime cannot run the model: {str(e).strip().splitlines()[0][:300]}") from None


def _datasets(data, eval_data, specs, dense, val_fraction, input_shapes, synth_samples, rng, warnings, say):
    shapes = D.parse_input_shapes(input_shapes) if input_shapes else {}
    unknown = sorted(set(shapes) - {s.name for s in specs})
    if unknown:
        raise OnnxPruneError(f"--input-shape names {', '.join(unknown)}, not model input(s) {', '.join(s.name for s in specs)}")
    if data is None:
        arrays = D.synthesize(specs, synth_samples, shapes, rng)
        msg = ("no --data: training on synthesized inputs by distillation from the dense model; "
               "accuracy is only assured with real data")
        warnings.append(msg)
        say("warning: " + msg)
        source = "synthesized"
    else:
        arrays, source = (D.load_npz(data), str(data)) if isinstance(data, (str, os.PathLike)) else (dict(data), "data")
    probe = {s.name: arrays[s.name][:2] for s in specs if s.name in arrays}
    num_classes = None
    if len(probe) == len(specs) and D.LABELS in arrays:
        first = _probe_outputs(dense, probe, source)
        num_classes = first.shape[1] if first.ndim >= 2 else None
    n = D.check_arrays(arrays, specs, source, num_classes)
    if eval_data is not None:
        ev, ev_source = (D.load_npz(eval_data), str(eval_data)) if isinstance(eval_data, (str, os.PathLike)) else (dict(eval_data), "eval data")
        D.check_arrays(ev, specs, ev_source, num_classes)
        if (D.LABELS in ev) != (D.LABELS in arrays):
            raise OnnxPruneError("training data and eval data must both have labels, or both lack them")
        train, val, split_name = arrays, ev, Path(str(ev_source)).name  # batches are shuffled each epoch
    else:
        train, val = D.split(arrays, n, val_fraction, rng)
        if not len(next(iter(val.values()))):
            val, split_name = train, "training (no held-out split)"
        else:
            split_name = f"held-out {val_fraction:.0%}"
    return train, val, split_name, D.LABELS in arrays


def _probe_outputs(dense, probe, source) -> np.ndarray:
    try:
        return D.run_model(dense, probe, list(probe))[0]
    except Exception as e:
        raise OnnxPruneError(f"the model cannot run on {source}: {str(e).strip().splitlines()[0][:200]}") from None


def _select_outputs(output_name, names, dense_train, has_labels, train) -> list[str]:
    if output_name is not None:
        if output_name not in names:
            raise OnnxPruneError(f"--output {output_name!r} is not a model output ({', '.join(names)})")
        return [output_name]
    n = len(next(iter(train.values())))
    floats = [k for k in names if dense_train[k].dtype.kind == "f" and dense_train[k].ndim
              and dense_train[k].shape[0] == n]  # per-sample float outputs only
    if not floats:
        raise OnnxPruneError("the model has no float output to train against")
    return floats[:1] if has_labels else floats


def _loss_terms(train_base, selected, has_labels, train, dense_train):
    terms, targets, infos = [], {}, []
    for i, name in enumerate(selected):
        out = dense_train[name]
        target = f"onnxprune_target{i}"
        if has_labels:
            labels = train[D.LABELS].astype(np.int64)
            if out.ndim < 2 or labels.shape != (out.shape[0], *out.shape[2:]):
                raise OnnxPruneError(f"labels of shape {labels.shape} do not fit output {name} of shape {out.shape} "
                                     "(want one class id per sample, classes on axis 1)")
            terms.append(LossTerm("ce", name, logits_of(train_base, name), target))
            targets[target] = labels
            infos.append(onnx.helper.make_tensor_value_info(target, onnx.TensorProto.INT64, ["N", *labels.shape[1:]]))
        else:
            tensor = logits_of(train_base, name)
            if D.is_classifier(out):
                terms.append(LossTerm("kl", name, tensor, target))
                targets[target] = _as_probabilities(train_base, name, tensor, out)
            else:
                terms.append(LossTerm("mse", name, name, target))
                targets[target] = out.astype(np.float32)
            infos.append(onnx.helper.make_tensor_value_info(target, onnx.TensorProto.FLOAT, ["N", *out.shape[1:]]))
    return terms, targets, infos


def _as_probabilities(model, name: str, logits: str, out: np.ndarray) -> np.ndarray:
    """The dense output as class probabilities: softmax of logits, or as produced under a final
    Softmax (already probabilities) or LogSoftmax (log-probabilities)."""
    if logits == name:
        return D.softmax(out)
    final = next(n for n in model.graph.node if name in n.output)
    return (np.exp(out) if final.op_type == "LogSoftmax" else out).astype(np.float32)


def _metric(selected, has_labels, val, dense_val, pruned_out, split_name) -> dict:
    name = selected[0]
    n = len(dense_val[name])
    if has_labels:
        m = {"name": "accuracy", "dense": D.accuracy(dense_val[name], val[D.LABELS]),
             "pruned": D.accuracy(pruned_out[name], val[D.LABELS])}
        m["extra"] = {"top-1 agreement": D.fidelity(pruned_out[name], dense_val[name]).get("top1_agreement", float("nan"))}
    else:
        f = D.fidelity(pruned_out[name], dense_val[name])
        if "top1_agreement" in f:
            m = {"name": "top-1 agreement", "dense": 1.0, "pruned": f["top1_agreement"]}
            m["extra"] = {"relative error": f["relative_error"]}
        else:  # lower is better: ‖pruned − dense‖ / ‖dense‖ on the same inputs
            m = {"name": "relative error", "dense": 0.0, "pruned": f["relative_error"]}
    m.update({"samples": n, "split": split_name, "output": name})
    return m


@contextlib.contextmanager
def _workdir(path):
    if path is not None:
        p = Path(path)
        p.mkdir(parents=True, exist_ok=True)
        yield p
        return
    tmp = Path(tempfile.mkdtemp(prefix="onnxprune-"))
    try:
        yield tmp
    finally:
        shutil.rmtree(tmp, ignore_errors=True)


class _Bar:
    def __init__(self, bar):
        self.bar = bar
        self.loss = float("nan")

    def update(self, n, loss):
        self.loss = loss
        self.bar.update(n)


@contextlib.contextmanager
def _progress_bars(total: int, label: str):
    import click

    holder = {}
    with click.progressbar(length=total, label=f"{label:<11}", file=sys.stderr, show_pos=True, width=28,
                           item_show_func=lambda _: f"loss {holder['bar'].loss:.4f}" if "bar" in holder else "") as bar:
        holder["bar"] = _Bar(bar)
        yield holder["bar"]


class _NoBar:
    def update(self, n, loss):
        pass


@contextlib.contextmanager
def _no_progress(total: int, label: str):
    yield _NoBar()
