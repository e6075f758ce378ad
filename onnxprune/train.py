"""The train stage: recover accuracy while pruning. End to end (the whole graph in ORT: the
reweighted phase, hard pruning, masked fine-tuning; or the magnitude baselines), layer by layer
(`--mode layerwise`), or not at all (one-shot magnitude). Returns the masks and the trained
weights with W·M folded (and Q(W·M) when fine-tuning was quantization-aware).
"""
from __future__ import annotations

import contextlib
import dataclasses
import shutil
import tempfile
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import onnx

from . import batchnorm, layerwise, memory, reconstruct, standins, tasks
from .config import PruneConfig, Schedule
from .errors import Diverged, OnnxPruneError
from .data import LABELS, Dataset
from .layers import trainable_parameters
from .loading import Loaded
from .export import with_weights
from .losses import loss_terms
from .metrics import fidelity
from .planning import Plan
from .binding import fold_ifs
from .plumbing import shapes_at, tensor_shapes, warn
from .resume import Checkpoints, SharedPhase, fingerprint
from .schedule import Phase, current_weights, finetune, reweighted
from .training import Trainer, build_training_graph, coef_name, correction_name, mask_name


@dataclass
class Trained:
    masks: dict[str, np.ndarray]
    weights: dict[str, np.ndarray]  # every trained tensor, pruned ones exactly zero where masked
    phases: list[Phase]
    loss: str  # what was minimized, for the report
    schedule: Schedule  # as run (a fixed-batch model sets the batch size)
    notes: list[str] = dataclasses.field(default_factory=list)  # how the graph was made trainable


def no_progress(total: int, label: str):
    """The default progress: nothing shown. A progress factory returns a context manager whose
    value has `update(steps, loss)`; the CLI passes click progress bars."""
    return contextlib.nullcontext(_Silent())


class _Silent:
    def update(self, n, loss):
        pass


def train(loaded: Loaded, data: Dataset, plan: Plan, cfg: PruneConfig, rng: np.random.Generator,
          progress=no_progress, warnings: list[str] | None = None) -> Trained:
    warnings = warnings if warnings is not None else []
    sched = cfg.schedule
    if data.fixed_batch and data.fixed_batch != sched.batch_size:
        warn(warnings, f"the model's inputs fix the batch size at {data.fixed_batch}; "
                       f"training uses batches of {data.fixed_batch}")
        sched = dataclasses.replace(sched, batch_size=data.fixed_batch)
    quantizer = plan.quantizer
    notes: list[str] = []
    if cfg.pruning.mode == "layerwise":
        masks, weights, phases = _layerwise(loaded, data, plan, cfg, sched, rng, progress)
        loss = "mean squared error to each layer's dense output (layer-wise reconstruction)"
    elif cfg.pruning.trains:
        masks, weights, phases, loss, notes, sched = _end_to_end(loaded, data, plan, cfg, sched, rng, progress,
                                                                   warnings)
    else:
        masks = plan.select(plan.dense_weights)
        weights = {w: plan.dense_weights[w] * masks[w] for w in plan.dense_weights}
        if sched.reconstruct:
            held = held_out_rows(len(data.train[data.input_names[0]]), 1, cfg.data.seed)
            held = None if held is None else HeldOut(loaded, data, held)
            weights.update(_refit(loaded, data, plan, cfg, held, notes)(weights, masks))
        phases, loss = [], "none (no training)"
        if quantizer:
            quantizer.start({n: weights[n] for n in quantizer.names}, masks)
    if quantizer:  # what training saw: Q(W·M) (int8 values ORT's quantizer reproduces, or codebook entries)
        for n in quantizer.names:
            weights[n] = quantizer(n, weights[n], masks[n])
    return Trained(masks, weights, phases, loss, sched, notes)


