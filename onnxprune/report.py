"""The report stage: every fact of a run in one dict (`--report out.json`), and the per-layer
table and summary lines the CLI prints from it.
"""
from __future__ import annotations

import dataclasses
import hashlib
import json
import os
import platform
from importlib import metadata
from pathlib import Path

import numpy as np
import onnx
from onnx import numpy_helper

from .compress import storage_report
from .costs import FLOATS, param_count
from . import memory
from .export import atomic_path
from .plumbing import warn
from .version import __version__


METRIC_LABELS = {"top1_agreement": "top-1 agreement", "relative_error": "relative error",
                 "by_threshold": "detections matched by score"}


def build(cfg, loaded, dataset, plan, trained, rewritten, compressed, written, costs: dict, scores: dict,
          warnings: list[str], seconds: float) -> dict:
    """The report of a run from each stage's result. `scores`: the metric of the pruned float
    model ('float') and of the model written ('final'); `written`: the reloaded output or None."""
    p, c, out = cfg.pruning, cfg.compression, cfg.output
    slower = [b for b, t in costs["latency_ms"].items() if c.int8 and t["compressed"] > t["pruned_float"]]
    if slower:
        warn(warnings, f"the int8 model ran slower than the pruned float one here ({', '.join(b.replace('_', ' ') for b in slower)}): ORT's int8 "
                       "kernels beat float on CPUs with VNNI (AVX512-VNNI, AVX-VNNI) or ARM dot-product "
                       "instructions; on others int8 mainly saves storage")
    groups, masks, layers = plan.groups, trained.masks, loaded.layers
    rows = layer_rows(layers, compressed.kept, compressed.stored)
    # every float parameter, and those still non-zero in the pruned float model as written (after shrinking)
    all_params = (param_count(loaded.base), sum(int(np.count_nonzero(numpy_helper.to_array(t)))
                                                for t in rewritten.model.graph.initializer if t.data_type in FLOATS))
    masked = 1 - sum(float(masks[w].sum()) for w in groups.counted) / sum(masks[w].size for w in groups.counted)
    final = written if written is not None else compressed.model
    quantizer = plan.quantizer
    return {
        "tool": versions(),
        "input": str(loaded.source) if loaded.source else None,
        "input_sha256": hashlib.sha256(loaded.source.read_bytes() if loaded.source
                                       else loaded.original.SerializeToString()).hexdigest(),
        "output": str(out.out) if out.out is not None else None,
        "options": {k: str(v) if isinstance(v, os.PathLike) else list(v) if isinstance(v, tuple) else v
                    for k, v in cfg.flat().items()},
        "method": p.label, "structure": p.structure, "structure_detail": plan.structure.describe(),
        "rate": p.rate, "rate_of": p.rate_of, "masked_sparsity": masked, "scope": p.scope, "seed": cfg.data.seed,
        "rewrites": rewritten.done, "left_alone": groups.notes, "costs": costs,
        "compression": {"quantize": c.quantize, "target": c.target if c.int8 else None,
                        "qat": c.qat if c.int8 else None, "bits": c.bits if c.cluster else None,
                        "quantized_layers": compressed.quantized if c.int8 else
                        [layer.name for layer in layers if quantizer and layer.weight in quantizer.names],
                        "kept_float": plan.keep_float, "float_metric": scores["float"] if c.quantize else None,
                        "optimize": [x for x in loaded.prepared.changes if x.startswith("ORT basic")]},
        "storage": storage_report(final, layers, compressed.slots, compressed.stored, compressed.forms, c.storage),
        "layers": rows, "totals": totals(rows, all_params),
        "skipped": [s.__dict__ for s in loaded.skipped], "fixed_transforms": plan.fixed, "metric": scores["final"],
        "mode": p.mode, "loss": trained.loss,
        "file_size": {"input": loaded.source.stat().st_size if loaded.source else loaded.original.ByteSize(),
                      "output": Path(out.out).stat().st_size if out.out is not None else compressed.model.ByteSize()},
        "phases": [{"name": ph.name, "epochs": ph.epochs, "steps": ph.steps, "seconds": ph.seconds,
                    "final_task_loss": ph.final_task_loss,
                    "history": [{"step": h[0], "task_loss": h[1], "penalty": h[2], "groups_alive": h[3]}
                                for h in ph.history]} for ph in trained.phases],
        "schedule": dataclasses.asdict(trained.schedule), "preparation": loaded.prepared.changes + trained.notes,
        "warnings": warnings,
        "workdir": str(out.workdir) if out.workdir is not None and p.trains else None,
        "wall_time_s": seconds,
        "peak_memory_mb": None if memory.peak() is None else memory.peak() / 2 ** 20,  # of this process, so far
    }


