"""Pruning + quantization in one pipeline vs the plain sequence, on the shipped examples.

    pip install -e '.[dev]' && python benchmarks/quantize.py [--epochs 10] [--models lenet5,resnet_mnist]

For each model, at one rate (LeNet-5 0.97, the residual CNN 0.8; unstructured):
  onnxprune reweighted, float (compact storage);
  + int8 post-training (ORT quantize_static, calibrated, --target ort);
  + int8 with quantization-aware fine-tuning (--qat);
  + 4-bit and 2-bit k-means codebooks refined by fine-tuning (--quantize cluster --bits K), and
    the same 2-bit k-means applied after training (post-training), to show what the
    quantization-aware fine-tuning recovers;
  the plain sequence: magnitude prune -> fine-tune (same epochs) -> ORT quantize_static with its
  defaults, written as ORT writes it, and the same model in onnxprune's compact storage (equal size).
Test accuracy on models/mnist_test.npz (never trained on). Weight storage: bytes of every tensor
that stores the prunable layers' weights in the written graph (values, gaps/indices, codes,
codebooks, scales, zero points), against those weights as dense float32. ORT CPU latency:
medians of interleaved runs in this process (batch 1 and 32), ratios from the same run.
Writes benchmarks/results/quantize.{md,json,png}.
"""
from __future__ import annotations

import argparse
import json
import os
import platform
import sys
import tempfile
import time
from pathlib import Path

import onnx

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

import onnxprune  # noqa: E402
from onnxprune.plumbing import session as _session  # noqa: E402
from onnxprune.costs import latencies  # noqa: E402
from onnxprune.data import load_npz, run_model  # noqa: E402
from onnxprune.metrics import accuracy  # noqa: E402
from onnxprune.layers import find_prunable  # noqa: E402
from onnxprune.loading import prepare, read_model  # noqa: E402
from onnxprune.cluster import fit, snap  # noqa: E402
from onnxprune.export import with_weights  # noqa: E402
from onnxprune.storage import decoded_weights, encode, stored_tensors, weight_slots, weight_storage  # noqa: E402

TRAIN = ROOT / "models" / "mnist_train.npz"
TEST = ROOT / "models" / "mnist_test.npz"
RATES = {"lenet5": 0.97, "resnet_mnist": 0.8}


def storage_bytes(model: onnx.ModelProto, slots: dict[str, tuple[str, int]]) -> int:
    nodes = {n.name: n for n in model.graph.node}
    return sum(weight_storage(model, nodes[node].input[slot])[0] for node, slot in slots.values() if node in nodes)


