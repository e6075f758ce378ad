"""Filter pruning that makes models smaller and faster: onnxprune vs onnxsim's structured
pruner at the same MACs reduction, on the residual CNN and the Concat + depthwise net.

    pip install -e '.[dev]' && python benchmarks/structured.py [--epochs 10] [--models resnet_mnist]

For each model: the dense model; onnxprune reweighted filter pruning (shrunk graph) with the
rate counted in MACs (`--rate-of macs`); onnxprune magnitude filter pruning + fine-tuning
(same rate and epoch budget); and onnxsim's
`apply_structured_pruning` (no training) at the sparsity whose MACs come closest to
onnxprune's; for the residual CNN, a PyTorch baseline (L1-norm filter pruning of each block's
inner channels at the MACs closest to onnxprune's, then masked fine-tuning for the same epochs;
see `torch_filter`). Test accuracy on models/mnist_test.npz (never trained on); MACs per sample and
parameters from the written graphs; ORT CPU latency as medians of interleaved runs of all
models in this process (batch 1 and 32), with ratios to dense from the same run.
Writes benchmarks/results/structured.{md,json}.
"""
from __future__ import annotations

import argparse
import json
import os
import platform
import sys
import time
from pathlib import Path

import numpy as np
import onnx

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

import onnxprune  # noqa: E402
from onnxprune.plumbing import session as _session  # noqa: E402
from onnxprune.costs import count_macs, latencies, param_count  # noqa: E402
from onnxprune.data import load_npz, run_model  # noqa: E402
from onnxprune.metrics import accuracy  # noqa: E402
from onnxprune.export import with_weights  # noqa: E402
from onnxprune.loading import prepare, read_model  # noqa: E402

TRAIN = ROOT / "models" / "mnist_train.npz"
TEST = ROOT / "models" / "mnist_test.npz"
RATES = {"resnet_mnist": 0.5, "concat_dw_mnist": 0.3}
TORCH = "PyTorch L1 filter + fine-tune"
TRAIN_ARRAYS = load_npz(TRAIN)


