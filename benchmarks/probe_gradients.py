"""Which ops can ONNX Runtime 1.19 train through on CPU? For each op: a tiny graph with the op
between a trained weight and the loss (x → Conv(w) → op → mean square), ORT training artifacts,
one optimizer step; then the same with onnxprune's stand-ins applied. Records
trains / stand-in / unsupported (with ORT's reason), and writes docs/gradients.md.

    python benchmarks/probe_gradients.py

Each probe runs in a child process, so an op that crashes ORT's native code is recorded as a
crash instead of ending the probe.
"""
from __future__ import annotations

import argparse
import json
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent

# op -> (attributes, extra inputs as (name, numpy expression)), applied to h: [2, 4, 6, 6]
CASES = {
    "Relu": {}, "LeakyRelu": {}, "Elu": {}, "Selu": {}, "Celu": {}, "Sigmoid": {}, "Tanh": {}, "Softplus": {},
    "Softsign": {}, "Erf": {}, "Exp": {}, "Abs": {}, "Neg": {}, "Sqrt": {"pre": "Abs"}, "Log": {"pre": "Exp"},
    "Reciprocal": {"pre": "Exp"}, "HardSigmoid": {}, "HardSwish": {}, "ThresholdedRelu": {}, "Mish": {"opset": 18},
    "Gelu": {"opset": 20}, "Floor": {}, "Ceil": {}, "Round": {}, "Sign": {},
    "Clip": {"inputs": [("lo", "np.float32(0)"), ("hi", "np.float32(6)")]},
    "PRelu": {"inputs": [("slope", "np.full((4, 1, 1), 0.1, np.float32)")]},
    "Dropout": {}, "Identity": {}, "Cast": {"attrs": {"to": 1}},
    "MaxPool": {"attrs": {"kernel_shape": [2, 2]}}, "AveragePool": {"attrs": {"kernel_shape": [2, 2]}},
    "LpPool": {"attrs": {"kernel_shape": [2, 2]}}, "GlobalAveragePool": {}, "GlobalMaxPool": {},
    "GlobalLpPool": {},
    "Resize": {"attrs": {"mode": "nearest"}, "inputs": [("", None), ("scales", "np.array([1, 1, 2, 2], np.float32)")]},
    "Resize (linear)": {"op": "Resize", "attrs": {"mode": "linear"},
                        "inputs": [("", None), ("scales", "np.array([1, 1, 2, 2], np.float32)")]},
    "Pad": {"inputs": [("pads", "np.array([0, 0, 1, 1, 0, 0, 1, 1], np.int64)")]},
    "BatchNormalization": {"inputs": [(n, "np.ones(4, np.float32)") for n in ("s", "b", "m", "v")]},
    "InstanceNormalization": {"inputs": [(n, "np.ones(4, np.float32)") for n in ("s", "b")]},
    "LayerNormalization": {"attrs": {"axis": -1}, "inputs": [("s", "np.ones(6, np.float32)"),
                                                             ("b", "np.zeros(6, np.float32)")]},
    "LRN": {"attrs": {"size": 3}},
    "Softmax": {}, "LogSoftmax": {}, "Transpose": {"attrs": {"perm": [0, 2, 3, 1]}},
    "Flatten": {}, "Reshape": {"inputs": [("shape", "np.array([0, -1], np.int64)")]},
    "Squeeze": {"pre_reduce": True, "inputs": [("axes", "np.array([3], np.int64)")]},
    "Unsqueeze": {"inputs": [("axes", "np.array([1], np.int64)")]},
    "Slice": {"inputs": [("st", "np.array([1], np.int64)"), ("en", "np.array([3], np.int64)"),
                         ("ax", "np.array([1], np.int64)")]},
    "Split": {"attrs": {"axis": 1}, "inputs": [("sp", "np.array([2, 2], np.int64)")], "outputs": 2},
    "Concat": {"attrs": {"axis": 1}, "self_inputs": 2}, "Tile": {"inputs": [("rep", "np.array([1, 2, 1, 1], np.int64)")]},
    "Expand": {"inputs": [("shape", "np.array([2, 4, 6, 6], np.int64)")]},
    "Gather": {"attrs": {"axis": 1}, "inputs": [("idx", "np.array([0, 2], np.int64)")]},
    "Where": {"mask": True},
    "Add": {"self_inputs": 2}, "Sub": {"self_inputs": 2}, "Mul": {"self_inputs": 2}, "Div": {"pre": "Exp", "self_inputs": 2},
    "Pow": {"pre": "Abs", "inputs": [("e", "np.float32(2)")]}, "Max": {"self_inputs": 2}, "Min": {"self_inputs": 2},
    "Sum": {"self_inputs": 2}, "Mean": {"self_inputs": 2},
    "ReduceMean": {"inputs": [("axes", "np.array([2, 3], np.int64)")], "opset": 18},
    "ReduceSum": {"inputs": [("axes", "np.array([2, 3], np.int64)")]},
    "ReduceMax": {"inputs": [("axes", "np.array([2, 3], np.int64)")], "opset": 18},
    "ReduceMin": {"inputs": [("axes", "np.array([2, 3], np.int64)")], "opset": 18},
    "ReduceL2": {"inputs": [("axes", "np.array([2, 3], np.int64)")], "opset": 18},
    "ReduceSumSquare": {"inputs": [("axes", "np.array([2, 3], np.int64)")], "opset": 18},
    "ReduceLogSumExp": {"inputs": [("axes", "np.array([2, 3], np.int64)")], "opset": 18},
    "CumSum": {"inputs": [("axis", "np.array(1, np.int64)")]},
    "MatMul": {"inputs": [("m", "np.ones((6, 3), np.float32)")]},
    "Einsum": {"attrs": {"equation": "nchw,wk->nchk"}, "inputs": [("m", "np.ones((6, 3), np.float32)")]},
    "ConvTranspose": {"inputs": [("k", "np.ones((4, 2, 2, 2), np.float32)")]},
    "DepthToSpace": {"attrs": {"blocksize": 2}}, "SpaceToDepth": {"attrs": {"blocksize": 2}},
    "TopK": {"inputs": [("k", "np.array([2], np.int64)")], "outputs": 2},
    "LSTM": {"rnn": "LSTM"}, "GRU": {"rnn": "GRU"}, "RNN": {"rnn": "RNN"},
}