def _end_to_end(loaded, data, plan, cfg, sched, rng, progress, warnings):
    groups, quantizer = plan.groups, plan.quantizer
    # training sees samples first, whatever the model's layout (constant inputs bound)
    view, view_shapes = data.layout.view(loaded.prepared.train_base), data.layout.view_shapes(plan.shapes)
    original, shapes, folded = training_graph(view, data.inputs(data.train), sched.batch_size, data.fixed_batch,
                                              view_shapes)
    terms, targets = loss_terms(original, data.selected, data.train.get(LABELS), data.dense_train, data.classes,
                                sched.distill)
    arrays = as_float32({**data.inputs(data.train), **targets})
    # the user's parameters, found in the user's graph: a stand-in's own constants are not trained
    wanted = set(groups.tensors) | set(trainable_parameters(original, loaded.layers))
    # …and only those the written graph stores (not constants of the view, not weights of folded If branches)
    stored = {t.name for t in loaded.base.graph.initializer}
    trainable = [t.name for t in original.graph.initializer if t.name in wanted and t.name in stored]
    corrected = set(quantizer.names) if quantizer else set()
    frozen = ([mask_name(w) for w in groups.tensors] + [coef_name(w) for w in groups.penalized]
              + [correction_name(w) for w in groups.tensors if w in corrected])
    out = cfg.output
    easy = None
    if cfg.pruning.method == "reweighted" and not sched.always_reweight:
        easy = _hard_pruning_is_harmless(loaded, data, plan)
    penalized_phase = cfg.pruning.method == "reweighted" and not easy
    norms = len(batchnorm.trainable_norms(original, stored))

    stats_break = None  # what the dense model does with its BatchNorm statistics recomputed on these samples

    def form_at(batch):
        # BatchNorm: frozen statistics while the penalty shrinks weights (on batch statistics a filter's
        # scale is free, so the penalty could shrink it at no cost), the batch's for fine-tuning
        if batch < batchnorm.MIN_BATCH or stats_break:
            return "frozen"
        return "switch" if penalized_phase and norms else "batch"

    def step_graph(batch, original, shapes):
        expanded, notes = standins.apply(original, shapes)
        graph = build_training_graph(expanded, groups.tensors, set(groups.penalized), terms, shapes, corrected,
                                     norms=form_at(batch), owned=stored)
        return graph, frozen + ([batchnorm.SWITCH] if form_at(batch) == "switch" else []), notes

    def one_step_at(batch):  # for memory.fit: a throwaway trainer at `batch`, one step
        small, small_shapes, _ = training_graph(view, data.inputs(data.train), batch, None, view_shapes)
        graph, fixed, _ = step_graph(batch, small, small_shapes)
        with workdir(None) as wd:
            Trainer(graph, trainable, fixed, wd, sched.lr, out.threads, probe=first_batch(arrays, batch)).step(
                first_batch(arrays, batch))

    measured = None
    if not data.fixed_batch:
        kept = {t.name for t in original.graph.initializer}
        forward = 4 * sum(float(np.prod(d)) for t, d in shapes.items() if t not in kept and len(d)
                          and d[0] == sched.batch_size) / sched.batch_size
        batch, measured, why = memory.fit(sched.batch_size, forward, one_step_at)
        if why:
            warn(warnings, why)
            sched = dataclasses.replace(sched, batch_size=batch)
            original, shapes, folded = training_graph(view, data.inputs(data.train), batch, None, view_shapes)
    held = held_out_rows(len(arrays[data.input_names[0]]), sched.batch_size, cfg.data.seed)
    on_batches = sched.batch_size >= batchnorm.MIN_BATCH
    if norms and on_batches:
        rows = held if held is not None else np.arange(min(len(arrays[data.input_names[0]]), HELD_OUT_MAX))
        stats_break = _recalibration_breaks_task(loaded, data, rows, (original, stored, sched.batch_size,
                                                                      cfg.data.seed))
        on_batches = not stats_break
    form = form_at(sched.batch_size)
    graph, frozen, notes = step_graph(sched.batch_size, original, shapes)
    if measured:
        notes.append(f"a training step measured {measured / 2 ** 20:.0f} MB per sample")
    if folded:
        notes.append(f"{folded} If node(s) decided by tensor shapes trained as the branch they take at the "
                     "training shapes (the written model keeps them)")
    if easy:
        notes.append(f"hard pruning the dense weights alone kept {easy} with the dense model on training "
                     "samples, so the reweighted phase was skipped (λ = 0) and its epochs fine-tune instead "
                     "(--always-reweight runs it)")

    keeper = None
    if held is not None and not quantizer:  # best fine-tuning epoch on samples training never sees
        keeper = BestOnHeldOut(HeldOut(loaded, data, held, (original, stored, sched.batch_size, cfg.data.seed)
                                       if norms and on_batches else None), trainable, groups)
        arrays = {k: np.delete(v, held, axis=0) for k, v in arrays.items()}
    # the refit judges its passes on the held-out rows with the model's own (inference) statistics
    refit = _refit(loaded, data, plan, cfg, keeper and keeper.held.plain(), notes) if sched.reconstruct else None

    def restart(trainer, masks):  # fine-tuning starts from the kept weights refitted to the dense layer outputs
        now = {n: trainer.get(n) * masks[n] if n in masks else trainer.get(n) for n in trainable}
        return {n: v for n, v in refit(now, masks).items() if trainer.has(n)}

    def attempt(sched, keep_checkpoints: bool):
        with workdir(out.workdir) as wd:
            ckpt = _checkpoints(wd, loaded, arrays, cfg, sched, groups, penalized_phase) if keep_checkpoints else None
            trainer = Trainer(graph, trainable, frozen, wd, sched.lr, out.threads, ckpt.checkpoint if ckpt else None,
                              probe=first_batch(arrays, sched.batch_size))
            if keeper:  # a kept work folder keeps the keeper's choice too: a resumed run ends where a whole one does
                keeper.folder = wd if isinstance(ckpt, Checkpoints) else None
            if isinstance(ckpt, SharedPhase) and ckpt.reused:
                notes.append("the reweighted phase was trained once for every trial of this search (it does not "
                             "depend on the rate); this trial started from its checkpoint")
            if penalized_phase:
                masks, phases = reweighted(trainer, arrays, groups, plan.select, sched, rng, progress, quantizer, ckpt,
                                           restart if refit else None, keeper)
            else:  # magnitude + fine-tune: the same total budget, all of it masked fine-tuning
                masks = plan.select(plan.dense_weights)
                phases = [finetune(trainer, arrays, masks, Phase("fine-tune", sched.epochs + sched.finetune_epochs),
                                   sched, rng, progress, quantizer, ckpt, restart if refit else None, keeper)]
            weights = {n: trainer.get(n) for n in trainable}
            weights.update(current_weights(trainer, groups))  # fold W·M: pruned weights exactly zero
        bad = sorted(n for n, w in weights.items() if not np.isfinite(w).all())
        if bad:
            raise Diverged(phases[-1].name, phases[-1].steps, f"weight {bad[0]}")
        return masks, weights, phases

    try:
        masks, weights, phases = attempt(sched, True)
    except Diverged as first:
        # a learning rate too large for this model's weights: once more from the dense weights, 10× smaller
        slower = dataclasses.replace(sched, lr=sched.lr * RETRY_LR, finetune_lr=sched.finetune_lr * RETRY_LR)
        warn(warnings, f"{first}; retrying from the dense weights at a 10× smaller learning rate "
                       f"(--lr {slower.lr:g}, --finetune-lr {slower.finetune_lr:g})")
        try:
            masks, weights, phases = attempt(slower, False)
        except Diverged as again:
            raise OnnxPruneError(f"{again} again at the 10× smaller learning rate ({slower.lr:g}); nothing was "
                                 "written (try a smaller --lr, or --method magnitude for the cut alone)") from None
        sched = slower
    if keeper and keeper.said:
        notes.append(keeper.said)
    if norms and on_batches:  # the running statistics of the weights as written (Q(W·M) when quantized)
        seen = {n: quantizer(n, weights[n], masks[n]) for n in quantizer.names} if quantizer else {}
        written = with_weights(original, {**weights, **seen})
        stats = batchnorm.recalibrate(written, as_float32(data.inputs(data.train)), sched.batch_size,
                                      seed=cfg.data.seed, owned=stored)
        weights.update(stats)
        notes.append(f"BatchNormalization×{norms} " + ("kept its running statistics in the reweighted phase and "
                     "fine-tuned" if form == "switch" else "trained") + " on batch statistics; running statistics "
                     "recomputed from the training samples afterwards")
    elif norms and stats_break:
        notes.append(f"BatchNormalization×{norms} trained with its running statistics frozen: recomputed on the "
                     f"training samples, they change the dense model's outputs ({stats_break} on the held-out "
                     "rows), so these samples do not stand for the data it was trained on")
    elif norms:
        notes.append(f"BatchNormalization×{norms} trained with its running statistics frozen (batches of "
                     f"{sched.batch_size} are under {batchnorm.MIN_BATCH} samples)")
    return masks, weights, phases, "; ".join(t.describe() for t in terms), notes, sched