def torch_filter(name: str, path: Path, target_macs: float, one: dict, epochs: int, lr: float, seed: int):
    """The PyTorch baseline for the residual CNN: L1-norm filter pruning (Li et al. 2017) of each
    block's inner channels (the residual streams stay whole, as onnxprune keeps them) at the
    keep ratio whose MACs come closest to onnxprune's, then masked fine-tuning with the same epochs
    (SGD, cosine from `lr`, no augmentation). Channels are masked, not removed: its MACs are those
    that meet non-zero weights. None for models without a twin's channel map."""
    if name != "resnet_mnist":
        return None
    import copy

    import torch

    sys.path.insert(0, str(ROOT / "models"))
    import twins

    torch.set_num_threads(2)
    torch.manual_seed(seed)
    model = onnx.load(str(path))
    inits = {t.name: onnx.numpy_helper.to_array(t) for t in model.graph.initializer}
    twin = twins.load_onnx_weights(twins.TWINS[name](), inits)
    spaces = [("block1_conv1", "block1_conv2"), ("block2_conv1", "block2_conv2")]  # producer, consumer

    def masks_for(keep: float) -> dict:
        out = {}
        for prod, cons in spaces:
            w = getattr(twin, prod).weight.detach()
            m = torch.zeros(w.shape[0])
            m[w.abs().sum((1, 2, 3)).argsort(descending=True)[:max(1, round(keep * w.shape[0]))]] = 1
            out[f"{prod}.weight"] = m[:, None, None, None].expand_as(w).clone()
            out[f"{prod}_bn.weight"], out[f"{prod}_bn.bias"] = m.clone(), m.clone()
            out[f"{cons}.weight"] = m[None, :, None, None].expand_as(getattr(twin, cons).weight).clone()
        return out

    def masked(module, masks):
        params = dict(module.named_parameters())
        with torch.no_grad():
            for k, m in masks.items():
                params[k].mul_(m)
        return module

    def macs(module) -> float:  # MACs on non-zero weights, the graph prepared as the other methods see it
        folded = prepare(with_weights(model, twins.onnx_weights(module, list(inits)))).export_base
        return count_macs(folded, one)[1]

    keep = min(np.arange(0.05, 1.0, 0.05), key=lambda k: abs(macs(masked(copy.deepcopy(twin), masks_for(k))) - target_macs))
    masks = masks_for(keep)
    twins.fit(masked(twin, masks), TRAIN_ARRAYS["input"], TRAIN_ARRAYS["labels"], epochs, lr, seed, augment=False,
              masks=masks)
    return prepare(with_weights(model, twins.onnx_weights(twin, list(inits)))).export_base, f"keep {keep:.2f} of inner channels"


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--epochs", type=int, default=10, help="epochs of each phase (reweighted, fine-tune)")
    ap.add_argument("--models", default=",".join(RATES))
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--torch-lr", type=float, default=0.01, help="the PyTorch baseline's starting learning rate")
    ap.add_argument("--out-dir", type=Path, default=ROOT / "benchmarks" / "results")
    args = ap.parse_args()
    import onnxsim.pruning as osp

    test = load_npz(TEST)
    one, batch32 = {"input": test["input"][:1]}, {"input": test["input"][:32]}
    results = {"machine": f"{platform.processor() or platform.machine()}, {os.cpu_count()} cores",
               "epochs": args.epochs, "seed": args.seed, "models": {}}
    for name in args.models.split(","):
        rate = RATES[name]
        path = ROOT / "models" / f"{name}.onnx"
        dense = prepare(read_model(path)).export_base  # simplified, as every method sees it
        sched = onnxprune.Schedule(epochs=args.epochs, finetune_epochs=args.epochs)
        models, notes = {"dense": dense}, {}
        for label, method in (("onnxprune reweighted", "reweighted"), ("magnitude + fine-tune", "magnitude")):
            t = time.perf_counter()
            r = onnxprune.prune(path, rate, structure="filter", rate_of="macs", method=method, finetune_baseline=True,
                                data=TRAIN, eval_data=TEST, schedule=sched, seed=args.seed, latency=False)
            models[label] = r.model
            notes[label] = f"{time.perf_counter() - t:.0f} s"
            print(f"{name} {label}: {notes[label]}", flush=True)
        target = count_macs(models["onnxprune reweighted"], one)[0]
        import onnxsim

        folded = onnxsim.simplify(read_model(path))[0]  # onnxsim's own pipeline: BatchNorm folded, which its pruner needs
        best = None
        for s in np.arange(0.05, 0.96, 0.05):
            for glob in (False, True):
                m = osp.apply_structured_pruning(folded, sparsity=float(s), global_sparsity=glob)
                gap = abs(count_macs(m, one)[0] - target)
                if best is None or gap < best[0]:
                    best = (gap, m, f"sparsity {s:.2f}{', global' if glob else ''}")
        models["onnxsim structured"] = best[1]
        notes["onnxsim structured"] = best[2] + ", no training"
        baseline = torch_filter(name, path, target, one, 2 * args.epochs, args.torch_lr, args.seed)
        if baseline is not None:
            models[TORCH], notes[TORCH] = baseline[0], (f"{baseline[1]}; masked, not removed: MACs that meet non-zero "
                                                        "weights; runs at dense speed")
        times = {b: latencies(models, feed, runs=400, budget_s=40) for b, feed in (("1", one), ("32", batch32))}
        rows = []
        for label, m in models.items():
            acc = accuracy(run_model(_session(m), test, ["input"])[0], test["labels"])
            macs = count_macs(m, one)[1 if label == TORCH else 0]
            rows.append({"method": label, "accuracy": acc, "params": param_count(m), "macs": macs,
                         "latency_b1_ms": times["1"][label], "latency_b32_ms": times["32"][label],
                         "macs_reduction": count_macs(dense, one)[0] / macs,
                         "speedup_b1": times["1"]["dense"] / times["1"][label],
                         "speedup_b32": times["32"]["dense"] / times["32"][label], "note": notes.get(label, "")})
        results["models"][name] = {"rate": rate, "rows": rows}
        print(_table(name, rate, rows), flush=True)
    args.out_dir.mkdir(parents=True, exist_ok=True)
    (args.out_dir / "structured.json").write_text(json.dumps(results, indent=2) + "\n")
    md = [f"Command: `python benchmarks/structured.py --epochs {args.epochs}`; {results['machine']}; seed {args.seed}.", ""]
    for name, r in results["models"].items():
        md += [_table(name, r["rate"], r["rows"]), ""]
    (args.out_dir / "structured.md").write_text("\n".join(md))


def _table(name, rate, rows) -> str:
    out = [f"**{name}**, filter pruning at `--rate {rate} --rate-of macs` (share of MACs per sample removed)", "",
           "| method | test accuracy | params | MACs/sample | MACs reduction | latency b1 (ms) | speed-up b1 "
           "| latency b32 (ms) | speed-up b32 | speed-up b32 / MACs reduction | note |",
           "|---|---|---|---|---|---|---|---|---|---|---|"]
    for r in rows:
        out.append(f"| {r['method']} | {100 * r['accuracy']:.2f}% | {r['params']:,} | {r['macs']:,} | "
                   f"{r['macs_reduction']:.2f}x | {r['latency_b1_ms']:.3f} | {r['speedup_b1']:.2f}x | "
                   f"{r['latency_b32_ms']:.3f} | {r['speedup_b32']:.2f}x | "
                   f"{r['speedup_b32'] / r['macs_reduction']:.2f} | {r['note']} |")
    return "\n".join(out)


if __name__ == "__main__":
    main()
