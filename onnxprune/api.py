"""The Python API. `prune()` is the pipeline's table of contents: one stage after another, each a
function of its own module with explicit inputs and outputs (docs/ARCHITECTURE.md). It reports
through `logging.getLogger("onnxprune")` and returns a structured result; printing and progress
bars belong to the CLI, which builds the same `PruneConfig`.
"""
from __future__ import annotations

import logging
import os
import time
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import onnx

from . import compress as C
from . import costs, device, export, loading, planning, plots, report, rewrite, search, tasks, train
from .config import PruneConfig
from .data import prepare as prepare_data
from .data import feed
from .errors import OnnxPruneError, QualityError
from .export import with_weights
from .metrics import MIN_JUDGED, collapse, drop_points, metric, output_fidelity
from .plumbing import warn

stage = logging.getLogger("onnxprune.stage")  # what a run is doing; a terminal shows it


@dataclass
class PruneResult:
    model: onnx.ModelProto  # the compressed model, as written (or as it would be)
    report: dict
    masks: dict[str, np.ndarray]

    def summary(self) -> str:
        return report.format_table(self.report)

    def save(self, path: str | os.PathLike) -> None:
        export.save_atomic(self.model, Path(path))


def prune(model, rate: float | None = None, *, data=None, eval_data=None, config: PruneConfig | None = None,
          progress=train.no_progress, **options) -> PruneResult:
    """Prune `model` (a path or an onnx.ModelProto) to `rate` and recover accuracy by training.

    Args:
        model: the ONNX model, a path or an onnx.ModelProto. Never modified.
        rate: fraction of the prunable weights (or, with `rate_of='macs'`, MACs) to remove.
        data / eval_data: a .npz path or a dict of arrays named like the model's inputs, plus
            optional 'labels'. With labels: cross-entropy; without: distillation from the dense
            model; with no data: synthesized inputs.
        config: a whole `PruneConfig`; otherwise `options` are its fields by their flat names,
            as the CLI spells them: structure, block, nm, scope, layer_floor, rate_of,
            channel_multiple, layer_rates, exclude, method, finetune_baseline, mode, shrink (what to prune);
            schedule or epochs, finetune_epochs, lam, eps, reweight_every, distill, always_reweight, reconstruct, lr,
            finetune_lr,
            batch_size; val_fraction, output_name, input_shapes, synth_samples, seed (data);
            quantize, target, qat, bits, storage (compression); simplify, optimize, inputs (preparation);
            out, workdir, resume, latency, threads, max_drop, plot, device (output); max_loss,
            min_rate, max_rate, max_trials, jobs, ray (search: with max_loss instead of rate, the
            tool chooses the rate). See `onnxprune --help`.
        progress: a factory `(total steps, label) -> context manager with .update(steps, loss)`.

    Every option is checked before any file is read.
    """
    if config is not None and (options or rate is not None):
        raise TypeError("give either config= or options (rate=, structure=…), not both")
    cfg = config or PruneConfig.from_options(rate=rate, **options)
    started = time.perf_counter()
    out = cfg.output.out
    source = Path(model) if isinstance(model, (str, os.PathLike)) else None
    if out is not None:
        export.check_output_path(Path(out), source)
    if cfg.search.max_loss is not None:  # the tool chooses the rate: whole runs as trials
        return search.run(model, data, eval_data, cfg, progress, prune)
    with device.using(cfg.output.device):
        return _run(model, data, eval_data, cfg, progress, source, started)