RETRY_LR = 0.1  # after a divergence, the learning rates are scaled by this for the one retry


HELD_OUT_SHARE, HELD_OUT_MAX, HELD_OUT_MIN = 0.1, 512, 32


def held_out_rows(n: int, batch: int, seed: int) -> np.ndarray | None:
    """The training rows set aside to choose the best fine-tuning epoch: a seeded 10% (at most
    512), where at least 32 can go and a full batch is left to train on; else None."""
    k = min(HELD_OUT_MAX, int(n * HELD_OUT_SHARE))
    if k < HELD_OUT_MIN or n - k < batch:
        return None
    return np.sort(np.random.default_rng([seed, 7]).permutation(n)[:k])


RECALIBRATE_ROWS = 256
# the dense model with BatchNorm statistics recomputed on the user's samples must still do its task
# (PP-OCRv4 rec: 4% of lines read the same, its statistics came from other data), else they stay frozen
STATS_MIN_AGREEMENT, STATS_MAX_ERROR = 0.98, 0.05


def _recalibration_breaks_task(loaded, data, rows: np.ndarray, norms) -> str | None:
    """None where the dense model, its BatchNorm statistics recomputed on the training samples as
    training on batch statistics would, still agrees with itself on `rows`; else how far it drifts."""
    held = HeldOut(loaded, data, rows, norms)
    value = held.score({})
    kept = (-value[1] <= STATS_MAX_ERROR if held.unit == "relative error" else value[0] >= STATS_MIN_AGREEMENT)
    return None if kept else held.show(value)


