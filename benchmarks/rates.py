"""Converged models on MNIST: test accuracy vs compression for onnxprune and the baselines, in
one run, over several seeds.

    pip install -e '.[dev]' && python benchmarks/rates.py [--model lenet5] \
        [--rates 0.5,0.9] [--methods reweighted,torch-gmp] [--seeds 0,1,2]

Every method prunes models/<model>.onnx (trained to convergence by models/build_models.py) and is
scored on models/mnist_test.npz (1,000 images, never trained on). The trained methods get the
same data (models/mnist_train.npz), the same epoch budget (onnxprune's reweighted + fine-tuning
epochs, default 10 + 10) and the same augmentation policy (none):
  reweighted            onnxprune's default
  magnitude-ft          onnxprune --method magnitude --finetune --no-reconstruct
  torch-oneshot-ft      PyTorch: global magnitude pruning of the converged weights, then masked
                        fine-tuning (SGD, momentum 0.9, cosine from --torch-lr)
  torch-gmp             PyTorch: gradual magnitude pruning (Zhu & Gupta 2017): sparsity rises as
                        s·(1 − (1 − t/T)³) over the first two thirds of the epochs, then held
  onnxsim-magnitude / onnxsim-wanda / onnxsim-sparsegpt   onnxsim's one-shot pruners (no training)
  onnxsim-blockft       onnxsim's best pipeline: global magnitude, then its label-free block fine-tuning
                        against the dense model (ONNX step graphs on onnxruntime, sparsity kept), at the
                        learning rate of BLOCKFT_LRS that scores best on a validation split of the
                        training data (never on the test set)
Weights kept are counted by this script over the same layers (every Conv and Gemm/MatMul weight)
for every method. Rows give mean ± std over the seeds (one-shot onnxsim magnitude has no seed).
Writes <model>_rates.{md,json,png} to --out-dir (default benchmarks/results/).
"""
from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path

import numpy as np
import onnx

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))
sys.path.insert(0, str(ROOT / "models"))

import onnxprune  # noqa: E402
from onnxprune.data import load_npz, run_model  # noqa: E402
from onnxprune.export import with_weights  # noqa: E402
from onnxprune.layers import find_prunable  # noqa: E402
from onnxprune.metrics import accuracy  # noqa: E402
from onnxprune.plumbing import session  # noqa: E402
from onnxprune.storage import decoded_weights  # noqa: E402

TRAIN = ROOT / "models" / "mnist_train.npz"
TEST = ROOT / "models" / "mnist_test.npz"
METHODS = ["reweighted", "magnitude-ft", "torch-oneshot-ft", "torch-gmp", "onnxsim-magnitude", "onnxsim-blockft",
           "onnxsim-wanda", "onnxsim-sparsegpt"]
LABEL = {"reweighted": "onnxprune reweighted", "magnitude-ft": "onnxprune magnitude + fine-tune (no refit)",
         "torch-oneshot-ft": "PyTorch one-shot + fine-tune", "torch-gmp": "PyTorch gradual magnitude (GMP)",
         "onnxsim-magnitude": "onnxsim magnitude", "onnxsim-blockft": "onnxsim magnitude + block fine-tune",
         "onnxsim-wanda": "onnxsim Wanda",
         "onnxsim-sparsegpt": "onnxsim SparseGPT"}
SEEDLESS = {"onnxsim-magnitude"}


def run_onnxprune(path: Path, method: str, rate: float, seed: int) -> onnx.ModelProto:
    result = onnxprune.prune(path, rate, data=TRAIN, eval_data=TEST, seed=seed, latency=False,
                             method="reweighted" if method == "reweighted" else "magnitude",
                             finetune_baseline=method == "magnitude-ft", reconstruct=method != "magnitude-ft")
    return result.model