def _run(model, data, eval_data, cfg: PruneConfig, progress, source: Path | None, started: float) -> PruneResult:
    """The stages, one after another, on the run's device."""
    warnings: list[str] = []
    out = cfg.output.out
    rng = np.random.default_rng(cfg.data.seed)
    conflict = device.runtime_conflict()
    if conflict:
        warn(warnings, conflict)

    stage.info("loading %s", source or "the model")
    loaded = loading.load(model, cfg.pruning.exclude, cfg.preparation.simplify, cfg.preparation.optimize,
                          cfg.preparation.inputs)
    stage.info("data: the dense model on %s", "the given samples" if data is not None else "synthesized inputs")
    dataset = prepare_data(loaded.dense, loaded.base, data, eval_data, cfg.data, rng, warnings)
    stage.info("planning %s groups over %d layers", cfg.pruning.structure, len(loaded.layers))
    plan = planning.plan(loaded, dataset, cfg)
    for name, why in plan.fixed.items():
        warn(warnings, f"layer {name} looks like a fixed transform ({why}); pruning it breaks the transform: "
                       f"leave it out with --exclude {name}")
    trained = train.train(loaded, dataset, plan, cfg, rng, progress, warnings)

    stage.info("checking and writing the pruned model")
    masked = with_weights(loaded.base, trained.weights)
    masked_out = dataset.outputs(masked, "the pruned model")
    if trained.phases and plan.quantizer is None:
        _compare_with_cutting(masked_out, loaded, dataset, plan, warnings)
    rewritten = rewrite.rewrite(plan.structure, masked, masked_out, plan.groups, trained.masks, plan.shapes,
                                dataset.outputs, cfg.pruning.shrink, warnings)
    compressed = C.compress(rewritten.model, rewritten.outputs, loaded.base, loaded.layers, trained.masks,
                            plan.keep_float, dataset, cfg.compression, warnings)
    final = export.public(compressed.model, loaded.prepared.original)
    scores = {name: score(dataset, outs) for name, outs in
              (("float", rewritten.outputs), ("final", compressed.outputs))}
    if scores["final"].get("note"):
        warn(warnings, scores["final"]["note"])
    collapsed = _gate(dataset, compressed.outputs, scores["final"], cfg.output.max_drop, warnings,
                      lambda: dataset.outputs(compressed.model, "the pruned model", dataset.train))
    _refuse_unsound(dataset, compressed.outputs, trained)
    written = export.write(final, Path(out), loaded.prepared.original) if out is not None else None

    measured = costs.measure(loaded.base, rewritten.model, compressed.model, dataset.model_feed(dataset.probe),
                             lambda b: dataset.model_feed(feed(dataset.train, dataset.input_names, b)),
                             dataset.fixed_batch, plan.shapes, cfg.output.latency, cfg.output.threads,
                             cfg.compression.int8)
    scores["final"]["collapse"] = collapsed
    facts = report.build(cfg, loaded, dataset, plan, trained, rewritten, compressed, written, measured, scores,
                         warnings, time.perf_counter() - started)
    facts["options"].update(data=_where(data), eval_data=_where(eval_data))
    if cfg.output.plot is not None:
        facts["plots"] = plots.write(facts, Path(cfg.output.plot))
    return PruneResult(final, facts, trained.masks)


def _where(arrays) -> str | None:
    """How the report names a data source: its path, or what was passed in memory."""
    if arrays is None or isinstance(arrays, (str, os.PathLike)):
        return None if arrays is None else str(arrays)
    return "arrays given in memory"


WARN_DROP = 5.0  # points of a share (accuracy, agreement, a task's score) lost: a loud warning without --max-drop
WARN_ERROR = 25.0  # points of relative error, where an output has no task metric


def _gate(dataset, outputs, score: dict, max_drop: float | None, warnings: list[str], on_train) -> str | None:
    """A collapsed model (on any output it was trained on) is a loud warning; with --max-drop, it
    or a larger loss writes nothing. Judged on the training samples too when the held-out ones
    are too few to tell agreement from chance (`on_train`: the pruned outputs on them)."""
    got = dict(zip(dataset.output_names, outputs))
    dense = dataset.dense_val
    if len(next(iter(dense.values()))) < MIN_JUDGED and len(next(iter(dataset.train.values()))) > len(
            next(iter(dense.values()))):
        extra = dict(zip(dataset.output_names, on_train()))
        dense = {k: np.concatenate([dense[k], dataset.dense_train[k]]) for k in dataset.selected}
        got = {k: np.concatenate([got[k], extra[k]]) for k in dataset.selected}
    found = {name: collapse(dense[name], got[name], name in dataset.classes) for name in dataset.selected}
    collapsed = "; ".join(f"{name}: {why}" for name, why in found.items() if why) or None
    for name, why in found.items():
        if why:
            warn(warnings, f"the pruned model looks collapsed on {name}: {why}")
    drop = drop_points(score)
    loud = WARN_ERROR if score["name"] == "relative error" else WARN_DROP
    if max_drop is None and not collapsed and drop > loud:
        warn(warnings, f"the pruned model lost {drop:.1f} points of {score['name']} on {score['samples']} "
                       f"{score['split']} samples (over {loud:g}; {score['dense']:.1%} -> {score['pruned']:.1%}): "
                       "check it on the task before using it; --max-drop refuses such a model")
    if max_drop is not None:
        if collapsed or drop > max_drop:
            raise QualityError(f"the pruned model lost {drop:.2f} points of {score['name']} "
                               f"(--max-drop {max_drop:g})" + (f" and looks collapsed: {collapsed}" if collapsed else "")
                               + "; nothing was written")
    return collapsed