class HeldOut:
    """Training rows set aside to choose between candidate weights: scored against the dense
    model in the task's own terms where it has one (lines read, detections matched…), else top-1
    agreement, ties broken by relative error (higher is better)."""

    def __init__(self, loaded, data, rows: np.ndarray, norms=None):
        self.loaded, self.data, self.norms = loaded, data, norms
        self.name = data.selected[0]
        self.rows = rows
        self.sub = {k: v[rows] for k, v in data.train.items()}
        self.dense = data.dense_train[self.name][rows]
        self.kind = data.tasks.get(self.name)
        self.unit = (tasks.HEADLINE[self.kind] if self.kind else "top-1 agreement" if self.name in data.classes
                     else "relative error")
        # a few batches for BatchNorm's statistics: scoring runs after every epoch (PP-OCRv4 rec: a
        # minute each over 1,024 samples)
        self.calib = as_float32(data.inputs({k: v[:RECALIBRATE_ROWS] for k, v in data.train.items()})) if norms \
            else None

    def score(self, weights: dict[str, np.ndarray]) -> tuple[float, float]:
        if self.norms:  # BatchNorm trains on batch statistics: score with running statistics of these weights
            original, owned, batch, seed = self.norms
            weights = {**weights, **batchnorm.recalibrate(with_weights(original, weights), self.calib, batch,
                                                          seed=seed, owned=owned)}
        model = with_weights(self.loaded.base, weights)
        got = dict(zip(self.data.output_names, self.data.outputs(model, "the model being pruned", self.sub)))[self.name]
        if not np.isfinite(got).all():
            return (-np.inf, -np.inf)
        f = fidelity(got, self.dense, self.name in self.data.classes)
        rel = -f["relative_error"]
        if self.kind:
            return (float(tasks.score(self.kind, self.dense, got)["value"]), rel)
        return (f.get("top1_agreement", rel), rel)

    def plain(self) -> "HeldOut":
        """The same rows, scored with the model's running statistics as they are."""
        return HeldOut(self.loaded, self.data, self.rows)

    def show(self, value: tuple[float, float]) -> str:
        return f"{self.unit} " + (f"{-value[1]:.3f}" if self.unit == "relative error" else f"{value[0]:.1%}")


KEEPER_FILE = "resume_best.npz"
# an epoch that ends below fine-tuning's start (PP-OCRv4 rec from its refit: every epoch at
# --finetune-lr did) goes back to the best weights, and the rest trains at this times the rate
BACKOFF = 0.5


