"""`onnxprune analyze MODEL`: per-layer sensitivity. Each unit of the structure's groups is pruned
alone, one-shot (smallest groups first, the rest of the model dense, BatchNorm statistics
recomputed as a run would), at a few rates, and the headline metric is measured on the evaluation
samples. A unit is a layer, or for filter/channel a
coupled channel space: residual partners and Concat inputs are cut together, as pruning would cut
them, so a layer is never called robust because its partner still carried the signal.

Suggested rates: per unit, the highest rate tried that loses at most `tolerance` points. They go
in a JSON file that `--layer-rates` reads.
"""
from __future__ import annotations

import time
from dataclasses import dataclass

import numpy as np

from . import batchnorm, loading, planning
from .api import score
from .config import COUPLED, PruneConfig
from .data import prepare as prepare_data
from .export import with_weights
from .masking import mean_square
from .metrics import drop_points

RATES = (0.3, 0.5, 0.7, 0.8, 0.9, 0.95, 0.98)


@dataclass
class Sensitivity:
    report: dict

    def summary(self) -> str:
        return format_table(self.report)


def analyze(model, data=None, eval_data=None, config: PruneConfig | None = None, rates=RATES,
            tolerance: float = 0.5, **options) -> Sensitivity:
    """The sensitivity of every unit of `model` at `rates` (options as for `prune`: structure,
    seed, val_fraction, input_shapes, inputs…)."""
    cfg = config or PruneConfig.from_options(**options)
    started = time.perf_counter()
    rng = np.random.default_rng(cfg.data.seed)
    warnings: list[str] = []
    loaded = loading.load(model, cfg.pruning.exclude, cfg.preparation.simplify, cfg.preparation.optimize,
                          cfg.preparation.inputs)
    dataset = prepare_data(loaded.dense, loaded.base, data, eval_data, cfg.data, rng, warnings)
    plan = planning.plan(loaded, dataset, cfg)
    groups = plan.groups
    dense = score(dataset, dataset.outputs(loaded.base, "the dense model"))
    scores = mean_square(plan.dense_weights, groups)
    sizes = groups.sizes(groups.counted)
    forced = groups.forced if groups.forced is not None else np.zeros(groups.count, bool)
    # BatchNorm statistics are recomputed after each cut (on training samples), as a run would:
    # where the layout is samples-first, which recalibration slices along
    stored = {t.name for t in loaded.base.graph.initializer}
    norms = dataset.layout.plain and bool(batchnorm.trainable_norms(loaded.base, stored))
    feed = dataset.inputs(dataset.train)
    units = []
    for u, name in enumerate(groups.units):
        sel = np.flatnonzero((groups.unit == u) & ~forced)
        order = sel[np.argsort(scores[sel], kind="stable")]
        reach = np.cumsum(sizes[order])
        total = int(sizes[groups.unit == u].sum())
        drops = {}
        for rate in rates:
            pruned = forced.copy()
            pruned[order[:int(np.searchsorted(reach, rate * total))]] = True  # the weakest, up to the rate
            masks = groups.masks(pruned)
            cut = with_weights(loaded.base, {w: plan.dense_weights[w] * m for w, m in masks.items()})
            if norms:  # stale statistics after a cut would overstate what the cut costs
                cut = with_weights(cut, batchnorm.recalibrate(cut, feed, 64, seed=cfg.data.seed, max_batches=8,
                                                              owned=stored, shapes=plan.shapes))
            outs = dataset.outputs(cut, f"{name} pruned to {rate:g}")
            drops[rate] = drop_points(score(dataset, outs))
        ok = [r for r in rates if drops[r] <= tolerance]
        units.append({"name": name, "weights": total, "drops": {str(r): d for r, d in drops.items()},
                      "suggested_rate": max(ok) if ok else 0.0})
    per_layer = cfg.pruning.structure not in COUPLED  # coupled units span layers: --layer-rates cannot take them
    report = {"model": str(model) if not hasattr(model, "graph") else None, "structure": cfg.pruning.structure,
              "metric": {"name": dense["name"], "dense": dense["dense"], "samples": dense.get("samples"),
                         "split": dense.get("split")},
              "rates": list(rates), "tolerance": tolerance, "units": units, "warnings": warnings,
              "layer_rates": {x["name"]: x["suggested_rate"] for x in units} if per_layer else None,
              "wall_time_s": time.perf_counter() - started}
    return Sensitivity(report)


def format_table(report: dict) -> str:
    rates = report["rates"]
    head = ["unit", "weights", *[f"{r:g}" for r in rates], "suggested"]
    body = [[u["name"], f"{u['weights']:,}", *[f"{u['drops'][str(r)]:.2f}" for r in rates],
             f"{u['suggested_rate']:g}"] for u in report["units"]]
    widths = [max(len(row[i]) for row in [head, *body]) for i in range(len(head))]
    line = lambda row: "  ".join(c.ljust(w) if i == 0 else c.rjust(w) for i, (c, w) in enumerate(zip(row, widths)))  # noqa: E731
    m = report["metric"]
    out = [f"points of {m['name']} lost when one unit alone is pruned one-shot to each rate "
           f"(dense {100 * m['dense']:.2f}%, {m['samples']} {m['split']} samples):", "",
           line(head), "  ".join("-" * w for w in widths), *map(line, body), "",
           f"suggested: the highest rate losing at most {report['tolerance']:g} point(s); "
           + ("pass the JSON file to --layer-rates" if report["layer_rates"] is not None else
              "a coupled unit spans layers, so these are a guide (--layer-rates takes per-layer structures)")]
    return "\n".join(out)


def plot(report: dict, path) -> None:
    """Points lost against rate, one line per unit."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    from .export import atomic_path

    fig, ax = plt.subplots(figsize=(6.4, 4))
    for u in report["units"]:
        ax.plot(report["rates"], [u["drops"][str(r)] for r in report["rates"]], marker="o", label=u["name"])
    ax.axhline(report["tolerance"], color="gray", ls="--", lw=1, label=f"tolerance {report['tolerance']:g}")
    ax.set_xlabel("rate (share of the unit's weights removed)")
    ax.set_ylabel(f"points of {report['metric']['name']} lost")
    ax.set_title("per-layer sensitivity (one unit pruned, the rest dense)")
    ax.grid(alpha=0.3)
    ax.legend(fontsize=7, ncol=2)
    with atomic_path(path) as tmp:
        fig.savefig(tmp, dpi=110, bbox_inches="tight", format="png")
    plt.close(fig)
