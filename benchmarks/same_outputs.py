"""Regression check for refactors: run the same CLI jobs with this checkout and with an earlier
git revision, and compare the written models byte for byte (and the headline metric and kept
counts from `--report`). Short schedules, every structure, quantization, layer-wise, no data.

    python benchmarks/same_outputs.py --rev ed45ebb

Writes benchmarks/results/same_outputs.md (and prints it). Needs git; the revision is checked out
in a temporary worktree and removed afterwards.
"""
from __future__ import annotations

import argparse
import hashlib
import json
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
M = "models"
SHORT = ["--epochs", "2", "--finetune-epochs", "2", "--no-latency", "-q"]
MNIST = ["--data", f"{M}/mnist_train.npz", "--eval-data", f"{M}/mnist_test.npz"]
JOBS = {
    "lenet5 unstructured 0.9": [f"{M}/lenet5.onnx", "--rate", "0.9", *MNIST],
    "lenet5 magnitude + fine-tune": [f"{M}/lenet5.onnx", "--method", "magnitude", "--finetune", *MNIST],
    "lenet5 magnitude one-shot": [f"{M}/lenet5.onnx", "--method", "magnitude", *MNIST],
    "resnet filter 0.5 of MACs": [f"{M}/resnet_mnist.onnx", "--structure", "filter", "--rate", "0.5",
                                  "--rate-of", "macs", *MNIST],
    "resnet filter, BatchNorm unfolded": [f"{M}/resnet_mnist.onnx", "--structure", "filter", "--rate", "0.4",
                                          "--no-simplify", *MNIST],
    "concat_dw channel 0.3": [f"{M}/concat_dw_mnist.onnx", "--structure", "channel", "--rate", "0.3", *MNIST],
    "lenet5 nm 2:4": [f"{M}/lenet5.onnx", "--structure", "nm", *MNIST],
    "lenet5 pattern 0.9": [f"{M}/lenet5.onnx", "--structure", "pattern", "--rate", "0.9", *MNIST],
    "lenet5 block 0.9": [f"{M}/lenet5.onnx", "--structure", "block", "--rate", "0.9", *MNIST],
    "lenet5 0.97 int8 QAT": [f"{M}/lenet5.onnx", "--rate", "0.97", "--quantize", "int8", "--qat", *MNIST],
    "lenet5 0.9 int8 for TensorRT": [f"{M}/lenet5.onnx", "--quantize", "int8", "--target", "trt", *MNIST],
    "lenet5 0.9 4-bit clusters": [f"{M}/lenet5.onnx", "--quantize", "cluster", *MNIST],
    "lenet5 layer-wise 0.9": [f"{M}/lenet5.onnx", "--mode", "layerwise", *MNIST],
    "digits MLP, no data": [f"{M}/digits_mlp.onnx", "--rate", "0.8", "--synth-samples", "512"],
    "digits MLP, layer scope, seed 3": [f"{M}/digits_mlp.onnx", "--rate", "0.8", "--data",
                                         f"{M}/digits_train.npz", "--seed", "3", "--scope", "layer"],
}


def run(tree: Path, args: list[str], out: Path) -> dict:
    report = out.with_suffix(".json")
    env = {**os.environ, "PYTHONPATH": str(tree)}
    start = time.perf_counter()
    done = subprocess.run([sys.executable, "-m", "onnxprune.cli", *args, *SHORT, "-o", str(out),
                           "--report", str(report)], cwd=tree, env=env, capture_output=True, text=True)
    if done.returncode != 0:
        return {"error": done.stderr.strip().splitlines()[-1] if done.stderr.strip() else f"exit {done.returncode}"}
    rep = json.loads(report.read_text())
    return {"sha256": hashlib.sha256(out.read_bytes()).hexdigest(), "metric": rep["metric"]["pruned"],
            "kept": rep["totals"]["kept"], "seconds": time.perf_counter() - start}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--rev", required=True, help="the git revision to compare with")
    ap.add_argument("--out", type=Path, default=ROOT / "benchmarks" / "results" / "same_outputs.md")
    args = ap.parse_args()
    rev = subprocess.check_output(["git", "rev-parse", "--short", args.rev], cwd=ROOT, text=True).strip()
    head = subprocess.check_output(["git", "rev-parse", "--short", "HEAD"], cwd=ROOT, text=True).strip()
    with tempfile.TemporaryDirectory(prefix="onnxprune-same-") as tmp:
        old_tree = Path(tmp) / "old"
        subprocess.run(["git", "worktree", "add", "--detach", str(old_tree), rev], cwd=ROOT, check=True,
                       capture_output=True)
        try:
            rows = []
            for name, job in JOBS.items():
                old = run(old_tree, job, Path(tmp) / "old.onnx")
                new = run(ROOT, job, Path(tmp) / "new.onnx")
                same = "error" not in old and old == {**new, "seconds": old["seconds"]}
                rows.append((name, old, new, same))
                print(f"{name}: {'same' if same else 'DIFFERENT'}", flush=True)
        finally:
            subprocess.run(["git", "worktree", "remove", "--force", str(old_tree)], cwd=ROOT, capture_output=True)
    lines = [f"Command: `python benchmarks/same_outputs.py --rev {args.rev}`: each job run by revision {rev} "
             f"and by {head} (plus uncommitted changes, if any), with `{' '.join(SHORT)}`.", "",
             "| job | written model | metric (old → new) | weights kept (old → new) | seconds (old, new) |",
             "|---|---|---|---|---|"]
    for name, old, new, same in rows:
        if "error" in old or "error" in new:
            lines.append(f"| {name} | error: {old.get('error', '')} / {new.get('error', '')} | | | |")
            continue
        lines.append(f"| {name} | {'byte-identical' if same else 'DIFFERENT'} | {old['metric']:.4f} → "
                     f"{new['metric']:.4f} | {old['kept']:,} → {new['kept']:,} | {old['seconds']:.0f}, "
                     f"{new['seconds']:.0f} |")
    lines += ["", f"{sum(r[3] for r in rows)} of {len(rows)} jobs wrote byte-identical models."]
    text = "\n".join(lines) + "\n"
    args.out.write_text(text)
    print(text)


if __name__ == "__main__":
    main()