class BestOnHeldOut:
    """Fine-tuning's keeper: the start (the cut, refitted) and every epoch are scored on held-out
    training samples (`HeldOut`) and the trainer ends at the best. Fine-tuning from a good start on
    few samples can lose what it started with."""

    def __init__(self, held: HeldOut, trainable, groups):
        self.held, self.trainable, self.groups = held, trainable, groups
        self.best = self.first = None
        self.said, self.trainer, self.folder = "", None, None
        self.scale, self.backoffs = 1.0, 0  # the learning rate's factor, and how often it was cut

    def _weights(self) -> dict[str, np.ndarray]:
        weights = {n: self.trainer.get(n) for n in self.trainable}
        return {**weights, **current_weights(self.trainer, self.groups)}

    def _snapshot(self) -> dict[str, np.ndarray]:
        return {n: self.trainer.get(n) for n in self.trainable}

    def start(self, trainer, resumed: bool = False) -> None:
        self.trainer = trainer
        if resumed and self.folder and (self.folder / KEEPER_FILE).exists():
            with np.load(self.folder / KEEPER_FILE) as z:
                weights = {n: z[f"w{i}"] for i, n in enumerate(self.trainable)}
                self.first = (tuple(z["first"]), 0, None)
                self.best = (tuple(z["best"]), int(z["epoch"]), weights)
                self.scale, self.backoffs = float(z["scale"]), int(z["backoffs"])
            return
        self.best = self.first = (self.held.score(self._weights()), 0, self._snapshot())
        self._save()

    def after_epoch(self, epoch: int) -> None:
        s = self.held.score(self._weights())
        if s > self.best[0]:
            self.best = (s, epoch, self._snapshot())
        elif s < self.first[0]:  # fine-tuning is losing what it started with: back to the best, slower
            for n, w in self.best[2].items():
                self.trainer.set(n, w)
            self.scale *= BACKOFF
            self.backoffs += 1
        self._save()

    def _save(self) -> None:
        if self.folder:
            (value, epoch, weights), first = self.best, self.first[0]
            np.savez(self.folder / KEEPER_FILE, best=np.array(value), first=np.array(first), epoch=np.array(epoch),
                     scale=np.array(self.scale), backoffs=np.array(self.backoffs),
                     **{f"w{i}": weights[n] for i, n in enumerate(self.trainable)})

    def finish(self, trainer, phase) -> None:
        value, epoch, weights = self.best
        if epoch != phase.epochs:
            for n, w in weights.items():
                trainer.set(n, w)
        what = "its start" if epoch == 0 else f"epoch {epoch} of {phase.epochs}"
        self.said = (f"fine-tuning kept {what}, the best on {len(self.held.rows)} held-out training samples: "
                     f"{self.held.show(value)} (its start: {self.held.show(self.first[0])})")
        if self.backoffs:
            self.said += (f"; {self.backoffs} epoch(s) ended below the start: each went back to the best weights "
                          f"and the learning rate was halved (to {self.scale:g}× --finetune-lr)")


def _refit(loaded, data, plan, cfg, held: HeldOut | None, notes: list[str]):
    """`(weights, masks) -> changed tensors`: reconstruction of the kept weights against the dense
    model's layer outputs on training samples (its own seeded generator: the training order stays);
    with `held`, the start and each pass are scored on those held-out rows and the best is kept."""
    view = data.layout.view(loaded.prepared.train_base)
    arrays = as_float32(data.inputs(data.train))
    if held is not None:
        arrays = {k: np.delete(v, held.rows, axis=0) for k, v in arrays.items()}

    def refit(weights, masks):
        changed, scores = reconstruct.reconstruct(view, loaded.layers, plan.dense_weights, weights, masks, arrays,
                                                  data.input_names, np.random.default_rng(cfg.data.seed),
                                                  score=held.score if held else None)
        if scores:
            (kept, value), rest = scores[0], scores[1:]
            others = ", ".join(f"{'the cut' if p == 0 else f'pass {p}'} {held.show(v)}" for p, v in rest)
            notes.append(f"refit of the kept weights to the dense model's layer outputs: kept "
                         f"{'the cut as it was' if kept == 0 else f'pass {kept} of {reconstruct.PASSES}'} "
                         f"({held.show(value)} on {len(held.rows)} held-out training samples; {others})")
        return changed
    return refit


def _checkpoints(wd, loaded, arrays, cfg, sched, groups, penalized_phase):
    """A kept work folder gets a checkpoint after every epoch; a search's trial shares one
    reweighted phase with every other trial; otherwise none."""
    options = cfg.training_options()
    if cfg.output.workdir is not None:
        return Checkpoints(wd, fingerprint(loaded.original.SerializeToString(), arrays, options), cfg.output.resume)
    if cfg.search.shared is not None and penalized_phase:
        options["pruning"] = {k: v for k, v in options["pruning"].items() if k != "rate"}
        options["groups"] = {"tensors": sorted(groups.tensors), "penalized": sorted(groups.penalized)}
        return SharedPhase(Path(cfg.search.shared), fingerprint(loaded.original.SerializeToString(), arrays, options),
                           sched.epochs)
    return None