def layer_rows(layers, kept: dict[str, int], stored: dict[str, onnx.TensorProto]) -> list[dict]:
    """Per layer: its weight's shape as written (`stored`: by layer name; smaller after filter or
    channel pruning) and as it was, and its weights kept of the dense count."""
    rows = []
    for layer in layers:
        k = kept[layer.weight]
        shape = list(stored[layer.name].dims) if layer.name in stored else list(layer.shape)
        rows.append({"name": layer.name, "op": layer.op, "weight": layer.weight, "shape": shape,
                     "dense_shape": list(layer.shape), "params": layer.size, "kept": k, "sparsity": 1 - k / layer.size})
    return rows


def totals(rows: list[dict], all_params: tuple[int, int]) -> dict:
    """`all_params`: every float parameter of the input, and how many are non-zero in the output."""
    params = sum(r["params"] for r in rows)
    kept = sum(r["kept"] for r in rows)
    return {"prunable_params": params, "kept": kept, "sparsity": 1 - kept / params,
            "compression": params / max(kept, 1), "all_params": all_params[0], "all_params_kept": all_params[1]}


def _extra(key: str, value) -> str:
    """One of the headline's extra values as the table shows it."""
    if isinstance(value, dict):  # a detector's sweep: {threshold: {matched, dense, share}}
        return "; ".join(_sweep_entry(t, d) for t, d in value.items())
    if isinstance(value, bool) or not isinstance(value, (int, float)):
        return str(value)
    return _pct(value) if key == "top1_agreement" else f"{value:.4g}"


def _sweep_entry(threshold: str, d) -> str:
    if not (isinstance(d, dict) and "matched" in d):
        return f"{threshold}: {d}"
    share = f" ({_pct(d['share'])})" if d.get("share") is not None else ""
    return f"score > {threshold}: {d['matched']} of {d['dense']}{share}"


