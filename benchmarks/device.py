"""Training speed by device: steps per second of onnxprune's training loop on the CPU and, where
ONNX Runtime's CUDA training build and a GPU are present, on the GPU, for the LeNet-5 example and
a ResNet-18-sized CNN (11.2M parameters, 3x32x32 inputs, built here with random weights: only
speed is measured), at batch 64 and 256.

    pip install -e '.[dev]' && python benchmarks/device.py [--devices cpu,cuda] [--batches 64,256]

Each run is `onnxprune.prune` with one reweighted epoch and one fine-tuning epoch. Where the time
goes is read off the trainer: `Trainer.step` (host-to-device copy of the batch, forward, backward,
optimizer step) and `Trainer.set`/`get` (frozen parameters: masks and penalty coefficients copied
to the device between steps, weights read back), timed by wrapping them. Writes
benchmarks/results/device.{md,json}.
"""
from __future__ import annotations

import argparse
import json
import platform
import sys
import time
from pathlib import Path

import numpy as np
import onnx
from onnx import TensorProto, helper, numpy_helper

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

import onnxprune  # noqa: E402
from onnxprune import training  # noqa: E402


def resnet18(classes: int = 10, seed: int = 0) -> onnx.ModelProto:
    """ResNet-18 for 32x32 images (CIFAR layout: a 3x3 stem, four stages of two basic blocks)."""
    rng = np.random.default_rng(seed)
    inits, nodes = [], []

    def conv_bn(name, x, cin, cout, k, stride, relu=True):
        w = rng.normal(0, np.sqrt(2 / (cin * k * k)), (cout, cin, k, k)).astype(np.float32)
        inits.extend([numpy_helper.from_array(w, f"{name}.weight"),
                      numpy_helper.from_array(np.ones(cout, np.float32), f"{name}.bn.weight"),
                      numpy_helper.from_array(np.zeros(cout, np.float32), f"{name}.bn.bias"),
                      numpy_helper.from_array(np.zeros(cout, np.float32), f"{name}.bn.running_mean"),
                      numpy_helper.from_array(np.ones(cout, np.float32), f"{name}.bn.running_var")])
        nodes.append(helper.make_node("Conv", [x, f"{name}.weight"], [f"{name}.conv"], name=name, pads=[k // 2] * 4,
                                      strides=[stride, stride], kernel_shape=[k, k]))
        nodes.append(helper.make_node("BatchNormalization", [f"{name}.conv", f"{name}.bn.weight", f"{name}.bn.bias",
                                                             f"{name}.bn.running_mean", f"{name}.bn.running_var"],
                                      [f"{name}.bn"], name=f"{name}.bn"))
        if not relu:
            return f"{name}.bn"
        nodes.append(helper.make_node("Relu", [f"{name}.bn"], [f"{name}.relu"], name=f"{name}.relu"))
        return f"{name}.relu"

    x = conv_bn("stem", "input", 3, 64, 3, 1)
    cin = 64
    for stage, cout in enumerate((64, 128, 256, 512)):
        for block in range(2):
            stride = 2 if stage and not block else 1
            p = f"layer{stage + 1}.{block}"
            h = conv_bn(f"{p}.conv1", x, cin, cout, 3, stride)
            h = conv_bn(f"{p}.conv2", h, cout, cout, 3, 1, relu=False)
            short = conv_bn(f"{p}.shortcut", x, cin, cout, 1, stride, relu=False) if stride > 1 or cin != cout else x
            nodes.append(helper.make_node("Add", [h, short], [f"{p}.add"], name=f"{p}.add"))
            nodes.append(helper.make_node("Relu", [f"{p}.add"], [f"{p}.out"], name=f"{p}.out"))
            x, cin = f"{p}.out", cout
    inits.append(numpy_helper.from_array(rng.normal(0, 0.02, (classes, 512)).astype(np.float32), "fc.weight"))
    inits.append(numpy_helper.from_array(np.zeros(classes, np.float32), "fc.bias"))
    nodes += [helper.make_node("GlobalAveragePool", [x], ["pool"], name="pool"),
              helper.make_node("Flatten", ["pool"], ["flat"], name="flatten"),
              helper.make_node("Gemm", ["flat", "fc.weight", "fc.bias"], ["logits"], name="fc", transB=1)]
    graph = helper.make_graph(nodes, "resnet18", [helper.make_tensor_value_info("input", TensorProto.FLOAT,
                                                                                 ["N", 3, 32, 32])],
                              [helper.make_tensor_value_info("logits", TensorProto.FLOAT, ["N", classes])], inits)
    return helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)], ir_version=8)