HARMLESS_AGREEMENT, HARMLESS_ERROR = 0.995, 0.05


def _hard_pruning_is_harmless(loaded, data, plan, rows: int = 1024) -> str | None:
    """What the dense model's answers keep when its smallest groups are simply cut (on up to
    `rows` training samples), if that is nearly all of them (top-1 agreement ≥ 99.5%, or relative
    error ≤ 5%); else None. Then the penalty has nothing to move, and on a converged model its
    phase only costs accuracy that fine-tuning from the dense weights keeps (LeNet-5 at 10×: 97.87%
    reweighted vs 98.17% magnitude + fine-tune, 3 seeds)."""
    masks = plan.select(plan.dense_weights)
    model = with_weights(loaded.base, {w: plan.dense_weights[w] * m for w, m in masks.items()})
    sub = {k: v[:rows] for k, v in data.train.items()}
    name = data.selected[0]
    got = dict(zip(data.output_names, data.outputs(model, "the one-shot pruned model", sub)))[name]
    f = fidelity(got, data.dense_train[name][:rows], name in data.classes)
    if "top1_agreement" in f:
        return f"{f['top1_agreement']:.1%} top-1 agreement" if f["top1_agreement"] >= HARMLESS_AGREEMENT else None
    return f"{f['relative_error']:.3f} relative error" if f["relative_error"] <= HARMLESS_ERROR else None


def _layerwise(loaded, data, plan, cfg, sched, rng, progress):
    """Each layer's share comes from the chosen scope over the dense weights (global: magnitude
    ranking with floors); then each layer is reconstructed at exactly its share."""
    shares = {w: 1 - float(m.sum()) / m.size for w, m in plan.select(plan.dense_weights).items()}

    def plan_of(layers):
        return plan.structure.plan(layers, {layer.weight: plan.dense_weights[layer.weight] for layer in layers},
                                   model=loaded.base, shapes=plan.shapes)

    def select_of(groups):  # one node's weights (an LSTM's W and R) share its count of weights removed
        sizes = {t: int(np.prod(groups.tensors[t])) for t in groups.counted}
        share = sum(shares[t] * n for t, n in sizes.items()) / sum(sizes.values())
        scope = "layer" if len(sizes) == 1 else "global"
        return lambda w: plan.select(w, groups, rate=share, scope=scope)

    with workdir(cfg.output.workdir) as wd:
        return layerwise.run(data.layout.view(loaded.prepared.train_base), loaded.layers, plan_of, select_of,
                             as_float32(data.inputs(data.train)), data.input_names, sched, rng, progress, wd,
                             cfg.output.threads, data.layout.view_shapes(plan.shapes), plan.quantizer)


def training_graph(model: onnx.ModelProto, arrays: dict[str, np.ndarray], batch: int, fixed: int | None,
                   one: dict | None = None):
    """The graph training runs on, its tensor shapes at the training batch size (stand-ins are
    built for the shapes they run at: measured at one sample and two, and extrapolated), and how
    many If nodes were folded: an If decided by tensor shapes (silero-vad's `if x.dim() == 2`)
    takes one branch at those shapes, and an If has no gradient rule. Training batches are
    always full, so this holds for every step; the written model keeps its If nodes. `one`: the
    shapes at `fixed or 1` samples when the plan stage measured them already."""
    folded = 0
    while True:
        shapes = one or tensor_shapes(model, as_float32(first_batch(arrays, fixed or 1)))
        one = None  # after a fold the graph has new tensors: measure again
        if not fixed:
            shapes = shapes_at(shapes, tensor_shapes(model, as_float32(first_batch(arrays, 2))), batch)
        model, n = fold_ifs(model, shapes)
        if not n:
            return model, shapes, folded
        folded += n


def as_float32(arrays: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
    """Half-precision arrays widened: training runs in float32."""
    return {k: v.astype(np.float32) if v.dtype.kind == "f" and v.dtype != np.float32 else v for k, v in arrays.items()}


def first_batch(arrays: dict[str, np.ndarray], size: int) -> dict[str, np.ndarray]:
    """One training batch (samples repeated when there are fewer): the step graph is built for its shapes."""
    rows = np.resize(np.arange(len(next(iter(arrays.values())))), size)
    return {k: v[rows] for k, v in arrays.items()}


@contextlib.contextmanager
def workdir(path):
    """The given folder (kept), or a temporary one (removed)."""
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