def format_table(report: dict) -> str:
    rows = report["layers"]
    head = ("layer", "op", "shape written", "dense params", "kept", "sparsity")
    body = [(r["name"], r["op"], "x".join(map(str, r["shape"])), f"{r['params']:,}", f"{r['kept']:,}",
             f"{100 * r['sparsity']:.2f}%") for r in rows]
    t = report["totals"]
    foot = ("total", "", "", f"{t['prunable_params']:,}", f"{t['kept']:,}", f"{100 * t['sparsity']:.2f}%")
    align = ["<", "<", "<", ">", ">", ">"]
    store = report.get("storage")
    if _stored_differently(store):  # bytes that store each weight, as written
        by_name = {r["name"]: r for r in store["layers"]}
        head += ("stored as", "bytes", "vs fp32")
        body = [b + _storage_cells(by_name.get(r["name"])) for b, r in zip(body, rows)]
        foot += ("", f"{store['bytes']:,}", f"{store['reduction']:.1f}x")
        align += ["<", ">", ">"]
    widths = [max(len(str(x[i])) for x in [head, *body, foot]) for i in range(len(head))]

    def line(cells):
        return "  ".join(f"{c:{a}{w}}" for c, a, w in zip(cells, align, widths)).rstrip()

    rule = "  ".join("-" * w for w in widths)
    out = [line(head), rule, *map(line, body), rule, line(foot), ""]
    out.append(f"weights kept      {t['kept']:,} of {t['prunable_params']:,} prunable "
               f"({t['compression']:.1f}x compression); {t['all_params_kept']:,} of {t['all_params']:,} parameters non-zero in all")
    m = report.get("metric")
    if m:
        show = _pct if m["name"] != "relative error" else (lambda x: f"{x:.4g}")
        out.append(f"{m['name']:<17} dense {show(m['dense'])}  ->  pruned {show(m['pruned'])}"
                   f"   (on {m['samples']} {m['split']} samples)")
        for k, v in m.get("extra", {}).items():
            out.append(f"{METRIC_LABELS.get(k, k):<17} {_extra(k, v)}")
    out += _compression_lines(report)
    sizes = report.get("file_size")
    if sizes and sizes.get("output"):
        out.append(f"file size         {sizes['input'] / 1e6:.2f} MB  ->  {sizes['output'] / 1e6:.2f} MB")
    out += _cost_lines(report.get("costs"))
    if report.get("structure") not in (None, "unstructured"):
        out.append(f"structure         {report.get('structure_detail', report['structure'])}; "
                   f"masked sparsity {100 * report['masked_sparsity']:.2f}% of prunable weights")
    for r in report.get("rewrites", []):
        out.append(f"rewritten         {r}")
    for note in report.get("left_alone", [])[:5]:
        out.append(f"left alone        {note}")
    out += _search_lines(report.get("search"))
    out.append(f"loss              {report['loss']}")
    out.append(f"wall time         {report['wall_time_s']:.1f} s "
               + " ".join(f"({p['name']} {p['seconds']:.1f} s)" for p in report["phases"]))
    if report.get("skipped"):
        out.append(f"skipped           {len(report['skipped'])} layer(s): "
                   + "; ".join(f"{s['name']}: {s['reason']}" for s in report["skipped"][:5])
                   + (" …" if len(report["skipped"]) > 5 else ""))
    for c in report.get("preparation", []):
        out.append(f"prepared          {c}")
    if report.get("output"):
        out.append(f"written           {report['output']}")
    for path in report.get("plots", []):
        out.append(f"plot              {path}")
    return "\n".join(out)


def _stored_differently(store: dict | None) -> bool:
    """Is any weight written in another form than dense float32 (worth its own columns)?"""
    return bool(store and any(r["form"] != "dense" or r["bytes"] != r["dense_fp32_bytes"] for r in store["layers"]))


def _storage_cells(row: dict | None) -> tuple[str, str, str]:
    if row is None:
        return ("", "", "")
    return (f"{row['dtype']} {row['form']}", f"{row['bytes']:,}", f"{row['dense_fp32_bytes'] / max(row['bytes'], 1):.1f}x")


def _compression_lines(report: dict) -> list[str]:
    c = report.get("compression") or {}
    out = []
    if c.get("quantize"):
        what = (f"int8 for {c['target']}" + (", quantization-aware fine-tuning" if c.get("qat") else ", post-training")
                if c["quantize"] == "int8" else f"{c['bits']}-bit codebooks, refined by fine-tuning")
        out.append(f"quantization      {what}: {len(c['quantized_layers'])} layer(s)")
        for name, why in c.get("kept_float", {}).items():
            out.append(f"kept float        {name}: {why}")
        m = c.get("float_metric")
        if m and m["name"] != "relative error":
            out.append(f"before quantizing {m['name']} {_pct(m['pruned'])}")
    store = report.get("storage")
    if _stored_differently(store):
        out.append(f"weight storage    {store['dense_fp32_bytes']:,} B as fp32  ->  {store['bytes']:,} B written "
                   f"({store['reduction']:.1f}x smaller; --storage {store['mode']}; every tensor that stores a weight counted)")
    if store and store["mode"] == "compact":
        out.append("                  (ORT decodes compactly stored weights at load; tools that need weight "
                   "initializers, such as quantizers, onnxsim and TensorRT, do not see them)")
    elif store and store.get("compact_bytes", store["bytes"]) < 0.9 * store["bytes"]:
        out.append(f"{'storage':<18}plain initializers, read by every ONNX tool; --storage compact would need about "
                   f"{store['compact_bytes']:,} B for these weights instead of {store['bytes']:,} B (decoded by ORT "
                   "at load; tools that read weight initializers do not see them)")
    for step in c.get("optimize", []):
        out.append(f"optimized         {step}")
    return out