def run_onnxsim(path: Path, method: str, rate: float, seed: int, train: dict) -> onnx.ModelProto:
    import onnxsim.pruning as P

    model = onnx.load(str(path))
    rng = np.random.default_rng(seed)
    calib = [{"input": train["input"][i:i + 64]} for i in rng.choice(len(train["input"]) - 64, 8, replace=False)]
    if method == "onnxsim-magnitude":
        return P.apply_magnitude_pruning(model, sparsity=rate, global_sparsity=True)
    if method == "onnxsim-wanda":
        return P.apply_wanda_pruning(model, calibration_data=calib, num_samples=len(calib), sparsity=rate,
                                     seed=seed, global_sparsity=True)
    if method == "onnxsim-blockft":
        return onnxsim_blockft(model, rate, seed, train)
    return P.apply_sparsegpt_pruning(model, calibration_data=calib, num_samples=len(calib), sparsity=rate, seed=seed)


BLOCKFT_LRS = (1e-2, 1e-3, 1e-4)


def onnxsim_blockft(model: onnx.ModelProto, rate: float, seed: int, train: dict) -> onnx.ModelProto:
    """onnxsim's magnitude pruning + apply_block_finetune_all_blocks, its learning rate chosen on
    validation: the training data is split (seeded) into 1/6 validation and the rest, whose batches
    of 64 feed the block fine-tuning (labels unused: it matches the dense model's activations)."""
    import onnxsim.pruning as P
    from onnxsim.qat import apply_block_finetune_all_blocks

    rng = np.random.default_rng(seed)
    order = rng.permutation(len(train["input"]))
    n_val = len(order) // 6
    val = {k: v[order[:n_val]] for k, v in train.items()}
    fit = train["input"][order[n_val:]]
    calib = [{"input": fit[i:i + 64]} for i in range(0, len(fit) - 63, 64)]
    pruned = P.apply_magnitude_pruning(model, sparsity=rate, global_sparsity=True)
    best = None
    for lr in BLOCKFT_LRS:
        tuned, results = apply_block_finetune_all_blocks(model, pruned, calibration_data=calib,
                                                         num_samples=len(calib), seed=seed, batch_seed=seed,
                                                         learning_rate=lr, preserve_sparsity=True)
        acc = accuracy(run_model(session(tuned), val, ["input"])[0], val["labels"])
        skipped = [r.skipped_reason for r in results if getattr(r, "skipped_reason", None)]
        print(f"    onnxsim block fine-tune lr {lr:g}: validation accuracy {100 * acc:.2f}%; "
              f"{len(results) - len(skipped)} of {len(results)} blocks trained"
              + (f" (first skipped: {skipped[0]})" if skipped else ""), flush=True)
        if best is None or acc > best[0]:
            best = (acc, tuned)
    return best[1]


