"""Memory and time of one training step of any model's step graph.

For a real ONNX file and samples of its input (an .npz named like the input), the step graph
onnxprune trains (masks and the group penalty on every prunable weight, mean squared error to
the dense model's first output, BatchNorm frozen) is built at each batch size; a fresh process
per batch resets its high-water mark, builds the trainer, takes steps and reports the peak
resident memory the step added and the median step time.

    python benchmarks/step_cost.py MODEL.onnx DATA.npz [--batches 2,4,8] [--steps 3]

PP-OCRv4 rec: `python benchmarks/step_cost.py benchmarks/corpus/rapidocr_onnxruntime/models/ch_PP-OCRv4_rec_infer.onnx /tmp/lines/lines_train.npz`
"""
from __future__ import annotations

import argparse
import json
import subprocess
import sys
import tempfile
from pathlib import Path

import numpy as np
import onnx

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

CHILD = """
import sys, time, json, numpy as np, onnx
from pathlib import Path
sys.path.insert(0, {root!r})
from onnxprune.stepgraph import Trainer
d = Path(sys.argv[1]); steps = int(sys.argv[2])
g = onnx.load(str(d / 'graph.onnx')); z = np.load(d / 'feed.npz'); feed = {{k: z[k] for k in z.files}}
names = (d / 'names.txt').read_text().split('\\n'); cut = names.index('--')
kb = lambda key: int(next(l for l in open('/proc/self/status') if l.startswith(key)).split()[1])
open('/proc/self/clear_refs', 'w').write('5')
base = kb('VmRSS')
t = Trainer(g, names[:cut], names[cut + 1:], d / 'work', 1e-4, None, probe=feed)
times = []
for _ in range(steps):
    s = time.perf_counter(); t.step(feed); times.append(time.perf_counter() - s)
print(json.dumps({{"base_kb": base, "peak_kb": kb('VmHWM'), "step_s": float(np.median(times))}}))
"""


def setup(model_path: Path, data: Path, batch: int):
    from onnxprune import standins
    from onnxprune.layers import trainable_parameters
    from onnxprune.loading import load
    from onnxprune.losses import MeanSquaredError
    from onnxprune.plumbing import session, tensor_shapes
    from onnxprune.training import build_training_graph, coef_name, mask_name

    loaded = load(model_path)
    base = loaded.prepared.train_base
    inp, out = base.graph.input[0].name, base.graph.output[0].name
    with np.load(data) as z:
        x = z[inp][:batch].astype(np.float32)
    y = session(base).run([out], {inp: x})[0]
    shapes = tensor_shapes(base, {inp: x})
    weights = {layer.weight: shapes[layer.weight] for layer in loaded.layers}
    term = MeanSquaredError(out, out, "onnxprune_target0", tuple(y.shape[1:]))
    expanded, _ = standins.apply(base, shapes)  # as train.py builds it
    graph = build_training_graph(expanded, weights, set(weights), [term], shapes, norms="frozen")
    trainable = list(trainable_parameters(base, loaded.layers))
    frozen = [mask_name(w) for w in weights] + [coef_name(w) for w in weights]
    return graph, trainable, frozen, {inp: x, "onnxprune_target0": y}


def measure(model_path: Path, data: Path, batch: int, steps: int) -> dict:
    graph, trainable, frozen, feed = setup(model_path, data, batch)
    with tempfile.TemporaryDirectory() as tmp:
        d = Path(tmp)
        onnx.save(graph, str(d / "graph.onnx"))
        np.savez(d / "feed.npz", **feed)
        (d / "names.txt").write_text("\n".join([*trainable, "--", *frozen]))
        done = subprocess.run([sys.executable, "-c", CHILD.format(root=str(ROOT)), tmp, str(steps)],
                              capture_output=True, text=True, check=True)
    r = json.loads(done.stdout.strip().splitlines()[-1])
    return {"batch": batch, "step_mb": (r["peak_kb"] - r["base_kb"]) / 1024, "step_s": r["step_s"]}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("model", type=Path)
    ap.add_argument("data", type=Path)
    ap.add_argument("--batches", default="2,4,8")
    ap.add_argument("--steps", type=int, default=3)
    args = ap.parse_args()
    rows = [measure(args.model, args.data, int(b), args.steps) for b in args.batches.split(",")]
    for r in rows:
        print(f"batch {r['batch']:>4}: step {r['step_mb']:.0f} MB, {r['step_s'] * 1000:.0f} ms per step "
              f"({r['step_s'] * 1000 / r['batch']:.0f} ms per sample)", flush=True)
    if len(rows) > 1:
        a, b = rows[0], rows[-1]
        print(f"per sample (batch {a['batch']} → {b['batch']}): "
              f"{(b['step_mb'] - a['step_mb']) / (b['batch'] - a['batch']):.0f} MB")


if __name__ == "__main__":
    main()
