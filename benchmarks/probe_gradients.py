"""Which ops onnxprune trains through, and how: writes docs/gradients.md.

    python benchmarks/probe_gradients.py

Every case of tests/gradient_cases.py (one small graph per gradient rule and interesting
attribute) is checked by `onnxprune.gradcheck`: the rule's float64 gradient against central finite
differences, and ONNX Runtime's float32 run of the same gradient graph against the float64 one.
Composite ops (recurrent layers, normalizations, Resize, LRN) train as their expansion into
primitives (`onnxprune/standins.py`), checked end to end in tests/test_standins.py. The rest is
refused by name, with the routes that need no gradient.
"""
from __future__ import annotations

import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path[:0] = [str(ROOT), str(ROOT / "tests")]

import onnxruntime  # noqa: E402

from gradient_cases import CASES  # noqa: E402
from onnxprune import autodiff, gradcheck, standins  # noqa: E402

REFUSED = {"If": "no rule: an If decided by a constant input or a fixed dim is folded first (--input NAME=VALUE)",
           "Loop": "no rule", "Scan": "no rule", "Einsum": "no rule yet", "LpPool": "no rule yet",
           "GlobalLpPool": "no rule yet", **{op: "piecewise constant: zero gradient almost everywhere"
                                             for op in sorted(autodiff.FLAT)}}


def main() -> None:
    rows = []
    for label, nodes, params, consts, *opset in CASES:
        r = gradcheck.check(nodes, params, consts, opset=opset[0] if opset else gradcheck.OPSET)
        rows.append(f"| {label} | rule | {r.finite_difference_error:.1e} | {r.runtime_error:.1e} |")
        print(rows[-1], flush=True)
    for op in sorted(standins.STANDINS):
        rows.append(f"| {op} | expansion | tests/test_standins.py | |")
    for op, why in REFUSED.items():
        rows.append(f"| {op} | refused | {why} | |")
    ruled = sorted(autodiff.RULES)
    text = [
        "# Which ops onnxprune trains through",
        "",
        "Made by `python benchmarks/probe_gradients.py` (onnxruntime "
        f"{onnxruntime.__version__}). Training is one ONNX graph per step whose backward pass "
        "onnxprune writes itself (`onnxprune/autodiff.py`, one vector-Jacobian rule per op), so "
        "what trains does not depend on the ONNX Runtime build: any current `onnxruntime` or "
        "`onnxruntime-gpu` runs it.",
        "",
        "- *rule*: the op's own gradient rule. Its float64 gradient is compared with central finite "
        "differences (worst relative error, column 3), and ONNX Runtime's float32 run of the same "
        "gradient graph with the float64 one (column 4). `tests/test_autodiff.py` asserts < 1e-6 and < 1e-4.",
        "- *expansion*: a composite op replaced, in the training graph only, by an equal composition of "
        "primitives that have rules (checked on the real shapes before use); the written model keeps the op.",
        "- *refused*: named in one line, with the routes that need no gradient through it "
        "(`--mode layerwise`, `--method magnitude`).",
        "",
        f"{len(ruled)} ops have rules; {len(standins.STANDINS)} train as expansions; "
        f"{len(ruled) + len(standins.STANDINS)} in all. Ops that carry no gradient (shapes, comparisons, "
        "ArgMax, …) stop it without a rule.",
        "",
        "| op | how | float64 rule vs finite differences | ORT float32 vs float64 rule |",
        "|---|---|---|---|",
        *rows,
        "",
    ]
    (ROOT / "docs" / "gradients.md").write_text("\n".join(text))
    print(f"{len(ruled)} rules, {len(standins.STANDINS)} expansions -> docs/gradients.md")


if __name__ == "__main__":
    main()
