"""Never lose work: with `--workdir`, training leaves a checkpoint there after every epoch (the step
graph's whole state: weights, optimizer moments and step count, and the masks, penalty coefficients
and quantization corrections, since those are frozen tensors of it), the masks once hard pruning has
chosen them, and a progress file with the random generator's state. `--resume` continues from
it, and gives the same model an uninterrupted run would have. A fingerprint of the model, the
data and every option that shapes training guards against resuming a different job.
"""
from __future__ import annotations

import hashlib
import json
import os
from pathlib import Path

import numpy as np

from .errors import OnnxPruneError

PROGRESS, CHECKPOINT, MASKS = "resume.json", "resume.ckpt", "resume_masks.npz"


def _tmp(name: str) -> str:
    """Each writer its own scratch file: a search's trials side by side may save the same phase."""
    return f"{name}.{os.getpid()}.tmp"


def fingerprint(model_bytes: bytes, arrays: dict[str, np.ndarray], options: dict) -> str:
    h = hashlib.sha256(model_bytes)
    for k in sorted(arrays):
        h.update(k.encode())
        h.update(np.ascontiguousarray(arrays[k]).tobytes())
    h.update(json.dumps(options, sort_keys=True, default=str).encode())
    return h.hexdigest()


class Checkpoints:
    """Epoch checkpoints of one training job in `folder`."""

    def __init__(self, folder: Path, print_: str, resume: bool) -> None:
        self.folder, self.print = Path(folder), print_
        self.done: dict[str, int] = {}
        self.records: dict[str, dict] = {}  # a phase's history so far, so a resumed one reports all of it
        self.rng_state = None
        if resume:
            self._load()

    @property
    def checkpoint(self) -> Path | None:
        """The checkpoint to start from, when resuming."""
        path = self.folder / CHECKPOINT
        return path if self.done and path.exists() else None

    def _load(self) -> None:
        try:
            progress = json.loads((self.folder / PROGRESS).read_text())
        except (OSError, ValueError):
            raise OnnxPruneError(f"--resume: no checkpoint in {self.folder} (run with --workdir first)") from None
        if progress.get("fingerprint") != self.print:
            raise OnnxPruneError(f"--resume: the checkpoint in {self.folder} is of another job (model, data or "
                                 "options differ); rerun without --resume, or with the same arguments")
        self.done, self.rng_state = progress["done"], progress["rng"]
        self.records = progress.get("records", {})

    def epochs_done(self, phase: str) -> int:
        return self.done.get(phase, 0)

    def record(self, phase: str) -> dict:
        """What the phase had logged when it was saved: history, seconds, last task loss."""
        return self.records.get(phase, {})

    def restore_rng(self, rng: np.random.Generator) -> None:
        """The generator as it was at the last checkpoint (once: later phases go on from there)."""
        if self.rng_state is not None:
            rng.bit_generator.state = self.rng_state
            self.rng_state = None

    def save(self, trainer, phase, epochs: int, rng: np.random.Generator) -> None:
        """After `epochs` epochs of `phase` (schedule.Phase)."""
        self.done[phase.name] = epochs
        self.records[phase.name] = {"history": phase.history, "seconds": phase.seconds,
                                    "final_task_loss": phase.final_task_loss}
        tmp = self.folder / _tmp(CHECKPOINT)
        trainer.save(tmp)
        os.replace(tmp, self.folder / CHECKPOINT)
        self._write(PROGRESS, json.dumps({"fingerprint": self.print, "done": self.done, "records": self.records,
                                          "rng": rng.bit_generator.state}).encode())

    def save_masks(self, masks: dict[str, np.ndarray]) -> None:
        tmp = self.folder / (_tmp(MASKS) + ".npz")
        np.savez(tmp, **{f"m{i}": m for i, m in enumerate(masks.values())}, names=np.array(list(masks)))
        os.replace(tmp, self.folder / MASKS)

    def masks(self) -> dict[str, np.ndarray] | None:
        if not self.done or not (self.folder / MASKS).exists():
            return None
        with np.load(self.folder / MASKS, allow_pickle=False) as z:
            return {str(n): z[f"m{i}"] for i, n in enumerate(z["names"])}

    def _write(self, name: str, data: bytes) -> None:
        tmp = self.folder / _tmp(name)
        tmp.write_bytes(data)
        os.replace(tmp, self.folder / name)


class SharedPhase(Checkpoints):
    """The reweighted phase of a search's trials, run once: it does not depend on the rate (the
    rate only picks the masks after it), so the first trial to finish it leaves its checkpoint in
    `folder` and every later trial starts from there, as `--resume` would, and ends with the model
    it would have trained alone. `print_` must leave the rate out. Nothing rate-specific (masks,
    fine-tuning) is saved; a trial that finds no usable checkpoint (another job's, half written, a
    Ray node without the folder) trains the phase itself."""

    PHASE = "reweighted"

    def __init__(self, folder: Path, print_: str, epochs: int) -> None:
        super().__init__(folder, print_, resume=False)
        self.epochs, self.reused = epochs, False
        try:
            self._load()
        except OnnxPruneError:
            return
        if self.done.get(self.PHASE) == epochs and (self.folder / CHECKPOINT).exists():
            self.done, self.reused = {self.PHASE: epochs}, True
        else:
            self.done, self.rng_state, self.records = {}, None, {}

    def save(self, trainer, phase, epochs: int, rng: np.random.Generator) -> None:
        if phase.name == self.PHASE and epochs == self.epochs and not self.reused:
            self.folder.mkdir(parents=True, exist_ok=True)
            super().save(trainer, phase, epochs, rng)  # the checkpoint first, then the file that points to it

    def save_masks(self, masks: dict[str, np.ndarray]) -> None:
        pass

    def masks(self) -> None:
        return None
