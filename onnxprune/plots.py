"""`--plot DIR`: the pictures of a run, drawn from its report (matplotlib, an optional extra):
- `search.png`: each trial's metric against its compression, the dense line and the budget;
- `layers.png`: the share of each layer's weights kept;
- `training.png`: the reweighted phase's task loss, penalty and share of groups still alive.
"""
from __future__ import annotations

from pathlib import Path

from .export import atomic_path


def write(report: dict, folder: Path) -> list[str]:
    """Every plot the report has data for, as PNGs in `folder`; returns their paths."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    folder.mkdir(parents=True, exist_ok=True)
    written = []
    for name, draw in (("search", _search), ("layers", _layers), ("training", _training)):
        fig = draw(plt, report)
        if fig is None:
            continue
        path = folder / f"{name}.png"
        with atomic_path(path) as tmp:
            fig.savefig(tmp, dpi=110, bbox_inches="tight", format="png")
        plt.close(fig)
        written.append(str(path))
    return written


def _search(plt, report: dict):
    search = report.get("search")
    if not search:
        return None
    trials = search["trials"]
    name = trials[0]["metric"]["name"]
    dense = 100 * trials[0]["metric"]["dense"]
    fig, ax = plt.subplots(figsize=(6.4, 4))
    for within, color, label in ((True, "tab:green", "within budget"), (False, "tab:red", "over budget")):
        pts = [t for t in trials if t["within"] == within]
        ax.scatter([t["compression"] for t in pts], [100 * t["metric"]["pruned"] for t in pts], color=color,
                   label=label, zorder=3)
    ax.axhline(dense, color="black", lw=1, label=f"dense {dense:.2f}")
    sign = 1 if name == "relative error" else -1
    ax.axhline(dense + sign * search["max_loss"], color="gray", ls="--", lw=1, label=f"budget ({search['max_loss']:g} points)")
    chosen = next(t for t in trials if t["rate"] == search["chosen_rate"])
    ax.scatter([chosen["compression"]], [100 * chosen["metric"]["pruned"]], s=160, facecolors="none",
               edgecolors="tab:green", lw=2, label=f"chosen: rate {chosen['rate']:.4g}", zorder=4)
    ax.set_xscale("log")
    ax.set_xlabel("compression (prunable weights before / after)")
    ax.set_ylabel(f"{name} (%)")
    ax.set_title(f"--max-loss {search['max_loss']:g}: {len(trials)} trials")
    ax.grid(alpha=0.3)
    ax.legend(fontsize=8)
    return fig


def _layers(plt, report: dict):
    rows = report.get("layers")
    if not rows:
        return None
    fig, ax = plt.subplots(figsize=(6.4, 0.35 * len(rows) + 1.2))
    names = [r["name"] for r in rows][::-1]
    kept = [100 * r["kept"] / r["params"] for r in rows][::-1]
    ax.barh(names, kept, color="tab:blue")
    for y, k in enumerate(kept):
        ax.text(k + 1, y, f"{k:.1f}%", va="center", fontsize=8)
    ax.set_xlim(0, 110)
    ax.set_xlabel("weights kept (%)")
    ax.set_title(f"{report['totals']['compression']:.1f}x overall ({report['structure']})")
    return fig


def _training(plt, report: dict):
    phase = next((p for p in report.get("phases", []) if p["name"] == "reweighted" and p.get("history")), None)
    if phase is None:
        return None
    h = phase["history"]
    steps = [x["step"] for x in h]
    fig, axes = plt.subplots(3, 1, figsize=(6.4, 6), sharex=True)
    for ax, key, label in zip(axes, ("task_loss", "penalty", "groups_alive"),
                              ("task loss", "penalty λ·Σ P·‖W‖²", "groups above 1% of their start")):
        ax.plot(steps, [x[key] for x in h], marker=".")
        ax.set_ylabel(label, fontsize=8)
        ax.grid(alpha=0.3)
    axes[-1].set_xlabel("step of the reweighted phase")
    axes[0].set_title("reweighted phase")
    return fig
