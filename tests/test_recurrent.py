"""Recurrent layers (LSTM, GRU, RNN): their input and recurrent weights are prunable layers,
filter pruning removes whole hidden units (every gate's rows, the biases, R's column) and the
shrunk layer computes what the masked one does; they train end to end through their stand-ins
and layer by layer."""
import numpy as np
import onnx
import pytest
from onnx import TensorProto, helper, numpy_helper

import onnxprune
from onnxprune.layers import find_prunable
from onnxprune.plumbing import session, tensor_shapes
from onnxprune.shrink import shrink
from onnxprune.structures import make_structure

GATES = {"LSTM": 4, "GRU": 3, "RNN": 1}
T, I = 5, 6


def _model(op="LSTM", hidden=8, directions=1, initial=False, seed=0, batch=24):
    """x [N, T, I] → Transpose → op → Y [T, D, N, H] → [T, N, D·H] → MatMul head → [N, T, 3]: the
    shape of a PyTorch export (batch first outside, time first inside)."""
    rng = np.random.default_rng(seed)
    g, d = GATES[op], directions
    consts = {"W": 0.4 * rng.standard_normal((d, g * hidden, I)), "R": 0.4 * rng.standard_normal((d, g * hidden, hidden)),
              "B": 0.1 * rng.standard_normal((d, 2 * g * hidden)), "V": 0.4 * rng.standard_normal((d * hidden, 3))}
    if initial:  # a constant initial state: sliced with its units
        consts["h0"] = 0.3 * rng.standard_normal((d, batch, hidden))
    inits = [numpy_helper.from_array(np.asarray(v, np.float32), k) for k, v in consts.items()]
    inits.append(numpy_helper.from_array(np.array([T, -1, d * hidden], np.int64), "shape"))
    ins = ["xt", "W", "R", "B", "", "h0" if initial else ""]
    nodes = [helper.make_node("Transpose", ["x"], ["xt"], perm=[1, 0, 2], name="to_time"),
             helper.make_node(op, ins, ["y", "yh"], name="rnn", hidden_size=hidden,
                              direction="bidirectional" if d == 2 else "forward"),
             helper.make_node("Transpose", ["y"], ["yt"], perm=[0, 2, 1, 3], name="units_last"),
             helper.make_node("Reshape", ["yt", "shape"], ["ys"], name="merge"),
             helper.make_node("MatMul", ["ys", "V"], ["tl"], name="head"),
             helper.make_node("Transpose", ["tl"], ["logits"], perm=[1, 0, 2], name="to_batch")]
    graph = helper.make_graph(nodes, "rnn", [helper.make_tensor_value_info("x", TensorProto.FLOAT, ["N", T, I])],
                              [helper.make_tensor_value_info("logits", TensorProto.FLOAT, ["N", T, 3])], inits)
    return helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)], ir_version=8)


X = np.random.default_rng(7).standard_normal((24, T, I)).astype(np.float32)


def _weights(model):
    return {t.name: numpy_helper.to_array(t) for t in model.graph.initializer}


def test_input_and_recurrent_weights_are_two_layers_of_one_node():
    layers, skipped = find_prunable(_model("GRU", directions=2))
    assert [(la.name, la.node, la.op, la.shape, la.out_axis) for la in layers] == [
        ("rnn.W", "rnn", "GRU", (2, 24, I), 1), ("rnn.R", "rnn", "GRU", (2, 24, 8), 1), ("head", "head", "MatMul", (16, 3), 1)]
    assert not skipped
    layers, skipped = find_prunable(_model(), exclude=("rnn",))  # the node's name excludes both
    assert [la.name for la in layers] == ["head"] and {s.name for s in skipped} == {"rnn.W", "rnn.R"}


@pytest.mark.parametrize("op,directions,initial", [("LSTM", 1, False), ("LSTM", 2, True), ("GRU", 1, True),
                                                   ("GRU", 2, False), ("RNN", 1, False), ("RNN", 2, True)])
