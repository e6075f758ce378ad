import numpy as np
import pytest

from onnxprune.structures import Unstructured
from onnxprune.layers import PrunableLayer
from onnxprune.masking import ranked as hard_prune


def _setup(shapes, seed=0):
    rng = np.random.default_rng(seed)
    layers = [PrunableLayer(f"l{i}", "Gemm", f"w{i}", s, 0) for i, s in enumerate(shapes)]
    weights = {layer.weight: (rng.standard_normal(layer.shape) * (i + 1)).astype(np.float32)
               for i, layer in enumerate(layers)}
    return weights, Unstructured().plan(layers, weights)


@pytest.mark.parametrize("rate", [0.5, 0.9, 0.95, 0.99, 0.999])
def test_global_rate_is_exact(rate):
    weights, groups = _setup([(20, 25), (50, 500), (500, 80), (10, 50)])
    masks = hard_prune(weights, groups, rate, "global")
    total = sum(w.size for w in weights.values())
    assert sum(int(m.sum()) for m in masks.values()) == round((1 - rate) * total)
    assert all(m.sum() >= 1 for m in masks.values()), "the floor keeps every layer alive"


def test_global_floor_protects_small_scale_layer():
    weights, groups = _setup([(100, 100), (100, 100)])
    weights["w0"] *= 1e-3  # all of layer 0 is below all of layer 1
    masks = hard_prune(weights, groups, 0.9, "global", floor=0.5)
    assert masks["w0"].sum() == 500  # 0.5 × its uniform quota of 1,000
    assert masks["w0"].sum() + masks["w1"].sum() == 2000
    no_floor = hard_prune(weights, groups, 0.9, "global", floor=0.0)
    assert no_floor["w0"].sum() == 1  # even a zero floor keeps one group


@pytest.mark.parametrize("rate", [0.3, 0.9, 0.97])
def test_layer_scope_prunes_each_layer_exactly(rate):
    weights, groups = _setup([(7, 13), (50, 50), (3, 3)])
    masks = hard_prune(weights, groups, rate, "layer")
    for name, m in masks.items():
        assert m.sum() == round((1 - rate) * m.size)


def test_keeps_largest_magnitudes_and_is_deterministic():
    weights, groups = _setup([(40, 40)])
    w = weights["w0"]
    m = hard_prune(weights, groups, 0.75, "layer")["w0"]
    assert np.abs(w[m == 1]).min() >= np.abs(w[m == 0]).max()
    ties = {"w0": np.ones((40, 40), np.float32)}
    a = hard_prune(ties, groups, 0.5, "layer")["w0"]
    b = hard_prune(ties, groups, 0.5, "layer")["w0"]
    assert np.array_equal(a, b) and a.sum() == 800