def _refuse_unsound(dataset, outputs, trained) -> None:
    """Nothing is written that is not a model: every trained weight finite and zero where its mask
    says so (NaN·0 is NaN, so a diverged weight would also undo the sparsity), and every output
    finite wherever the dense model's is, on the held-out samples."""
    for w, m in trained.masks.items():
        got = trained.weights[w]
        if not np.isfinite(got).all():
            raise OnnxPruneError(f"the pruned weight {w} holds non-finite values; nothing was written")
        if np.count_nonzero(got[m == 0]):
            raise OnnxPruneError(f"the pruned weight {w} is non-zero where its mask removed it; nothing was written")
    got = dict(zip(dataset.output_names, outputs))
    for name, dense in dataset.dense_val.items():
        if name in got and dense.dtype.kind == "f":
            bad = ~np.isfinite(got[name]) & np.isfinite(dense)
            if bad.any():
                raise OnnxPruneError(f"the pruned model's output {name} is non-finite in {int(bad.sum())} of "
                                     f"{bad.size} values where the dense model's is finite; nothing was written")


def _compare_with_cutting(trained_out, loaded, dataset, plan, warnings) -> None:
    """Warn where the trained model scores clearly worse on the evaluation samples (over a point, and
    over twice the loss) than the dense weights cut to the same rate. Adam moves every weight by about the learning rate whatever its scale,
    so on a model with small weights a few steps can undo what a harmless cut kept (PP-LCNet at
    0.3: relative error 0.02 cut, 0.32 after 14 steps at 1e-4, 0.02 at 1e-5)."""
    masks = plan.select(plan.dense_weights)
    cut = {w: plan.dense_weights[w] * masks[w] for w in plan.dense_weights}
    got = {"trained": score(dataset, trained_out),
           "cut": score(dataset, dataset.outputs(with_weights(loaded.base, cut), "the pruned model"))}
    lost = {k: drop_points(m) for k, m in got.items()}
    if lost["trained"] > max(2 * lost["cut"], lost["cut"] + 1):  # clearly worse, not a sample's noise
        warn(warnings, f"training left the model worse than cutting the dense weights alone would ({lost['trained']:.3g} "
                       f"vs {lost['cut']:.3g} points of {got['cut']['name']} lost on the evaluation samples): Adam's "
                       "steps may be too large for this model's weights; try a smaller --lr and --finetune-lr (e.g. "
                       "1e-5), or --method magnitude for the cut alone")


def score(dataset, outputs) -> dict:
    """The headline metric, and every trained output's fidelity in its own terms."""
    got = dict(zip(dataset.output_names, outputs))
    name = dataset.selected[0]
    dense = dataset.dense_val
    if dataset.val_labels is None and name in dataset.tasks:  # the task's own terms make the headline
        m = tasks.headline(dataset.tasks[name], dense[name], got[name], dataset.split, name)
    else:
        m = metric(name, dataset.val_labels, dense[name], got[name], dataset.split, name in dataset.classes)
    m["outputs"] = {k: output_fidelity(dense[k], got[k], k in dataset.classes) for k in dataset.selected}
    for k, kind in dataset.tasks.items():
        m["outputs"][k]["task"] = {"kind": kind, **tasks.score(kind, dense[k], got[k])}
    return m


__all__ = ["prune", "PruneResult", "PruneConfig", "OnnxPruneError"]