def _search_lines(search: dict | None) -> list[str]:
    """Every trial of a --max-loss search, in the order they ran."""
    if not search:
        return []
    out = [f"search            {len(search['trials'])} trials ({search['executor']}, {search['workers']} worker(s), "
           f"{search['wall_time_s']:.0f} s): rate {search['chosen_rate']:.4g} is the most compressed within "
           f"{search['max_loss']:g} point(s)"]
    for t in search["trials"]:
        out.append(f"  trial           rate {t['rate']:<8.4g} {t['compression']:6.1f}x  lost {t['drop']:6.2f} points  "
                   + ("within" if t["within"] else "collapsed" if t["collapse"] else "over") + f"  ({t['seconds']:.0f} s)")
    return out


def _cost_lines(costs: dict | None) -> list[str]:
    """Dense vs compressed: parameters, MACs per sample, ORT latency on the run's device and, for
    a GPU run, on the CPU too (medians, same run)."""
    if not costs:
        return []
    p, m = costs["params"], costs["macs"]
    lines = [f"parameters stored {p['dense']:,}  ->  {p['compressed']:,}  ({_ratio(p['dense'], p['compressed'])})",
             f"MACs per sample   {m['dense']:,}  ->  {m['compressed']:,}  ({_ratio(m['dense'], m['compressed'])})"
             + (f"; {m['compressed_nonzero']:,.0f} on non-zero weights" if m["compressed_nonzero"] < m["compressed"] else "")]
    where = costs.get("device", "cpu").split(":")[0].upper()
    for label, key in ((f"ORT {where} latency", "latency_ms"), ("ORT CPU latency", "cpu_latency_ms")):
        for batch, t in costs.get(key, {}).items():
            also = (f"; pruned float {t['pruned_float']:.3f} ms, so int8 is {t['pruned_float'] / t['compressed']:.2f}x"
                    if "pruned_float" in t else "")
            lines.append(f"{label:<17} {batch.replace('_', ' ')}: {t['dense']:.3f} ms  ->  {t['compressed']:.3f} ms  "
                         f"({t['dense'] / t['compressed']:.2f}x faster, medians{also})")
    return lines


def _ratio(a: float, b: float) -> str:
    return f"{a / b:.2f}x smaller" if b else "all removed"


def _pct(x: float) -> str:
    return f"{100 * x:.2f}%"


def versions() -> dict:
    """The software a run used, for the report."""
    import onnxruntime

    return {"onnxprune": __version__, "onnxruntime": onnxruntime.__version__, "onnx": onnx.__version__,
            "onnxsim": metadata.version("onnxsim"), "numpy": np.__version__, "python": platform.python_version()}


def write_json(report: dict, path: str | os.PathLike) -> None:
    """The report as JSON: floats to 6 significant digits (no float noise), NaN and ∞ as null."""
    with atomic_path(Path(path)) as tmp, open(tmp, "w") as f:
        json.dump(_rounded(report), f, indent=2, allow_nan=False)
        f.write("\n")


def _rounded(o):
    if isinstance(o, dict):
        return {k: _rounded(v) for k, v in o.items()}
    if isinstance(o, (list, tuple)):
        return [_rounded(v) for v in o]
    if isinstance(o, (float, np.floating)):
        if not np.isfinite(o):
            return None
        return int(o) if float(o).is_integer() and abs(o) < 2**53 else float(f"{o:.6g}")  # counts stay exact
    if isinstance(o, np.integer):
        return int(o)
    return o