def plain_sequence(path: Path, rate: float, sched, seed: int, train) -> onnx.ModelProto:
    """magnitude prune -> fine-tune -> ORT quantize_static (its defaults: QDQ, per-tensor int8)."""
    from onnxruntime.quantization import quantize_static

    pruned = onnxprune.prune(path, rate, method="magnitude", finetune_baseline=True, data=TRAIN, schedule=sched,
                             seed=seed, storage="dense", latency=False).model

    class Reader:
        def __init__(self):
            self.it = iter([{"input": train["input"][i:i + 32]} for i in range(0, 256, 32)])

        def get_next(self):
            return next(self.it, None)

    with tempfile.TemporaryDirectory() as tmp:
        onnx.save(pruned, f"{tmp}/p.onnx")
        quantize_static(f"{tmp}/p.onnx", f"{tmp}/q.onnx", Reader())
        return onnx.load(f"{tmp}/q.onnx")


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--epochs", type=int, default=10, help="epochs of each phase (reweighted, fine-tune)")
    ap.add_argument("--models", default=",".join(RATES))
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--out-dir", type=Path, default=ROOT / "benchmarks" / "results")
    ap.add_argument("--replot", action="store_true", help="only redraw the plot from the saved JSON")
    args = ap.parse_args()
    if args.replot:
        _plot(json.loads((args.out_dir / "quantize.json").read_text()), args.out_dir / "quantize.png")
        return
    test, train = load_npz(TEST), load_npz(TRAIN)
    feeds = {"1": {"input": test["input"][:1]}, "32": {"input": test["input"][:32]}}
    results = {"machine": f"{platform.processor() or platform.machine()}, {os.cpu_count()} cores",
               "epochs": args.epochs, "seed": args.seed, "models": {}}
    for name in args.models.split(","):
        rate, path = RATES[name], ROOT / "models" / f"{name}.onnx"
        dense = prepare(read_model(path)).export_base
        layers, _ = find_prunable(dense)
        slots = weight_slots(dense, layers)
        fp32_bytes = 4 * sum(layer.size for layer in layers)
        sched = onnxprune.Schedule(epochs=args.epochs, finetune_epochs=args.epochs)
        models, notes, float_acc = {"dense": dense}, {"dense": ""}, {}
        variants = [("onnxprune float", {}), ("onnxprune + int8 (post-training)", {"quantize": "int8"}),
                    ("onnxprune + int8 (QAT)", {"quantize": "int8", "qat": True}),
                    ("onnxprune + 4-bit clusters", {"quantize": "cluster", "bits": 4}),
                    ("onnxprune + 2-bit clusters", {"quantize": "cluster", "bits": 2})]
        for label, kw in variants:
            t = time.perf_counter()
            r = onnxprune.prune(path, rate, data=TRAIN, eval_data=TEST, schedule=sched, seed=args.seed,
                                latency=False, storage="compact", **kw)  # the sizes compare compact forms
            models[label] = r.model
            fm = r.report["compression"]["float_metric"]
            float_acc[label] = fm["pruned"] if fm else None
            notes[label] = f"{time.perf_counter() - t:.0f} s"
            print(f"{name} {label}: {notes[label]}", flush=True)
        # quantization-aware vs post-training where the latter loses: 2-bit k-means on the float result
        w = decoded_weights(models["onnxprune float"])
        snapped = with_weights(dense, {layer.weight: snap(w[layer.weight], w[layer.weight] != 0, fit(w[layer.weight], 2))
                                       for layer in layers})
        models["2-bit clusters, post-training"] = encode(snapped, [layer.weight for layer in layers], "compact")[0]
        notes["2-bit clusters, post-training"] = "k-means on onnxprune float, no fine-tuning"
        t = time.perf_counter()
        plain = plain_sequence(path, rate, sched, args.seed, train)
        models["magnitude -> fine-tune -> quantize_static"] = plain
        notes["magnitude -> fine-tune -> quantize_static"] = f"{time.perf_counter() - t:.0f} s; dense int8 as ORT writes it"
        stored = stored_tensors(plain, slots)
        models["same, compact storage"] = encode(plain, [t.name for t in stored.values()], "compact")[0]
        notes["same, compact storage"] = "equal size to onnxprune + int8"
        times = {b: latencies(models, feed, runs=400, budget_s=60) for b, feed in feeds.items()}
        rows = []
        for label, m in models.items():
            acc = accuracy(run_model(_session(m), test, ["input"])[0], test["labels"])
            nbytes = fp32_bytes if label == "dense" else storage_bytes(m, slots)
            rows.append({"method": label, "accuracy": acc, "float_accuracy": float_acc.get(label),
                         "weight_bytes": nbytes, "storage_reduction": fp32_bytes / nbytes,
                         "latency_b1_ms": times["1"][label], "latency_b32_ms": times["32"][label],
                         "speedup_b1": times["1"]["dense"] / times["1"][label],
                         "speedup_b32": times["32"]["dense"] / times["32"][label], "note": notes.get(label, "")})
        int8_vs_float = {b: times[b]["onnxprune float"] / times[b]["onnxprune + int8 (QAT)"] for b in times}
        results["models"][name] = {"rate": rate, "rows": rows, "int8_vs_float_speed": int8_vs_float}
        print(_table(name, rate, rows, int8_vs_float), flush=True)
    args.out_dir.mkdir(parents=True, exist_ok=True)
    (args.out_dir / "quantize.json").write_text(json.dumps(results, indent=2) + "\n")
    md = [f"Command: `python benchmarks/quantize.py --epochs {args.epochs}`; {results['machine']}; seed {args.seed}.", ""]
    for name, r in results["models"].items():
        md += [_table(name, r["rate"], r["rows"], r["int8_vs_float_speed"]), ""]
    (args.out_dir / "quantize.md").write_text("\n".join(md))
    _plot(results, args.out_dir / "quantize.png")


def _table(name, rate, rows, int8_speed) -> str:
    out = [f"**{name}**, unstructured `--rate {rate}`", "",
           "| method | test accuracy | before quantizing | weight storage (bytes) | vs fp32 | latency b1 (ms) "
           "| speed-up b1 | latency b32 (ms) | speed-up b32 | note |",
           "|---|---|---|---|---|---|---|---|---|---|"]
    for r in rows:
        before = f"{100 * r['float_accuracy']:.2f}%" if r["float_accuracy"] is not None else ""
        out.append(f"| {r['method']} | {100 * r['accuracy']:.2f}% | {before} | {r['weight_bytes']:,} | "
                   f"{r['storage_reduction']:.1f}x | {r['latency_b1_ms']:.3f} | {r['speedup_b1']:.2f}x | "
                   f"{r['latency_b32_ms']:.3f} | {r['speedup_b32']:.2f}x | {r['note']} |")
    out += ["", "int8 (QAT) vs onnxprune float, same run: "
            + ", ".join(f"batch {b}: {v:.2f}x" for b, v in int8_speed.items())]
    return "\n".join(out)


def _plot(results, path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, axes = plt.subplots(1, len(results["models"]), figsize=(6 * len(results["models"]), 5.5), squeeze=False)
    for ax, (name, r) in zip(axes[0], results["models"].items()):
        for i, row in enumerate(r["rows"]):
            ax.scatter(row["weight_bytes"], 100 * row["accuracy"], s=45, marker="osD^v<>ph"[i % 9],
                       label=row["method"])
        ax.set_xscale("log")
        ax.set_xlabel("weight storage (bytes, log)")
        ax.set_ylabel("test accuracy (%)")
        ax.set_title(f"{name}, rate {r['rate']}")
        ax.grid(alpha=0.3)
    handles, labels = axes[0][0].get_legend_handles_labels()
    fig.legend(handles, labels, loc="lower center", ncol=3, fontsize=8)
    fig.tight_layout(rect=(0, 0.16, 1, 1))
    fig.savefig(path, dpi=120)


if __name__ == "__main__":
    main()
