"""The search stage (`--max-loss P`): the largest compression whose pruned model loses at most P
points of the headline metric on the evaluation samples (`--eval-data`, or the held-out share of
`--data`), and is not collapsed.

Each trial is a whole run at one rate (`api.prune`), independent of the others, so an executor
(`executors.py`) runs a round's trials side by side, locally or on a Ray cluster. The rates follow
the results only: round one tries the bracket's ends (`min_rate`, `max_rate`); every later round
splits the gap between the most compressed trial within budget and the least compressed one above
it that is not, evenly in log-compression, `trials_per_round` rates at a time, until `max_trials`
or a gap under 5%. The same seed therefore chooses the same model whatever runs the trials.
"""
from __future__ import annotations

import dataclasses
import logging
import math
import os
import shutil
import tempfile
import time
from pathlib import Path

from . import export, loading, plots
from .config import PruneConfig
from .errors import OnnxPruneError
from .executors import executor
from .metrics import drop_points
from .plumbing import warn

log = logging.getLogger("onnxprune")
stage = logging.getLogger("onnxprune.stage")  # shown in a terminal: a search's trials take minutes each
FINE_ENOUGH = math.log(1.05)  # stop when the gap is under 5% of compression
COARSE = 10  # a budget worth fewer evaluation samples than this gets a warning


def run(model, data, eval_data, cfg: PruneConfig, progress, prune):
    """The chosen trial's result (`prune`: api.prune, which runs a trial), its report extended
    with `search` (every trial)."""
    s = cfg.search
    started = time.perf_counter()
    ex = executor(s.jobs, s.ray)
    side_by_side = min(ex.workers, s.trials_per_round)
    # trials that run together share the cores; and a latency taken beside another trial's
    # training would be noise, so side by side it is not taken
    threads = cfg.output.threads or (max(1, (os.cpu_count() or 1) // side_by_side) if side_by_side > 1 else None)
    shared = Path(tempfile.mkdtemp(prefix="onnxprune-search-"))  # the trials' one reweighted phase
    trial_cfg = dataclasses.replace(
        cfg, search=dataclasses.replace(s, max_loss=None, jobs=1, ray=None, shared=str(shared)),
        output=dataclasses.replace(cfg.output, out=None, threads=threads, plot=None,
                                   latency=cfg.output.latency and side_by_side == 1))
    if s.ray:  # Ray workers may run elsewhere: files by absolute path (a shared file system is assumed)
        model, data, eval_data = (str(Path(x).resolve()) if isinstance(x, (str, os.PathLike)) else x
                                  for x in (model, data, eval_data))
    trials: list[dict] = []
    result = None  # the most compressed trial within budget so far: only its model is kept
    try:
        with progress(s.max_trials, "trials") as bar:  # a trial's "loss": the points it lost
            rates = [s.min_rate, s.max_rate]
            while rates:
                stage.info("search: trial %d of at most %d: rate%s %s (%.0f s so far)", len(trials) + 1,
                           s.max_trials, "s" if len(rates) > 1 else "", ", ".join(f"{r:.4g}" for r in rates),
                           time.perf_counter() - started)
                specs = [(prune, model, data, eval_data, dataclasses.replace(trial_cfg, pruning=dataclasses.replace(
                    cfg.pruning, rate=r))) for r in rates]
                for r, got in zip(rates, ex.map(run_trial, specs)):
                    got["within"] = got["drop"] <= s.max_loss and not got["collapse"]
                    kept = got.pop("result")
                    if got["within"] and (result is None or r > result[0]):
                        result = (r, kept)
                    trials.append(got)
                    stage.info("search: rate %.4g: %s lost %.2f points%s (%.1fx)", r, got["metric"]["name"],
                               got["drop"], ", collapsed" if got["collapse"] else "", got["compression"])
                    bar.update(1, got["drop"])
                rates = next_rates(trials, s)
    finally:
        ex.close()
        shutil.rmtree(shared, ignore_errors=True)
    if result is None:
        best = min(trials, key=lambda t: t["drop"])
        raise OnnxPruneError(f"no rate kept within --max-loss {s.max_loss:g}: the best trial, rate {best['rate']:.4g}, "
                             f"lost {best['drop']:.2f} points of {best['metric']['name']}"
                             + (" and looked collapsed" if best["collapse"] else "")
                             + f"; lower --min-rate (now {s.min_rate:g}) or allow more loss; nothing was written")
    chosen_rate, result = result
    _warn_if_coarse(result.report, s.max_loss)
    if cfg.output.out is not None:  # the trial wrote nothing; the model it made is checked as any run's is
        export.write(result.model, Path(cfg.output.out), loading.bound_original(model, cfg.preparation.inputs))
    result.report["output"] = str(cfg.output.out) if cfg.output.out is not None else None
    result.report["options"].update({f.name: getattr(s, f.name) for f in dataclasses.fields(s)})
    result.report["search"] = {"max_loss": s.max_loss, "chosen_rate": chosen_rate, "trials": trials,
                               "workers": ex.workers, "side_by_side": side_by_side, "executor": type(ex).__name__,
                               "wall_time_s": time.perf_counter() - started}
    result.report["wall_time_s"] = time.perf_counter() - started
    if cfg.output.plot is not None:
        result.report["plots"] = plots.write(result.report, Path(cfg.output.plot))
    return result


def _warn_if_coarse(report: dict, max_loss: float) -> None:
    """A budget of a few evaluation samples: which trials pass is then decided by a sample or two,
    and the most compressed one that passed by luck is the one chosen."""
    m = report["metric"]
    if m["name"] == "relative error" or not m.get("samples"):
        return
    worth = max_loss * m["samples"] / 100
    if worth < COARSE:
        warn(report["warnings"], f"--max-loss {max_loss:g} is {worth:.3g} of the {m['samples']} evaluation samples: a "
                                 "sample or two decides which trials pass, so the chosen model may lose more on data it "
                                 "was not chosen on; more evaluation samples (--eval-data, --val-fraction) steady it")


def next_rates(trials: list[dict], s) -> list[float]:
    """The next round's rates, or [] when the search is done."""
    left = s.max_trials - len(trials)
    within = [t["rate"] for t in trials if t["within"]]
    if not within or left <= 0:
        return []
    lo = log_compression(max(within))
    above = [log_compression(t["rate"]) for t in trials if not t["within"] and log_compression(t["rate"]) > lo]
    if not above or min(above) - lo < FINE_ENOUGH:
        return []
    hi = min(above)
    k = min(s.trials_per_round, left)
    return [rate_at(lo + (hi - lo) * i / (k + 1)) for i in range(1, k + 1)]


def log_compression(rate: float) -> float:
    return -math.log1p(-rate)


def rate_at(log_c: float) -> float:
    return round(-math.expm1(-log_c), 6)


def run_trial(spec) -> dict:
    """One trial, in whichever process runs it: a whole run at one rate, summarized."""
    prune, model, data, eval_data, cfg = spec
    started = time.perf_counter()
    result = prune(model, data=data, eval_data=eval_data, config=cfg)
    rep = result.report
    return {"rate": cfg.pruning.rate, "metric": {k: rep["metric"][k] for k in ("name", "dense", "pruned")},
            "drop": drop_points(rep["metric"]), "collapse": rep["metric"].get("collapse"),
            "compression": rep["totals"]["compression"], "kept": rep["totals"]["kept"],
            "macs": rep["costs"]["macs"]["compressed"], "bytes": result.model.ByteSize(),
            "latency_ms": {b: t["compressed"] for b, t in rep["costs"].get("latency_ms", {}).items()},
            "seconds": time.perf_counter() - started, "result": result}