CHILD = r'''
import json, sys, tempfile
from pathlib import Path
import numpy as np
from onnx import TensorProto, helper, numpy_helper
sys.path.insert(0, {root!r})
from onnxprune.losses import MeanSquaredError
from onnxprune.plumbing import tensor_shapes
from onnxprune.standins import apply
from onnxprune.training import Trainer, build_training_graph, mask_name

name, case, use_standins = {name!r}, json.loads({case!r}), {standins!r}
op = case.get("op", name)
rng = np.random.default_rng(0)
inits = [numpy_helper.from_array((0.5 * rng.standard_normal((4, 3, 1, 1))).astype(np.float32), "w")]
nodes = [helper.make_node("Conv", ["x", "w"], ["h"], name="conv")]
src = "h"
if case.get("pre"):
    nodes.append(helper.make_node(case["pre"], ["h"], ["h_pre"], name="pre"))
    src = "h_pre"
if case.get("pre_reduce"):
    inits.append(numpy_helper.from_array(np.array([3], np.int64), "pr_axes"))
    nodes.append(helper.make_node("ReduceSum", [src, "pr_axes"], ["h_red"], name="pre_reduce", keepdims=1))
    src = "h_red"
ins = [src]
if case.get("self_inputs", 1) > 1:  # a second operand that also depends on the weight (h − h would be 0)
    nodes.append(helper.make_node("Sigmoid", [src], ["h2"], name="second"))
    ins = [src] + ["h2"] * (case["self_inputs"] - 1)
if case.get("mask"):
    inits.append(numpy_helper.from_array(rng.random((2, 4, 6, 6)) > 0.5, "cond"))
    ins = ["cond", src, "h"]
if case.get("rnn"):
    # h [2,4,6,6] -> [T=6, N=2, I=24]: Transpose + Reshape, then the recurrent layer
    inits.append(numpy_helper.from_array(np.array([6, 2, 24], np.int64), "seq_shape"))
    nodes += [helper.make_node("Transpose", [src], ["ht"], perm=[3, 0, 1, 2], name="to_seq"),
              helper.make_node("Reshape", ["ht", "seq_shape"], ["seq"], name="seq")]
    gates = {{"LSTM": 4, "GRU": 3, "RNN": 1}}[case["rnn"]]
    inits += [numpy_helper.from_array((0.1 * rng.standard_normal((1, gates * 5, 24))).astype(np.float32), "rw"),
              numpy_helper.from_array((0.1 * rng.standard_normal((1, gates * 5, 5))).astype(np.float32), "rr")]
    ins = ["seq", "rw", "rr"]
    attrs = {{"hidden_size": 5}}
else:
    attrs = case.get("attrs", {{}})
for n, expr in case.get("inputs", []):
    if n:
        inits.append(numpy_helper.from_array(np.asarray(eval(expr)), n))
    ins.append(n)
outs = ["y"] + [f"y{{i}}" for i in range(1, case.get("outputs", 1))]
nodes.append(helper.make_node(op, ins, outs, name="the_op", **attrs))
opset = case.get("opset", 17)
g = helper.make_graph(nodes, "probe", [helper.make_tensor_value_info("x", TensorProto.FLOAT, ["N", 3, 6, 6])],
                      [helper.make_tensor_value_info("y", TensorProto.FLOAT, None)], inits)
m = helper.make_model(g, opset_imports=[helper.make_opsetid("", opset)], ir_version=8)
x = rng.standard_normal((2, 3, 6, 6)).astype(np.float32)
shapes = tensor_shapes(m, {{"x": x}})
notes = []
if use_standins:
    m, notes = apply(m, shapes)
y = shapes["y"]
graph = build_training_graph(m, {{"w": (4, 3, 1, 1)}}, set(), [MeanSquaredError("y", "y", "t", y[1:])], shapes)
with tempfile.TemporaryDirectory() as tmp:
    tr = Trainer(graph, ["w"], [mask_name("w")], Path(tmp), 1e-2)
    before = tr.get("w")
    tr.step({{"x": x, "t": np.zeros(y, np.float32)}})
    moved = not np.allclose(before, tr.get("w"))
print(json.dumps({{"moved": bool(moved), "standin": bool(notes)}}))
'''