def run_torch(path: Path, name: str, method: str, rate: float, seed: int, train: dict, epochs: int,
              lr: float) -> onnx.ModelProto:
    """The PyTorch twin of the graph, loaded with its weights, pruned and fine-tuned, then written
    back into the graph."""
    import torch
    import twins

    torch.set_num_threads(2)
    model = onnx.load(str(path))
    inits = {t.name: onnx.numpy_helper.to_array(t) for t in model.graph.initializer}
    torch.manual_seed(seed)
    twin = twins.load_onnx_weights(twins.TWINS[name](), inits)
    params = dict(twin.named_parameters())
    prunable = [twins.torch_key(layer.weight) for layer in find_prunable(model)[0]]

    def global_masks(sparsity: float) -> dict:
        scores = torch.cat([params[k].detach().abs().flatten() for k in prunable])
        kth = int(round(sparsity * scores.numel()))
        cut = torch.kthvalue(scores, kth).values if kth else torch.tensor(-1.0)
        return {k: (params[k].detach().abs() > cut).float() for k in prunable}

    if method == "torch-oneshot-ft":
        masks = global_masks(rate)
        with torch.no_grad():
            for k, m in masks.items():
                params[k].mul_(m)
        twins.fit(twin, train["input"], train["labels"], epochs, lr, seed, augment=False, masks=masks)
    else:  # gradual: the masks follow the cubic schedule, updated after every epoch of the first 2/3
        ramp = max(1, (2 * epochs) // 3)
        masks = global_masks(0.0)

        def on_epoch(epoch, module):
            s = rate * (1 - (1 - min(epoch + 1, ramp) / ramp) ** 3)
            masks.update(global_masks(s))
            with torch.no_grad():
                for k, m in masks.items():
                    params[k].mul_(m)

        twins.fit(twin, train["input"], train["labels"], epochs, lr, seed, augment=False, masks=masks,
                  on_epoch=on_epoch)
    return with_weights(model, twins.onnx_weights(twin, list(inits)))


def score(model: onnx.ModelProto, reference: onnx.ModelProto, test: dict) -> tuple[float, int, int]:
    """Test accuracy, and the non-zero weights of the reference's layers as `model` computes with
    them: found by node and input slot (onnxsim writes pruned weights under new names), compactly
    stored ones decoded."""
    acc = accuracy(run_model(session(model), test, ["input"])[0], test["labels"])
    layers, _ = find_prunable(reference)
    ref_nodes = {n.name: n for n in reference.graph.node}
    nodes = {n.name: n for n in model.graph.node}
    weights = decoded_weights(model)
    total = sum(layer.size for layer in layers)
    kept = 0
    for layer in layers:
        slot = list(ref_nodes[layer.node].input).index(layer.weight)
        kept += int(np.count_nonzero(weights[nodes[layer.node].input[slot]]))
    return acc, kept, total


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--model", default="lenet5", choices=["lenet5", "resnet_mnist", "concat_dw_mnist"])
    ap.add_argument("--rates", default="0.5,0.9,0.95,0.98,0.99,0.995")
    ap.add_argument("--methods", default=",".join(METHODS))
    ap.add_argument("--seeds", default="0,1,2")
    ap.add_argument("--headline", default="0.9,0.98", help="rates run with every seed (the others: the first seed); none: all with the first")
    ap.add_argument("--torch-lr", type=float, default=0.01, help="PyTorch baselines' starting learning rate")
    ap.add_argument("--out-dir", type=Path, default=ROOT / "benchmarks" / "results")
    ap.add_argument("--merge", action="store_true",
                    help="keep the rows of an earlier <model>_rates.json that this run does not redo")
    args = ap.parse_args()
    path = ROOT / "models" / f"{args.model}.onnx"
    rates, methods = [float(r) for r in args.rates.split(",")], args.methods.split(",")
    seeds = [int(s) for s in args.seeds.split(",")]
    headline = {float(r) for r in args.headline.split(",") if r not in ("", "none")}
    sched = onnxprune.Schedule()
    epochs = sched.epochs + sched.finetune_epochs  # the same budget for every trained method
    train, test = load_npz(TRAIN), load_npz(TEST)
    reference = onnx.load(str(path))
    dense_acc, _, total = score(reference, reference, test)
    rows = []
    for rate in rates:
        for method in methods:
            for seed in seeds[:1] if method in SEEDLESS or rate not in headline else seeds:
                start = time.perf_counter()
                if method in ("reweighted", "magnitude-ft"):
                    model = run_onnxprune(path, method, rate, seed)
                elif method.startswith("torch"):
                    model = run_torch(path, args.model, method, rate, seed, train, epochs, args.torch_lr)
                else:
                    model = run_onnxsim(path, method, rate, seed, train)
                wall = time.perf_counter() - start
                acc, kept, _ = score(model, reference, test)
                rows.append({"rate": rate, "method": method, "seed": seed, "test_accuracy": acc, "kept": kept,
                             "total": total, "compression": total / max(kept, 1), "wall_s": wall})
                print(f"rate {rate:<6} {LABEL[method]:<32} seed {seed}  acc {100 * acc:6.2f}%  kept {kept:>7,}  "
                      f"{total / max(kept, 1):6.1f}x  {wall:6.1f}s", flush=True)
    args.out_dir.mkdir(parents=True, exist_ok=True)
    stem = args.out_dir / f"{args.model}_rates"
    commands = ["python benchmarks/rates.py " + " ".join(sys.argv[1:])]
    if args.merge and stem.with_suffix(".json").exists():
        earlier = json.loads(stem.with_suffix(".json").read_text())
        redone = {(r["rate"], r["method"]) for r in rows}
        rows = [r for r in earlier["rows"] if (r["rate"], r["method"]) not in redone] + rows
        rates = sorted({r["rate"] for r in rows})
        methods = [m for m in METHODS if any(r["method"] == m for r in rows)]
        commands = earlier["meta"].get("commands", [earlier["meta"].get("command", "")]) + [
            c + " (replaced its rows)" for c in commands]
    meta = {"model": args.model, "dense_test_accuracy": dense_acc, "prunable_weights": total, "seeds": seeds,
            "epochs": epochs, "commands": commands}
    stem.with_suffix(".json").write_text(json.dumps({"meta": meta, "rows": rows}, indent=2) + "\n")
    stem.with_suffix(".md").write_text(markdown(summary(rows), rates, methods, meta))
    plot(summary(rows), methods, meta, stem.with_suffix(".png"))
    print(stem.with_suffix(".md").read_text())


def summary(rows: list[dict]) -> dict:
    """(rate, method) → mean and std of test accuracy and the mean compression over the seeds."""
    out = {}
    for key in {(r["rate"], r["method"]) for r in rows}:
        acc = [r["test_accuracy"] for r in rows if (r["rate"], r["method"]) == key]
        comp = [r["compression"] for r in rows if (r["rate"], r["method"]) == key]
        out[key] = {"mean": float(np.mean(acc)), "std": float(np.std(acc)), "n": len(acc),
                    "compression": float(np.mean(comp))}
    return out


def markdown(stats: dict, rates, methods, meta) -> str:
    out = [f"Dense {meta['model']}: test accuracy {100 * meta['dense_test_accuracy']:.2f}% on 1,000 MNIST test "
           f"images, {meta['prunable_weights']:,} prunable weights; {meta['epochs']} epochs for every trained "
           f"method; seeds {', '.join(map(str, meta['seeds']))}. Commands: "
           + "; ".join(f"`{c}`" for c in meta["commands"]), "",
           "Test accuracy, mean ± std over the seeds where several ran (Δ: mean minus dense; the best mean at each "
           "rate in bold):", "",
           "| rate | " + " | ".join(LABEL[m] for m in methods) + " |", "|---:|" + "---:|" * len(methods)]
    for rate in rates:
        cells = {m: stats.get((rate, m)) for m in methods}
        best = max((c["mean"] for c in cells.values() if c), default=None)
        row = []
        for m in methods:
            c = cells[m]
            if c is None:
                row.append("")
                continue
            text = f"{100 * c['mean']:.2f}" + (f" ± {100 * c['std']:.2f}" if c["n"] > 1 else "")
            text += f" ({100 * (c['mean'] - meta['dense_test_accuracy']):+.2f})"
            row.append(f"**{text}**" if c["mean"] == best else text)
        out.append(f"| {rate} ({1 / (1 - rate):.0f}×) | " + " | ".join(row) + " |")
    return "\n".join(out) + "\n"


def plot(stats: dict, methods, meta, path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(7.5, 4.5))
    for m in methods:
        pts = sorted((c["compression"], 100 * c["mean"], 100 * c["std"]) for (r, mm), c in stats.items() if mm == m)
        if pts:
            x, y, e = zip(*pts)
            ax.errorbar(x, y, yerr=e, marker="o", capsize=3, label=LABEL[m])
    ax.axhline(100 * meta["dense_test_accuracy"], color="gray", ls="--", lw=1, label="dense")
    ax.set_xscale("log")
    ax.set_xlabel("compression (prunable weights / weights kept)")
    ax.set_ylabel("MNIST test accuracy (%)")
    ax.set_ylim(max(0, 100 * meta["dense_test_accuracy"] - 12), 100)
    ax.set_title(f"{meta['model']} (converged): accuracy vs compression, mean ± std over seeds")
    ax.legend(fontsize=7)
    ax.grid(alpha=0.3)
    fig.tight_layout()
    fig.savefig(path, dpi=120)


if __name__ == "__main__":
    main()
