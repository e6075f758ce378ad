"""Training speed.

`--step-time`: milliseconds per training step at batch 64 on this CPU, with 1 and 2 threads, for
the shipped LeNet-5 and residual CNN: onnxprune's step graph (`stepgraph.Trainer`), ONNX Runtime's
training API (where `onnxruntime-training` is installed: it stopped at 1.19.2) and PyTorch eager
(where torch is installed), on the same training graph (masks, group penalty, cross-entropy,
BatchNorm on batch statistics) and the same batches, interleaved in rounds; medians. `--memory`:
the peak memory of a step of the residual CNN at several batch sizes, each in a fresh process.
`--onnxsim`: the step graph against onnxsim's own ONNX training loop (`compile_training_loop`).

    python benchmarks/device.py --step-time [--memory] [--onnxsim]

Otherwise: by device: steps per second of onnxprune's training loop on the CPU and, where
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
import os
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


# ---------------------------------------------------------------------------- step time

SHIPPED = {"lenet5": "LeNet5", "resnet_mnist": "ResNetMNIST"}


def training_setup(name: str, batch: int):
    """The training graph onnxprune builds for the shipped model (masks and penalty on every
    prunable weight, cross-entropy on labels, BatchNorm on batch statistics), its trainable and
    frozen tensors, and one batch of MNIST."""
    from onnxprune.layers import trainable_parameters
    from onnxprune.loading import load
    from onnxprune.losses import CrossEntropy
    from onnxprune.plumbing import tensor_shapes
    from onnxprune.training import build_training_graph, coef_name, mask_name

    loaded = load(ROOT / "models" / f"{name}.onnx")
    base = loaded.prepared.train_base
    with np.load(ROOT / "models" / "mnist_train.npz") as z:
        x, y = z["input"][:batch].astype(np.float32), z["labels"][:batch].astype(np.int64)
    inp, out = base.graph.input[0].name, base.graph.output[0].name
    shapes = tensor_shapes(base, {inp: x})
    weights = {layer.weight: shapes[layer.weight] for layer in loaded.layers}
    graph = build_training_graph(base, weights, set(weights), [CrossEntropy(out, out, "onnxprune_target0")], shapes,
                                 norms="batch")
    trainable = [t for t in trainable_parameters(base, loaded.layers)]
    frozen = [mask_name(w) for w in weights] + [coef_name(w) for w in weights]
    return graph, trainable, frozen, {inp: x, "onnxprune_target0": y}, inp


def _ort_training_api():
    """ORT's training API where its wheel is installed (torch-only helpers seated empty), else None."""
    import types

    for helper_name in ("onnxruntime.training.amp", "onnxruntime.training.optim"):
        sys.modules.setdefault(helper_name, types.ModuleType(helper_name))
    try:
        from onnxruntime.training import artifacts
        from onnxruntime.training.api import CheckpointState, Module, Optimizer
    except ImportError:
        return None
    return artifacts, CheckpointState, Module, Optimizer


def backends(name: str, batch: int, threads: int, tmp: Path) -> dict:
    """name -> a function taking one step on the same batch."""
    import onnxruntime as ort

    from onnxprune import autodiff
    from onnxprune.plumbing import session_options
    from onnxprune.stepgraph import Trainer

    graph, trainable, frozen, feed, inp = training_setup(name, batch)
    out = {}
    tr = Trainer(graph, trainable, frozen, tmp / "step", 1e-3, threads, probe=feed)
    for w in frozen:
        if w.endswith("_coef"):
            tr.set(w, np.full(tr.get(w).shape, 1e-4, np.float32))
    out[f"step graph (onnxruntime {ort.__version__})"] = lambda: tr.step(feed)
    api = _ort_training_api()
    if api is not None:
        artifacts, CheckpointState, Module, Optimizer = api
        d = tmp / "ort"
        d.mkdir(parents=True, exist_ok=True)
        cwd = os.getcwd()
        os.chdir(d)  # onnxblock writes temp.onnx in the current folder
        try:
            # ORT differentiates the primitive form of onnxprune's fused ops itself
            artifacts.generate_artifacts(autodiff.expand_private(graph), requires_grad=trainable, frozen_params=frozen, loss=None,
                                         optimizer=artifacts.onnxblock.optim.AdamW(eps=1e-8, weight_decay=0.0)
                                         if hasattr(artifacts, "onnxblock") else artifacts.OptimType.AdamW,
                                         artifact_directory=str(d))
        finally:
            os.chdir(cwd)
        state = CheckpointState.load_checkpoint(str(d / "checkpoint"))
        module = Module(str(d / "training_model.onnx"), state, str(d / "eval_model.onnx"),
                        session_options=session_options(threads))
        opt = Optimizer(str(d / "optimizer_model.onnx"), module)
        names = module.input_names()
        module.train()

        def ort_step():
            module.lazy_reset_grad()
            module(*[feed[n] for n in names])
            opt.step()
        out["ORT training API (1.19.2)"] = ort_step
    try:
        import torch
    except ImportError:
        return out
    sys.path.insert(0, str(ROOT / "models"))
    import twins

    torch.set_num_threads(threads)
    net = getattr(twins, SHIPPED[name])()
    weights = {t.name: numpy_helper.to_array(t) for t in onnx.load(str(ROOT / "models" / f"{name}.onnx")).graph.initializer}
    twins.load_onnx_weights(net, weights)
    net.train()
    params = dict(net.named_parameters())
    penalized = [params[twins.torch_key(c.rsplit("__", 1)[0])] for c in frozen if c.endswith("_coef")]
    masks = [torch.ones_like(p) for p in penalized]
    coefs = [torch.full_like(p, 1e-4) for p in penalized]
    opt = torch.optim.AdamW(net.parameters(), lr=1e-3, eps=1e-8, weight_decay=0.0)
    tx, ty = torch.from_numpy(feed[inp]), torch.from_numpy(feed["onnxprune_target0"])

    def torch_step():
        opt.zero_grad(set_to_none=True)
        loss = torch.nn.functional.cross_entropy(net(tx), ty)
        loss = loss + sum((c * (p * m) ** 2).sum() for p, m, c in zip(penalized, masks, coefs))
        loss.backward()
        opt.step()
    out[f"PyTorch eager ({torch.__version__.split('+')[0]})"] = torch_step
    return out


