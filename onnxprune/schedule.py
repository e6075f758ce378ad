"""The train stage's schedule: reweighted training, hard pruning to the rate, then masked
fine-tuning (or the magnitude baselines), all on one Trainer.
"""
from __future__ import annotations

import math
import time
from dataclasses import dataclass, field

import numpy as np

from . import batchnorm
from .config import Schedule
from .errors import Diverged
from .groups import GroupPlan
from .plumbing import log
from .training import Trainer, coef_name, correction_name, mask_name

__all__ = ["Schedule", "Phase", "run_phase", "reweighted", "finetune", "current_weights"]


@dataclass
class Phase:
    name: str
    epochs: int
    steps: int = 0
    seconds: float = 0.0
    final_task_loss: float = float("nan")
    history: list = field(default_factory=list)  # (step, task loss, penalty, what on_refresh said) every refresh


def batches(n: int, batch_size: int, rng: np.random.Generator):
    order = rng.permutation(n)
    if n <= batch_size:  # fewer samples than a batch: repeat them (a fixed-batch model needs it full)
        yield np.resize(order, batch_size)
        return
    for start in range(0, n - batch_size + 1, batch_size):  # the ragged tail waits for the next epoch
        yield order[start:start + batch_size]


def steps_per_epoch(n: int, batch_size: int) -> int:
    return 1 if n <= batch_size else n // batch_size


def run_phase(trainer: Trainer, arrays: dict[str, np.ndarray], phase: Phase, lr: float, batch_size: int,
              rng: np.random.Generator, progress, every: int = 0, on_refresh=None, cosine: bool = False,
              after_step=None, ckpt=None, after_epoch=None, lr_scale=None) -> Phase:
    """Train `phase.epochs` epochs; calls `on_refresh()` every `every` steps (and at step 0; what it
    returns goes into the phase's history),
    `after_step(step)` after every optimizer step and `after_epoch(epoch)` after every epoch;
    `lr_scale()`: a factor on the learning rate, read at every step. `ckpt` (resume.Checkpoints): skip the
    epochs a checkpoint already holds, and save one after every epoch."""
    n = len(next(iter(arrays.values())))
    total = phase.epochs * steps_per_epoch(n, batch_size)
    first = ckpt.epochs_done(phase.name) if ckpt else 0
    phase.steps = first * steps_per_epoch(n, batch_size)
    if ckpt and first < phase.epochs:  # the generator as the first phase still to run left it
        ckpt.restore_rng(rng)
    done = ckpt.record(phase.name) if first else {}  # what the checkpointed epochs logged
    phase.history = [tuple(h) for h in done.get("history", [])]
    phase.final_task_loss = done.get("final_task_loss", float("nan"))
    start = time.perf_counter() - done.get("seconds", 0.0)
    task = penalty = float("nan")
    with progress(total, phase.name) as bar:
        bar.update(phase.steps, task)
        for epoch in range(first, phase.epochs):
            for idx in batches(n, batch_size, rng):
                said = None
                if on_refresh and every and phase.steps % every == 0:
                    said = on_refresh()
                # cosine decay lets fine-tuning settle into the masked minimum
                now = lr * (lr_scale() if lr_scale else 1.0)
                trainer.set_learning_rate(now * 0.5 * (1 + math.cos(math.pi * phase.steps / total)) if cosine else now)
                _, task, penalty = trainer.step({k: arrays[k][idx] for k in trainer.input_names})
                if not (math.isfinite(task) and math.isfinite(penalty)):  # NaN weights follow: stop now
                    raise Diverged(phase.name, phase.steps + 1)
                if every and phase.steps % every == 0:
                    phase.history.append((phase.steps, task, penalty, said))
                phase.steps += 1
                if after_step:
                    after_step(phase.steps)
                bar.update(1, task)
            log.info("%s: epoch %d/%d, step %d/%d, task loss %.4g, penalty %.4g", phase.name, epoch + 1,
                     phase.epochs, phase.steps, total, task, penalty)
            if after_epoch:  # first: it may set the weights the checkpoint then holds
                after_epoch(epoch + 1)
            if ckpt:
                phase.seconds, phase.final_task_loss = time.perf_counter() - start, task
                ckpt.save(trainer, phase, epoch + 1, rng)
    phase.seconds = time.perf_counter() - start
    if first < phase.epochs:
        phase.final_task_loss = task
    return phase


def current_weights(trainer: Trainer, plan: GroupPlan) -> dict[str, np.ndarray]:
    return {w: trainer.get(w) * trainer.get(mask_name(w)) for w in plan.tensors}


