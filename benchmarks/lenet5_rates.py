"""LeNet-5 on MNIST: test accuracy vs compression for onnxprune and the baselines.

    pip install -e '.[dev]' && python benchmarks/lenet5_rates.py [--rates 0.9,0.95] [--methods reweighted,magnitude-ft]

Every method prunes models/lenet5.onnx and is scored on models/mnist_test.npz (never trained on).
The trained methods (reweighted; magnitude + fine-tune) train on models/mnist_train.npz with the
same epoch budget. Weights kept are counted by this script over the same layers (all Conv and Gemm
weights) for every method, from the model each one returns. Writes a markdown table, a JSON file
and a PNG plot to --out-dir (default benchmarks/results/).
"""
from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path

import numpy as np
import onnx
import onnxruntime as ort

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

import onnxprune  # noqa: E402
from onnxprune.data import load_npz, run_model  # noqa: E402
from onnxprune.metrics import accuracy  # noqa: E402
from onnxprune.layers import find_prunable  # noqa: E402
from onnxprune.storage import decoded_weights  # noqa: E402
from onnxprune.plumbing import session_options  # noqa: E402

MODEL = ROOT / "models" / "lenet5.onnx"
TRAIN = ROOT / "models" / "mnist_train.npz"
TEST = ROOT / "models" / "mnist_test.npz"
METHODS = ["reweighted", "magnitude-ft", "magnitude", "onnxsim-magnitude", "onnxsim-wanda", "onnxsim-sparsegpt"]
LABEL = {"reweighted": "onnxprune reweighted", "magnitude-ft": "magnitude + fine-tune",
         "magnitude": "magnitude one-shot", "onnxsim-magnitude": "onnxsim magnitude",
         "onnxsim-wanda": "onnxsim Wanda", "onnxsim-sparsegpt": "onnxsim SparseGPT"}


def run(method: str, rate: float, seed: int, calib) -> onnx.ModelProto:
    if method in ("reweighted", "magnitude", "magnitude-ft"):
        result = onnxprune.prune(MODEL, rate, data=TRAIN, eval_data=TEST, seed=seed,
                                 method="reweighted" if method == "reweighted" else "magnitude",
                                 finetune_baseline=method == "magnitude-ft")
        return result.model
    import onnxsim.pruning as P

    model = onnx.load(str(MODEL))
    if method == "onnxsim-magnitude":
        return P.apply_magnitude_pruning(model, sparsity=rate, global_sparsity=True)
    if method == "onnxsim-wanda":
        return P.apply_wanda_pruning(model, calibration_data=calib, num_samples=len(calib), sparsity=rate,
                                     seed=seed, global_sparsity=True)
    return P.apply_sparsegpt_pruning(model, calibration_data=calib, num_samples=len(calib), sparsity=rate, seed=seed)


def score(model: onnx.ModelProto, test: dict) -> tuple[float, int, int]:
    sess = ort.InferenceSession(model.SerializeToString(), session_options(), providers=["CPUExecutionProvider"])
    acc = accuracy(run_model(sess, test, ["input"])[0], test["labels"])
    # weights as the model computes with them: compactly stored ones are decoded, not skipped
    layers, _ = find_prunable(onnx.load(str(MODEL)))
    weights = decoded_weights(model)
    total = sum(layer.size for layer in layers)
    kept = sum(int(np.count_nonzero(weights[layer.weight])) for layer in layers)
    return acc, kept, total


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--rates", default="0.5,0.75,0.9,0.95,0.98,0.99")
    ap.add_argument("--methods", default=",".join(METHODS))
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--out-dir", type=Path, default=ROOT / "benchmarks" / "results")
    args = ap.parse_args()
    rates = [float(r) for r in args.rates.split(",")]
    methods = args.methods.split(",")
    test = load_npz(TEST)
    train = load_npz(TRAIN)
    rng = np.random.default_rng(args.seed)
    calib = [{"input": train["input"][i:i + 64]} for i in rng.choice(len(train["input"]) - 64, 8, replace=False)]
    dense_acc, dense_kept, total = score(onnx.load(str(MODEL)), test)
    rows = []
    for rate in rates:
        for method in methods:
            start = time.perf_counter()
            model = run(method, rate, args.seed, calib)
            wall = time.perf_counter() - start
            acc, kept, _ = score(model, test)
            rows.append({"rate": rate, "method": method, "test_accuracy": acc, "kept": kept, "total": total,
                         "compression": total / max(kept, 1), "wall_s": wall})
            print(f"rate {rate:<5} {LABEL[method]:<24} acc {100 * acc:6.2f}%  kept {kept:>7,}  "
                  f"{total / max(kept, 1):6.1f}x  {wall:6.1f}s", flush=True)
    args.out_dir.mkdir(parents=True, exist_ok=True)
    meta = {"dense_test_accuracy": dense_acc, "prunable_weights": total, "seed": args.seed,
            "command": "python benchmarks/lenet5_rates.py " + " ".join(sys.argv[1:])}
    (args.out_dir / "lenet5_rates.json").write_text(json.dumps({"meta": meta, "rows": rows}, indent=2) + "\n")
    (args.out_dir / "lenet5_rates.md").write_text(markdown(rows, rates, methods, meta))
    plot(rows, methods, dense_acc, args.out_dir / "lenet5_rates.png")
    print(f"wrote {args.out_dir}/lenet5_rates.{{md,json,png}}")


def markdown(rows, rates, methods, meta) -> str:
    out = [f"Dense LeNet-5: test accuracy {100 * meta['dense_test_accuracy']:.2f}% on 1,000 MNIST test images, "
           f"{meta['prunable_weights']:,} prunable weights. Command: `{meta['command']}`", "",
           "| rate | method | test accuracy | Δ vs dense | weights kept | compression | wall time |",
           "|---:|---|---:|---:|---:|---:|---:|"]
    for r in rows:
        out.append(f"| {r['rate']} | {LABEL[r['method']]} | {100 * r['test_accuracy']:.2f}% | "
                   f"{100 * (r['test_accuracy'] - meta['dense_test_accuracy']):+.2f} | {r['kept']:,} | "
                   f"{r['compression']:.1f}× | {r['wall_s']:.1f} s |")
    return "\n".join(out) + "\n"


def plot(rows, methods, dense_acc, path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(7, 4.5))
    for m in methods:
        pts = sorted((r["compression"], 100 * r["test_accuracy"]) for r in rows if r["method"] == m)
        ax.plot(*zip(*pts), marker="o", label=LABEL[m])
    ax.axhline(100 * dense_acc, color="gray", ls="--", lw=1, label="dense")
    ax.set_xscale("log")
    ax.set_xlabel("compression (prunable weights / weights kept)")
    ax.set_ylabel("MNIST test accuracy (%)")
    ax.set_ylim(max(0, 100 * dense_acc - 30), 100)
    ax.set_title("LeNet-5: accuracy vs compression")
    ax.legend(fontsize=8)
    ax.grid(alpha=0.3)
    fig.tight_layout()
    fig.savefig(path, dpi=120)


if __name__ == "__main__":
    main()