def step_times(batch: int, threads_list: list[int], rounds: int, steps: int) -> list[dict]:
    import tempfile

    rows = []
    for name in SHIPPED:
        for threads in threads_list:
            with tempfile.TemporaryDirectory() as tmp:
                fns = backends(name, batch, threads, Path(tmp))
                times = {k: [] for k in fns}
                for fn in fns.values():  # warm up
                    for _ in range(5):
                        fn()
                for _ in range(rounds):  # interleaved, so load on the machine hits all alike
                    for k, fn in fns.items():
                        for _ in range(steps):
                            start = time.perf_counter()
                            fn()
                            times[k].append(time.perf_counter() - start)
            med = {k: 1000 * float(np.median(v)) for k, v in times.items()}
            for k, ms in med.items():
                rows.append({"model": name, "threads": threads, "backend": k, "ms": ms})
                print(f"{name:<13} {threads} thread(s)  {k:<34} {ms:8.2f} ms/step", flush=True)
    return rows


def versus_onnxsim(rounds: int, steps: int) -> list[dict]:
    """onnxprune's step graph against onnxsim's `compile_training_loop` (graph_grad's backward,
    Adam) on the same training graph: masks and penalty on every prunable weight, mean squared
    error to fixed targets (a loss both differentiate), BatchNorm frozen; batch 64, 1 thread."""
    import tempfile

    import onnxsim

    from onnxprune.layers import trainable_parameters
    from onnxprune.loading import load
    from onnxprune.losses import LOSS, MeanSquaredError
    from onnxprune.plumbing import tensor_shapes
    from onnxprune.stepgraph import Trainer
    from onnxprune.training import build_training_graph, coef_name, mask_name

    rows = []
    for name in SHIPPED:
        loaded = load(ROOT / "models" / f"{name}.onnx")
        base = loaded.prepared.train_base
        with np.load(ROOT / "models" / "mnist_train.npz") as z:
            x = z["input"][:64].astype(np.float32)
        inp, out = base.graph.input[0].name, base.graph.output[0].name
        shapes = tensor_shapes(base, {inp: x})
        weights = {layer.weight: shapes[layer.weight] for layer in loaded.layers}
        graph = build_training_graph(base, weights, set(weights), [MeanSquaredError(out, out, "t", (10,))], shapes,
                                     norms="frozen")
        trainable = trainable_parameters(base, loaded.layers)
        frozen = [mask_name(w) for w in weights] + [coef_name(w) for w in weights]
        feed = {inp: x, "t": np.random.default_rng(0).standard_normal((64, 10)).astype(np.float32)}
        ours = Trainer(graph, trainable, frozen, Path(tempfile.mkdtemp()), 1e-3, 1, probe=feed)
        static = onnx.ModelProto()
        static.CopyFrom(graph)
        for i in static.graph.input:  # onnxsim wants static shapes and one scalar output
            if i.name in feed:
                del i.type.tensor_type.shape.dim[:]
                for v in feed[i.name].shape:
                    i.type.tensor_type.shape.dim.add().dim_value = v
        del static.graph.output[1:]
        try:
            loop = onnxsim.compile_training_loop(static, LOSS, trainable)
            loop(feed, lr=1e-3)
        except Exception as e:  # what onnxsim cannot differentiate, as it says it
            rows.append({"model": name, "onnxsim": f"refused: {str(e).split(';')[0]}"})
            print(f"{name}: onnxsim refuses: {str(e).split(';')[0]}", flush=True)
            continue
        fns = {"onnxprune": lambda: ours.step(feed), "onnxsim": lambda: loop(feed, lr=1e-3)}
        times = {k: [] for k in fns}
        for fn in fns.values():
            for _ in range(3):
                fn()
        for _ in range(rounds):
            for k, fn in fns.items():
                for _ in range(steps):
                    start = time.perf_counter()
                    fn()
                    times[k].append(time.perf_counter() - start)
        ms = {k: 1000 * float(np.median(v)) for k, v in times.items()}
        rows.append({"model": name, **{f"{k}_ms": v for k, v in ms.items()}})
        print(f"{name}: onnxprune {ms['onnxprune']:.1f} ms/step, onnxsim {ms['onnxsim']:.1f} ms/step "
              f"({ms['onnxsim'] / ms['onnxprune']:.2f}x)", flush=True)
    return rows


