"""Every gradient rule against float64 finite differences, and ONNX Runtime's float32 run of it
against the float64 rule (onnxprune.gradcheck)."""
import pytest

from gradient_cases import CASES
from onnxprune import autodiff, batchnorm, gradcheck  # noqa: F401 (batchnorm registers its fused rule)


@pytest.mark.parametrize("case", CASES, ids=[c[0] for c in CASES])
def test_rule_matches_finite_differences(case):
    label, nodes, params, consts, *opset = case
    r = gradcheck.check(nodes, params, consts, opset=opset[0] if opset else gradcheck.OPSET)
    assert r.finite_difference_error < 1e-6, label
    assert r.runtime_error < 1e-4, label


def test_every_rule_has_a_case():
    checked = {n.op_type for c in CASES for n in c[1]}
    assert set(autodiff.RULES) <= checked, sorted(set(autodiff.RULES) - checked)


def test_a_piecewise_constant_op_on_the_path_is_refused_by_name():
    from gradient_cases import node
    import numpy as np
    with pytest.raises(Exception, match="Round"):
        gradcheck.check([node("Round", ["x"], ["r"]), node("Mul", ["r", "x"])], {"x": np.ones((2, 2))})