def reweighted(trainer: Trainer, arrays, plan: GroupPlan, select, sched: Schedule, rng,
               progress, quantizer=None, ckpt=None, restart=None, keeper=None) -> tuple[dict, list[Phase]]:
    """`select(weights) -> masks`: the hard-pruning rule applied after the reweighted phase;
    `quantizer`, `restart`: what masked fine-tuning trains against and starts from (see `finetune`)."""
    penalized = plan.penalized

    def norms():
        return plan.sq_norms({w: trainer.get(w) for w in penalized})

    # ε scales with each layer's (or channel space's) own weights, so one setting suits any fan-in
    start = norms()
    per_unit = np.bincount(plan.unit, minlength=len(plan.units))
    unit_mean = np.bincount(plan.unit, weights=start, minlength=len(plan.units)) / np.maximum(per_unit, 1)
    eps = sched.eps * unit_mean[plan.unit] + 1e-30

    # each group weighs what removing it saves, so Σ weight·P·‖W‖² counts weights still alive:
    # otherwise a cheap group (an early layer's filter) is as tempting to kill as a costly one
    weight = plan.removal_sizes / max(plan.removal_sizes.sum(), 1)

    def refresh():
        now = norms()
        p = sched.lam * weight / (now + eps)
        for w in penalized:
            trainer.set(coef_name(w), plan.expand(p, w))
        return float(np.mean(now > 0.01 * start))  # the share of groups still above 1% of their start

    phases = [run_phase(trainer, arrays, Phase("reweighted", sched.epochs), sched.lr, sched.batch_size, rng,
                        progress, every=sched.reweight_every, on_refresh=refresh, ckpt=ckpt)]
    for w in penalized:
        trainer.set(coef_name(w), np.zeros(plan.tensors[w], np.float32))
    masks = ckpt.masks() if ckpt else None  # chosen before the interruption: keep them
    if masks is None:
        masks = select(current_weights(trainer, plan))
        if ckpt:
            ckpt.save_masks(masks)
    phases.append(finetune(trainer, arrays, masks, Phase("fine-tune", sched.finetune_epochs), sched, rng, progress,
                           quantizer, ckpt, restart, keeper))
    return masks, phases


def finetune(trainer: Trainer, arrays, masks: dict[str, np.ndarray], phase: Phase, sched: Schedule, rng,
             progress, quantizer=None, ckpt=None, restart=None, keeper=None) -> Phase:
    """Masked fine-tuning. `restart(trainer, masks) -> {name: value}`: the weights it starts from
    (reconstruction), unless a checkpoint already holds fine-tuned epochs. `keeper`
    (train.BestOnHeldOut): scores the start and every epoch on held-out samples and leaves the
    trainer at the best of them. With a `quantizer`
    (quantization-aware: `quantize.FakeInt8` or `cluster.Codebooks`), the forward pass uses Q(W·M):
    the correction Q(W·M) − W·M is refreshed after every step, and the quantizer itself
    (codebooks) every `reweight_every` steps."""
    for w, m in masks.items():
        trainer.set(mask_name(w), m)
    if restart and not (ckpt and ckpt.epochs_done(phase.name)):
        for name, value in restart(trainer, masks).items():
            trainer.set(name, value)
    if trainer.has(batchnorm.SWITCH):  # BatchNorm on batch statistics from here on
        trainer.set(batchnorm.SWITCH, np.ones(1, np.float32))
    if quantizer is None:
        if keeper:
            keeper.start(trainer, resumed=bool(ckpt and ckpt.epochs_done(phase.name)))
        done = run_phase(trainer, arrays, phase, sched.finetune_lr, sched.batch_size, rng, progress, cosine=True,
                         ckpt=ckpt, after_epoch=keeper.after_epoch if keeper else None,
                         lr_scale=(lambda: keeper.scale) if keeper else None)
        if keeper:
            keeper.finish(trainer, done)
        return done
    names = [n for n in quantizer.names if n in masks]
    quantizer.start({n: trainer.get(n) * masks[n] for n in names}, masks)

    def correct(step: int) -> None:
        for n in names:
            w = trainer.get(n) * masks[n]
            if step and step % sched.reweight_every == 0:
                quantizer.refine(n, w, masks[n])
            trainer.set(correction_name(n), quantizer(n, w, masks[n]) - w)
    correct(0)
    phase.name = f"{phase.name} ({quantizer.label})"
    return run_phase(trainer, arrays, phase, sched.finetune_lr, sched.batch_size, rng, progress, cosine=True,
                     after_step=correct, ckpt=ckpt)