def step_memory(batches: list[int]) -> list[dict]:
    """Peak resident memory of the residual CNN's step graph: the training graph and one batch are
    written to a folder, and a fresh process that loads them resets its high-water mark
    (/proc/self/clear_refs), reads its resident memory, builds the step graph, takes 3 steps and
    reads the high-water mark."""
    import subprocess
    import tempfile

    child = ("import sys, numpy as np, onnx; from pathlib import Path; sys.path.insert(0, %r); "
             "from onnxprune.stepgraph import Trainer; import onnxprune.batchnorm; d = Path(sys.argv[1]); "
             "g = onnx.load(str(d / 'graph.onnx')); z = np.load(d / 'feed.npz'); feed = {k: z[k] for k in z.files}; "
             "names = (d / 'names.txt').read_text().split('\\n'); tr = names[:names.index('--')]; "
             "fr = names[names.index('--') + 1:]; open('/proc/self/clear_refs', 'w').write('5'); "
             "kb = lambda key: int(next(l for l in open('/proc/self/status') if l.startswith(key)).split()[1]); "
             "base = kb('VmRSS'); t = Trainer(g, tr, fr, d / 'work', 1e-3, 2, probe=feed); "
             "[t.step(feed) for _ in range(3)]; print(base, kb('VmHWM'))") % str(ROOT)
    rows = []
    for b in batches:
        graph, trainable, frozen, feed, _ = training_setup("resnet_mnist", b)
        with tempfile.TemporaryDirectory() as tmp:
            d = Path(tmp)
            onnx.save(graph, str(d / "graph.onnx"))
            np.savez(d / "feed.npz", **feed)
            (d / "names.txt").write_text("\n".join([*trainable, "--", *frozen]))
            done = subprocess.run([sys.executable, "-c", child, tmp], capture_output=True, text=True, check=True)
        base, peak = (int(v) / 1024 for v in done.stdout.split()[-2:])
        rows.append({"batch": b, "peak_mb": peak, "baseline_mb": base, "step_mb": peak - base})
        print(f"resnet_mnist batch {b:>4}: peak {peak:.0f} MB, {peak - base:.0f} MB for the step graph "
              f"({(peak - base) / b:.2f} MB per sample)", flush=True)
    return rows


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--step-time", action="store_true", help="ms per step: step graph vs ORT training vs PyTorch")
    ap.add_argument("--memory", action="store_true", help="with --step-time: peak memory of a step by batch size")
    ap.add_argument("--onnxsim", action="store_true", help="with --step-time: the step graph vs onnxsim's training loop")
    ap.add_argument("--rounds", type=int, default=5)
    ap.add_argument("--steps", type=int, default=20)
    ap.add_argument("--devices", default="cpu")
    ap.add_argument("--batches", default="64,256")
    ap.add_argument("--out-dir", type=Path, default=ROOT / "benchmarks" / "results")
    args = ap.parse_args()
    if args.step_time:
        import onnxruntime

        rows = step_times(64, [1, 2], args.rounds, args.steps)
        mem = step_memory([16, 64, 256]) if args.memory else []
        peer = versus_onnxsim(args.rounds, args.steps) if args.onnxsim else []
        args.out_dir.mkdir(parents=True, exist_ok=True)
        tag = onnxruntime.__version__
        meta = {"command": "python benchmarks/device.py " + " ".join(sys.argv[1:]), "onnxruntime": tag}
        (args.out_dir / f"step_time-ort{tag}.json").write_text(json.dumps({"meta": meta, "rows": rows,
                                                                            "memory": mem, "onnxsim": peer}, indent=2) + "\n")
        return
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