class Timed:
    """Seconds and calls spent in Trainer methods, by wrapping them for one run."""

    def __init__(self, names=("step", "set", "get")):
        self.names, self.seconds, self.calls, self.saved = names, {}, {}, {}

    def __enter__(self):
        for name in self.names:
            original = getattr(training.Trainer, name)
            self.saved[name] = original
            self.seconds[name], self.calls[name] = 0.0, 0

            def wrapped(trainer, *a, _name=name, _original=original, **k):
                start = time.perf_counter()
                try:
                    return _original(trainer, *a, **k)
                finally:
                    self.seconds[_name] += time.perf_counter() - start
                    self.calls[_name] += 1
            setattr(training.Trainer, name, wrapped)
        return self

    def __exit__(self, *exc):
        for name, original in self.saved.items():
            setattr(training.Trainer, name, original)


def run(model, data, batch: int, device: str) -> dict:
    schedule = onnxprune.Schedule(epochs=1, finetune_epochs=1, batch_size=batch, reweight_every=10,
                                  always_reweight=True)
    with Timed() as t:
        start = time.perf_counter()
        result = onnxprune.prune(model, 0.9, data=data, schedule=schedule, latency=False, device=device,
                                 synth_samples=4 * batch)
        wall = time.perf_counter() - start
    steps = sum(p["steps"] for p in result.report["phases"])
    train_s = sum(p["seconds"] for p in result.report["phases"])
    return {"steps": steps, "train_s": train_s, "steps_per_s": steps / train_s, "wall_s": wall,
            "step_s": t.seconds["step"], "set_s": t.seconds["set"], "set_calls": t.calls["set"],
            "get_s": t.seconds["get"], "other_s": train_s - t.seconds["step"] - t.seconds["set"] - t.seconds["get"]}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--devices", default="cpu")
    ap.add_argument("--batches", default="64,256")
    ap.add_argument("--out-dir", type=Path, default=ROOT / "benchmarks" / "results")
    args = ap.parse_args()
    lenet = (ROOT / "models" / "lenet5.onnx", ROOT / "models" / "mnist_train.npz")
    models = {"lenet5": lenet, "resnet18 (11.2M params, 3x32x32)": (resnet18(), None)}
    rows = []
    for device in args.devices.split(","):
        for name, (model, data) in models.items():
            for batch in (int(b) for b in args.batches.split(",")):
                r = run(model, data, batch, device)
                rows.append({"device": device, "model": name, "batch": batch, **r})
                print(f"{device:<7} {name:<34} batch {batch:>4}: {r['steps_per_s']:7.2f} steps/s "
                      f"(step {r['step_s']:.1f} s, frozen-parameter copies {r['set_s']:.2f} s in {r['set_calls']} "
                      f"calls, weight reads {r['get_s']:.2f} s, other {r['other_s']:.1f} s)", flush=True)
    args.out_dir.mkdir(parents=True, exist_ok=True)
    meta = {"command": "python benchmarks/device.py " + " ".join(sys.argv[1:]), "machine": platform.processor()
            or platform.machine()}
    (args.out_dir / "device.json").write_text(json.dumps({"meta": meta, "rows": rows}, indent=2) + "\n")
    lines = [f"Command: `{meta['command']}`", "",
             "| device | model | batch | steps/s | step (fwd+bwd+optimizer) | frozen-parameter copies | weight reads | other |",
             "|---|---|---:|---:|---:|---:|---:|---:|"]
    for r in rows:
        lines.append(f"| {r['device']} | {r['model']} | {r['batch']} | {r['steps_per_s']:.2f} | {r['step_s']:.1f} s | "
                     f"{r['set_s']:.2f} s ({r['set_calls']} calls) | {r['get_s']:.2f} s | {r['other_s']:.1f} s |")
    (args.out_dir / "device.md").write_text("\n".join(lines) + "\n")
    print("\n".join(lines))


if __name__ == "__main__":
    main()
