"""The batch size fits memory: a training step's memory grows with the batch, and a batch too big
for the machine ends in the kernel's `Killed`, with nothing written or said (PP-OCRv4's recognizer
takes about 200 MB per sample). Where a step could need a large share of what is free, its memory
is measured at two small batches, and the batch is capped at 35% of what the machine has free.
Linux only (/proc); elsewhere nothing is capped and no peak is reported.
"""
from __future__ import annotations

import gc
from pathlib import Path

# of the memory free before training, what the steps may take: the refit's captures and the
# held-out scoring's sessions run beside the trainer (PP-OCRv4 rec at 60%, batch 64: killed at 24 GB)
SHARE = 0.35
MEASURED = (2, 4)  # the small batches a step is measured at
# a step holds about 1–3× the forward pass's tensors (measured: PP-OCRv4 rec 1.0×, the residual
# CNN 3.1×); under this bound a measurement is not worth its two step graphs
WORST_FACTOR = 3.0


def _status(key: str) -> int | None:
    try:
        for line in Path("/proc/self/status").read_text().splitlines():
            if line.startswith(key + ":"):
                return int(line.split()[1]) * 1024
    except OSError:
        return None
    return None


def available() -> int | None:
    """Bytes free for this process: the kernel's MemAvailable, or the cgroup's room if smaller."""
    try:
        free = next(int(line.split()[1]) * 1024 for line in Path("/proc/meminfo").read_text().splitlines()
                    if line.startswith("MemAvailable:"))
    except (OSError, StopIteration, ValueError):
        return None
    try:
        limit = Path("/sys/fs/cgroup/memory.max").read_text().strip()
        if limit != "max":
            free = min(free, int(limit) - int(Path("/sys/fs/cgroup/memory.current").read_text()))
    except (OSError, ValueError):
        pass
    return free


def peak() -> int | None:
    """This process's peak resident memory so far, in bytes."""
    return _status("VmHWM")


def _reset_peak() -> bool:
    try:
        Path("/proc/self/clear_refs").write_text("5")  # resets VmHWM to the current resident size
        return True
    except OSError:
        return False


def step_bytes(run_step) -> int | None:
    """Resident memory one training step adds: `run_step()` builds a trainer and takes a step;
    measured as the high-water mark over the resident size before it."""
    gc.collect()
    if not _reset_peak():
        return None
    before = _status("VmRSS")
    run_step()
    gc.collect()
    after = _status("VmHWM")
    return None if before is None or after is None else max(after - before, 0)


def fit(batch: int, forward_per_sample: float, run_step_at) -> tuple[int, float | None, str | None]:
    """(batch to train at, measured bytes per sample or None, the line saying why it was capped
    or None). `forward_per_sample`: bytes of the forward pass's tensors per sample, from shapes;
    `run_step_at(b)`: build a trainer at batch b and take one step."""
    free = available()
    if free is None or WORST_FACTOR * forward_per_sample * batch < 0.25 * free:
        return batch, None, None
    small, large = (step_bytes(lambda b=b: run_step_at(b)) for b in MEASURED)
    if small is None or large is None:
        return batch, None, None
    per_sample = max((large - small) / (MEASURED[1] - MEASURED[0]), forward_per_sample)
    fits = int((SHARE * free - small) // per_sample) + MEASURED[0]
    if fits >= batch:
        return batch, per_sample, None
    capped = max(1, fits)
    return capped, per_sample, (f"batches of {batch} need about {per_sample * batch / 2 ** 30:.1f} GB for a "
                                f"training step ({per_sample / 2 ** 20:.0f} MB per sample, measured) and "
                                f"{free / 2 ** 30:.1f} GB is free: training uses batches of {capped} "
                                "(--batch-size sets it)")