def probe(name: str, case: dict, standins: bool) -> dict:
    code = CHILD.format(root=str(ROOT), name=name, case=json.dumps(case), standins=standins)
    done = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=300)
    if done.returncode < 0 or done.returncode > 128:
        return {"result": "crash", "why": f"the process died (signal {abs(done.returncode) % 128})"}
    if done.returncode != 0:
        lines = [ln for ln in done.stderr.strip().splitlines() if ln.strip()]
        why = lines[-1] if lines else f"exit {done.returncode}"
        return {"result": "fails", "why": why.split("OnnxPruneError: ")[-1][:160]}
    out = json.loads(done.stdout.strip().splitlines()[-1])
    if not out["moved"]:
        return {"result": "no gradient reaches the weight", "why": ""}
    return {"result": "stand-in" if out["standin"] else "trains", "why": ""}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--ops", default=",".join(CASES))
    ap.add_argument("--out", type=Path, default=ROOT / "docs" / "gradients.md")
    args = ap.parse_args()
    rows = []
    for name in args.ops.split(","):
        plain = probe(name, CASES[name], standins=False)
        final = plain if plain["result"] == "trains" else probe(name, CASES[name], standins=True)
        rows.append((name, plain, final))
        print(f"{name}: {plain['result']} -> {final['result']}", flush=True)
    lines = ["# Which ops ONNX Runtime 1.19 trains through (CPU)", "",
             "Made by `python benchmarks/probe_gradients.py`: each op sits between a trained Conv weight and a "
             "mean-square loss; ORT's training artifacts are generated and one optimizer step is taken, in a "
             "child process (a native crash is recorded, not fatal). *ORT alone*: the op as it is; "
             "*with onnxprune*: after `onnxprune/standins.py` replaced it in the training graph.", "",
             "| op | ORT alone | with onnxprune | why not |", "|---|---|---|---|"]
    for name, plain, final in rows:
        why = (final["why"] or plain["why"]).replace("|", "\\|")
        lines.append(f"| {name} | {plain['result']} | {final['result']} | {why if final['result'] not in ('trains', 'stand-in') else ''} |")
    counts = {}
    for _, _, final in rows:
        counts[final["result"]] = counts.get(final["result"], 0) + 1
    lines += ["", "Totals with onnxprune: " + ", ".join(f"{v} {k}" for k, v in sorted(counts.items())) + "."]
    args.out.write_text("\n".join(lines) + "\n")
    print("\n".join(lines))


if __name__ == "__main__":
    main()