def test_filter_groups_are_hidden_units_and_shrinking_them_changes_nothing(op, directions, initial):
    model = _model(op, directions=directions, initial=initial)
    layers, _ = find_prunable(model)
    shapes = tensor_shapes(model, {"x": X})
    plan = make_structure("filter").plan(layers, _weights(model), model, shapes)
    assert plan.count == 8 and plan.units == ["rnn"]  # the head's outputs reach the graph output
    pruned = np.zeros(plan.count, bool)
    pruned[[1, 4, 6]] = True
    masks = plan.masks(pruned)
    w = masks["W"]  # every gate's row of a pruned unit, in every direction, and nothing else
    rows = {g * 8 + u for g in range(GATES[op]) for u in (1, 4, 6)}
    assert {r for r in range(w.shape[1]) if not w[:, r].any()} == rows
    assert not masks["R"][:, :, [1, 4, 6]].any() and masks["R"][:, :, [0, 2, 3, 5, 7]][:, sorted(set(range(w.shape[1])) - rows)].all()
    masked = onnx.ModelProto()
    masked.CopyFrom(model)
    for t in masked.graph.initializer:
        if t.name in masks:
            t.CopyFrom(numpy_helper.from_array(numpy_helper.to_array(t) * masks[t.name], t.name))
    small = shrink(masked, plan.channels, plan.pruned_roots(masks))
    node = next(n for n in small.graph.node if n.op_type == op)
    assert helper.get_attribute_value(next(a for a in node.attribute if a.name == "hidden_size")) == 5
    assert _weights(small)["R"].shape == (directions, GATES[op] * 5, 5)
    assert _weights(small)["V"].shape == (directions * 5, 3)
    want = session(masked).run(None, {"x": X})[0]
    got = session(small).run(None, {"x": X})[0]
    assert np.allclose(want, got, atol=1e-5)


def test_block_tiles_stay_inside_one_gate():
    layers, _ = find_prunable(_model("LSTM"))
    plan = make_structure("block", block="4x2").plan(layers, _weights(_model("LSTM")))
    ids = plan.ids["W"].reshape(1, 32, I)[0]
    for tile in np.unique(ids):
        gates = {r // 8 for r in np.flatnonzero((ids == tile).any(axis=1))}
        assert len(gates) == 1


@pytest.mark.parametrize("op,mode,structure", [("LSTM", "endtoend", "unstructured"), ("GRU", "layerwise", "unstructured"),
                                               ("RNN", "endtoend", "filter"), ("LSTM", "layerwise", "block")])
def test_recurrent_weights_are_pruned_and_trained(op, mode, structure, tmp_path):
    """End to end through the unrolled stand-ins, or layer by layer (the node's W and R together)."""
    model = _model(op, hidden=16)
    out = tmp_path / "o.onnx"
    r = onnxprune.prune(model, 0.5, data={"x": X}, out=out, latency=False, simplify=False, mode=mode, storage="dense",
                        structure=structure, channel_multiple=1,
                        schedule=onnxprune.Schedule(epochs=2, finetune_epochs=1, batch_size=8, lr=0.01))
    written = onnx.load(str(out))
    assert op in {n.op_type for n in written.graph.node}  # the user's own op is written
    rows = {row["name"]: row for row in r.report["layers"]}
    assert rows["rnn.W"]["kept"] < rows["rnn.W"]["params"] and rows["rnn.R"]["kept"] < rows["rnn.R"]["params"]
    before, after = _weights(model), _weights(written)
    if structure == "filter":
        assert after["R"].shape[1] < before["R"].shape[1]  # hidden units removed from the graph
    else:
        assert abs(r.report["totals"]["sparsity"] - 0.5) < 0.02  # global ranking over W, R and the head
        assert 0.1 < 1 - np.count_nonzero(after["W"]) / after["W"].size < 0.9
        assert not np.allclose(after["W"][after["W"] != 0], before["W"][after["W"] != 0])  # trained
    session(written).run(None, {"x": X})


def test_int8_keeps_recurrent_layers_in_float_and_says_why(tmp_path):
    r = onnxprune.prune(_model("LSTM"), 0.5, data={"x": X}, out=tmp_path / "o.onnx", latency=False, simplify=False,
                        method="magnitude", quantize="int8")
    kept = r.report["compression"]["kept_float"]
    assert set(kept) == {"rnn.W", "rnn.R"} and "no LSTM kernel" in kept["rnn.W"]
    assert r.report["compression"]["quantized_layers"] == ["head"]
