"""Inputs as real models have them: `--input NAME=VALUE` binds a constant input (a sample rate),
and the If branches it selects are folded, so the weights inside them are pruned."""
import numpy as np
import onnx
import pytest
from onnx import TensorProto, helper, numpy_helper

import onnxprune
from onnxprune.binding import bind, fold_ifs, parse_inputs
from onnxprune.errors import OnnxPruneError
from onnxprune.plumbing import session

RNG = np.random.default_rng(0)


def _branch(name: str, scale: float) -> onnx.GraphProto:
    """x [N, 3, 8, 8] → Conv(w_name) → Relu → GlobalAveragePool → Flatten: one branch's network,
    its weight stored in the branch (as exporters write them)."""
    w = numpy_helper.from_array((scale * RNG.standard_normal((16, 3, 3, 3))).astype(np.float32), f"w_{name}")
    fc = numpy_helper.from_array((0.3 * RNG.standard_normal((16, 4))).astype(np.float32), f"fc_{name}")
    nodes = [helper.make_node("Conv", ["x", f"w_{name}"], [f"h_{name}"], name=f"conv_{name}", pads=[1, 1, 1, 1]),
             helper.make_node("Relu", [f"h_{name}"], [f"r_{name}"], name=f"relu_{name}"),
             helper.make_node("GlobalAveragePool", [f"r_{name}"], [f"p_{name}"], name=f"gap_{name}"),
             helper.make_node("Flatten", [f"p_{name}"], [f"f_{name}"], name=f"flat_{name}"),
             helper.make_node("MatMul", [f"f_{name}", f"fc_{name}"], [f"y_{name}"], name=f"fc_{name}")]
    return helper.make_graph(nodes, name, [], [helper.make_tensor_value_info(f"y_{name}", TensorProto.FLOAT, None)],
                             [w, fc])


def sample_rate_model() -> onnx.ModelProto:
    """A detector that switches networks on its sample-rate input, like silero-vad: every weight
    lives inside the If's two branches."""
    nodes = [helper.make_node("Equal", ["sr", "k16"], ["is16"], name="is16k"),
             helper.make_node("If", ["is16"], ["y"], name="by_rate", then_branch=_branch("16k", 0.4),
                              else_branch=_branch("8k", 0.2))]
    g = helper.make_graph(nodes, "vad",
                          [helper.make_tensor_value_info("x", TensorProto.FLOAT, ["N", 3, 8, 8]),
                           helper.make_tensor_value_info("sr", TensorProto.INT64, [])],
                          [helper.make_tensor_value_info("y", TensorProto.FLOAT, ["N", 4])],
                          [numpy_helper.from_array(np.array(16000, np.int64), "k16")])
    return helper.make_model(g, opset_imports=[helper.make_opsetid("", 17)], ir_version=8)


X = RNG.standard_normal((64, 3, 8, 8)).astype(np.float32)


@pytest.mark.parametrize("items,message", [
    (("sr",), "expected NAME=VALUE"), (("rate=16000",), "not a model input"),
    (("x=1",), "dynamic dimensions"), (("sr=1,2",), "2 values for an input of shape"), (("sr=fast",), "must be a number")])
def test_bad_bindings_are_one_line_errors(items, message):
    with pytest.raises(OnnxPruneError, match=message):
        parse_inputs(items, sample_rate_model())


def test_binding_the_selector_folds_the_if_and_computes_the_same():
    model = sample_rate_model()
    for rate, branch in ((16000, "16k"), (8000, "8k")):
        folded, n = fold_ifs(bind(model, parse_inputs((f"sr={rate}",), model)))
        assert n == 1 and "If" not in {nd.op_type for nd in folded.graph.node}
        assert {t.name for t in folded.graph.initializer} >= {f"w_{branch}"} and "sr" not in {
            i.name for i in folded.graph.input}
        want = session(model).run(None, {"x": X[:4], "sr": np.array(rate, np.int64)})[0]
        assert np.allclose(session(folded).run(None, {"x": X[:4]})[0], want, atol=1e-6)


def test_weights_inside_branches_are_named_with_the_input_to_fix():
    with pytest.raises(OnnxPruneError, match=r"992 weights are inside If/Loop bodies.*--input sr=VALUE"):
        onnxprune.prune(sample_rate_model(), 0.5, data={"x": X}, latency=False)


def test_a_bound_input_prunes_the_branch_it_selects(tmp_path):
    out = tmp_path / "vad16k.onnx"
    r = onnxprune.prune(sample_rate_model(), 0.5, data={"x": X}, inputs=("sr=16000",), out=out, latency=False,
                        storage="dense", schedule=onnxprune.Schedule(epochs=1, finetune_epochs=1, batch_size=16))
    written = onnx.load(str(out))
    assert [i.name for i in written.graph.input] == ["x"]  # the binding is part of the written model
    assert {row["weight"] for row in r.report["layers"]} == {"w_16k", "fc_16k"}
    w = numpy_helper.to_array(next(t for t in written.graph.initializer if t.name == "w_16k"))
    assert 0.2 < 1 - np.count_nonzero(w) / w.size < 0.8
    assert any("sr=16000" in c and "1 If node(s) folded" in c for c in r.report["preparation"])


def stateful_model() -> onnx.ModelProto:
    """Inputs as a streaming speech model has them: x [N, T, I], a recurrent state [1, N, H] (samples
    on axis 1), a scalar sample rate; outputs time-major logits [T, N, 3] and the new state."""
    T, I, H = 5, 6, 8
    consts = [numpy_helper.from_array((0.4 * RNG.standard_normal(s)).astype(np.float32), n)
              for n, s in (("W", (1, 4 * H, I)), ("R", (1, 4 * H, H)), ("B", (1, 8 * H)), ("V", (H, 3)))]
    consts += [numpy_helper.from_array(np.array([1], np.int64), "axis1"),
               numpy_helper.from_array(np.array(16000, np.float32), "k16")]
    nodes = [helper.make_node("Transpose", ["x"], ["xt"], perm=[1, 0, 2], name="time_major"),
             helper.make_node("Cast", ["sr"], ["srf"], to=TensorProto.FLOAT, name="rate"),
             helper.make_node("Div", ["srf", "k16"], ["scale"], name="scale"),
             helper.make_node("Mul", ["xt", "scale"], ["xs"], name="scaled"),
             helper.make_node("LSTM", ["xs", "W", "R", "B", "", "state"], ["y", "new_state"], name="lstm", hidden_size=H),
             helper.make_node("Squeeze", ["y", "axis1"], ["ys"], name="squeeze"),
             helper.make_node("MatMul", ["ys", "V"], ["logits"], name="head")]
    g = helper.make_graph(nodes, "stream",
                          [helper.make_tensor_value_info("x", TensorProto.FLOAT, ["N", T, I]),
                           helper.make_tensor_value_info("state", TensorProto.FLOAT, [1, "N", H]),
                           helper.make_tensor_value_info("sr", TensorProto.INT64, [])],
                          [helper.make_tensor_value_info("logits", TensorProto.FLOAT, [T, "N", 3]),
                           helper.make_tensor_value_info("new_state", TensorProto.FLOAT, [1, "N", H])], consts)
    return helper.make_model(g, opset_imports=[helper.make_opsetid("", 17)], ir_version=8)


STREAM = {"x": RNG.standard_normal((64, 5, 6)).astype(np.float32),
          "state": (0.5 * RNG.standard_normal((1, 64, 8))).astype(np.float32), "sr": np.array(16000, np.int64)}


@pytest.mark.parametrize("mode", ["endtoend", "layerwise"])
def test_samples_on_another_axis_constant_inputs_and_time_major_outputs(mode, tmp_path):
    """The state's samples lie on axis 1, the sample rate is one scalar for every sample (an
    array of the input's whole shape in --data), the logits are [T, N, 3]: all train, and the
    written model keeps the user's interface."""
    out = tmp_path / "o.onnx"
    r = onnxprune.prune(stateful_model(), 0.5, data=STREAM, out=out, latency=False, storage="dense", mode=mode,
                        schedule=onnxprune.Schedule(epochs=2, finetune_epochs=1, batch_size=8))
    assert r.report["phases"] and r.report["metric"]["output"] == "logits"
    assert r.report["metric"]["samples"] == 6  # 10% of 64 held out: samples counted on axis 1 of the state
    written = onnx.load(str(out))
    assert [i.name for i in written.graph.input] == ["x", "state", "sr"]
    w = numpy_helper.to_array(next(t for t in written.graph.initializer if t.name == "W"))
    assert 0.1 < 1 - np.count_nonzero(w) / w.size < 0.9
    logits, state = session(written).run(None, {k: v[:, :3] if k == "state" else v[:3] if v.ndim else v
                                                for k, v in STREAM.items()})
    assert logits.shape == (5, 3, 3) and state.shape == (1, 3, 8)


def test_a_constant_integer_input_needs_its_value_and_ids_arrays_are_checked_on_their_axis():
    no_rate = {k: v for k, v in STREAM.items() if k != "sr"}
    with pytest.raises(OnnxPruneError, match=r"lacks array\(s\) sr"):
        onnxprune.prune(stateful_model(), 0.5, data=no_rate, latency=False)
    with pytest.raises(OnnxPruneError, match="input sr holds one int64 value for every sample.*--input sr=VALUE"):
        onnxprune.prune(stateful_model(), 0.5, latency=False)
    with pytest.raises(OnnxPruneError, match=r"disagree on the sample count \(64 in x, 32 in state\)"):
        onnxprune.prune(stateful_model(), 0.5, data={**STREAM, "state": STREAM["state"][:, :32]}, latency=False)
    with pytest.raises(OnnxPruneError, match=r"array sr has shape 64; input sr holds one value for every sample"):
        onnxprune.prune(stateful_model(), 0.5, data={**STREAM, "sr": np.full(64, 16000, np.int64)}, latency=False)


def test_synthesized_inputs_follow_the_sample_axis(tmp_path):
    r = onnxprune.prune(stateful_model(), 0.5, inputs=("sr=16000",), synth_samples=64, latency=False,
                        schedule=onnxprune.Schedule(epochs=1, finetune_epochs=1, batch_size=8))
    assert r.report["phases"][0]["steps"] > 0


def test_an_output_of_ids_distills_on_the_logits_they_come_from(tmp_path):
    """An OCR-style model ends in ArgMax: it trains on the float logits under it, and the written
    model still answers ids only."""
    g = _branch("net", 0.4)
    g.node.append(helper.make_node("ArgMax", ["y_net"], ["ids"], name="decode", axis=1, keepdims=0))
    graph = helper.make_graph(list(g.node), "ocr", [helper.make_tensor_value_info("x", TensorProto.FLOAT, ["N", 3, 8, 8])],
                              [helper.make_tensor_value_info("ids", TensorProto.INT64, ["N"])], list(g.initializer))
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)], ir_version=8)
    out = tmp_path / "o.onnx"
    r = onnxprune.prune(model, 0.5, data={"x": X}, out=out, latency=False,
                        schedule=onnxprune.Schedule(epochs=1, finetune_epochs=1, batch_size=16))
    assert r.report["metric"]["output"] == "y_net" and r.report["phases"][0]["steps"] > 0
    assert any("output ids is integer ids (ArgMax of y_net)" in c for c in r.report["preparation"])
    assert [o.name for o in onnx.load(str(out)).graph.output] == ["ids"] == [o.name for o in r.model.graph.output]


def _ids_model(kind: str) -> onnx.ModelProto:
    """ids [N, 6] int64 → embedding rows (Gather over 20 rows) or one-hot over 7 classes (Equal
    against 0..6, as jax2tf writes one_hot) → mean → MatMul head."""
    consts = [numpy_helper.from_array((0.5 * RNG.standard_normal((8, 3))).astype(np.float32), "head_w"),
              numpy_helper.from_array(np.array([1], np.int64), "axis1")]
    if kind == "gather":
        consts.append(numpy_helper.from_array(RNG.standard_normal((20, 8)).astype(np.float32), "table"))
        nodes = [helper.make_node("Gather", ["table", "ids"], ["emb"], name="embed")]
    elif kind == "onehot":
        consts += [numpy_helper.from_array(np.arange(7, dtype=np.int64).reshape(1, 1, 7), "classes"),
                   numpy_helper.from_array(np.array([-1], np.int64), "last"),
                   numpy_helper.from_array(RNG.standard_normal((7, 8)).astype(np.float32), "proj")]
        nodes = [helper.make_node("Unsqueeze", ["ids", "last"], ["ids3"], name="unsq"),
                 helper.make_node("Equal", ["ids3", "classes"], ["hot"], name="onehot"),
                 helper.make_node("Cast", ["hot"], ["hotf"], to=TensorProto.FLOAT, name="cast"),
                 helper.make_node("MatMul", ["hotf", "proj"], ["emb"], name="project")]
    else:  # ids used as numbers: nothing bounds them
        nodes = [helper.make_node("Cast", ["ids"], ["idf"], to=TensorProto.FLOAT, name="cast"),
                 helper.make_node("Unsqueeze", ["idf", "last"], ["emb0"], name="unsq"),
                 helper.make_node("Expand", ["emb0", "shape8"], ["emb"], name="expand")]
        consts += [numpy_helper.from_array(np.array([-1], np.int64), "last"),
                   numpy_helper.from_array(np.array([1, 6, 8], np.int64), "shape8")]
    nodes += [helper.make_node("ReduceMean", ["emb", "axis1"], ["pooled"], name="pool", keepdims=0),
              helper.make_node("MatMul", ["pooled", "head_w"], ["y"], name="head")]
    g = helper.make_graph(nodes, "ids", [helper.make_tensor_value_info("ids", TensorProto.INT64, ["N", 6])],
                          [helper.make_tensor_value_info("y", TensorProto.FLOAT, ["N", 3])], consts)
    return helper.make_model(g, opset_imports=[helper.make_opsetid("", 18)], ir_version=8)


@pytest.mark.parametrize("kind,bound", [("gather", 20), ("onehot", 7)])
def test_ids_are_synthesized_within_the_range_the_graph_implies(kind, bound):
    from onnxprune.data import id_bounds, input_specs, synthesize

    model = _ids_model(kind)
    assert id_bounds(model) == {"ids": bound}
    arrays, _ = synthesize(input_specs(model), 200, {}, np.random.default_rng(0), None, id_bounds(model))
    assert arrays["ids"].min() == 0 and arrays["ids"].max() == bound - 1
    r = onnxprune.prune(model, 0.5, synth_samples=128, latency=False, simplify=False,
                        schedule=onnxprune.Schedule(epochs=1, finetune_epochs=1, batch_size=16))
    assert r.report["phases"][0]["steps"] > 0


def test_ids_the_graph_does_not_bound_need_real_samples():
    with pytest.raises(OnnxPruneError, match="graph implies no range for them.*pass real samples with --data"):
        onnxprune.prune(_ids_model("plain"), 0.5, latency=False, simplify=False)


def half_model() -> onnx.ModelProto:
    """A float16 export: half weights, inputs and outputs."""
    g = _branch("h", 0.4)
    for t in g.initializer:
        t.CopyFrom(numpy_helper.from_array(numpy_helper.to_array(t).astype(np.float16), t.name))
    graph = helper.make_graph(list(g.node), "half", [helper.make_tensor_value_info("x", TensorProto.FLOAT16, ["N", 3, 8, 8])],
                              [helper.make_tensor_value_info("y_h", TensorProto.FLOAT16, ["N", 4])], list(g.initializer))
    return helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)], ir_version=8)


@pytest.mark.parametrize("mode,storage", [("endtoend", "compact"), ("layerwise", "dense")])
def test_a_float16_model_trains_in_float32_and_is_written_in_float16(mode, storage, tmp_path):
    out = tmp_path / "half.onnx"
    r = onnxprune.prune(half_model(), 0.5, data={"x": X.astype(np.float16)}, out=out, latency=False, mode=mode,
                        storage=storage, schedule=onnxprune.Schedule(epochs=1, finetune_epochs=1, batch_size=16))
    assert r.report["phases"][0]["steps"] > 0
    assert any("trained in float32" in c for c in r.report["preparation"])
    written = onnx.load(str(out))
    assert written.graph.input[0].type.tensor_type.elem_type == TensorProto.FLOAT16
    assert abs(r.report["totals"]["sparsity"] - 0.5) < 0.02
    y = session(written).run(None, {"x": X[:4].astype(np.float16)})[0]
    assert y.dtype == np.float16 and np.isfinite(y).all()
    if storage == "dense":
        w = next(t for t in written.graph.initializer if t.name == "w_h")
        assert w.data_type == TensorProto.FLOAT16 and (numpy_helper.to_array(w) == 0).mean() > 0.2


def test_sample_axes_from_declared_dimensions():
    from onnxprune.data import InputSpec
    from onnxprune.layout import input_axes

    def spec(name, *dims):
        return InputSpec(name, np.dtype(np.float32), list(dims))
    # a shared dimension name wins; an input without it and with a fixed shape is a constant
    assert input_axes([spec("input", "batch", "T"), spec("state", 2, "batch", 128), spec("sr")]) == {
        "input": 0, "state": 1, "sr": None}
    # fixed batch 1, a scalar first: the batch comes from the first input that has axes
    assert input_axes([spec("sr"), spec("x", 1, 512), spec("h", 2, 1, 64)]) == {"sr": None, "x": 0, "h": 1}
    # unnamed dynamic dimensions: each input's first one
    assert input_axes([spec("x", None, None), spec("s", 2, None, 128)]) == {"x": 0, "s": 1}


def test_a_fixed_batch_model_takes_labelled_data(tmp_path):
    g = _branch("fb", 0.4)
    graph = helper.make_graph(list(g.node), "fixed", [helper.make_tensor_value_info("x", TensorProto.FLOAT, [1, 3, 8, 8])],
                              [helper.make_tensor_value_info("y_fb", TensorProto.FLOAT, [1, 4])], list(g.initializer))
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)], ir_version=8)
    data = {"x": X[:32], "labels": np.arange(32) % 4}
    r = onnxprune.prune(model, 0.5, data=data, latency=False, schedule=onnxprune.Schedule(epochs=1, finetune_epochs=1))
    assert r.report["metric"]["name"] == "accuracy" and r.report["phases"][0]["steps"] > 0


def test_two_ifs_folded_at_once_keep_their_names_apart():
    """Both branches make a tensor named `h_16k`: folding both Ifs in one pass must not clash."""
    def renamed(branch):  # the same tensor names, other node names (ORT wants those unique)
        for node in branch.node:
            node.name += "_again"
        return branch
    nodes = [helper.make_node("Equal", ["sr", "k16"], ["is16"], name="is16k"),
             helper.make_node("If", ["is16"], ["y1"], name="first", then_branch=_branch("16k", 0.4),
                              else_branch=_branch("8k", 0.2)),
             helper.make_node("If", ["is16"], ["y2"], name="second", then_branch=renamed(_branch("16k", 0.3)),
                              else_branch=renamed(_branch("8k", 0.1))),
             helper.make_node("Add", ["y1", "y2"], ["y"], name="sum")]
    g = helper.make_graph(nodes, "two", [helper.make_tensor_value_info("x", TensorProto.FLOAT, ["N", 3, 8, 8]),
                                         helper.make_tensor_value_info("sr", TensorProto.INT64, [])],
                          [helper.make_tensor_value_info("y", TensorProto.FLOAT, ["N", 4])],
                          [numpy_helper.from_array(np.array(16000, np.int64), "k16")])
    model = helper.make_model(g, opset_imports=[helper.make_opsetid("", 17)], ir_version=8)
    folded, n = fold_ifs(bind(model, parse_inputs(("sr=16000",), model)))
    assert n == 2
    onnx.checker.check_model(folded)
    want = session(model).run(None, {"x": X[:4], "sr": np.array(16000, np.int64)})[0]
    assert np.allclose(session(folded).run(None, {"x": X[:4]})[0], want, atol=1e-6)


def test_an_if_decided_by_tensor_shapes_trains_as_the_branch_it_takes(tmp_path):
    """silero-vad's `if x.dim() == 2` style: the condition reads a shape, the layers before it are
    prunable, and ORT aborts on an If's gradient. Training takes the branch the training shapes
    pick; the written model keeps its If."""
    stem = numpy_helper.from_array((0.4 * RNG.standard_normal((3, 3, 1, 1))).astype(np.float32), "stem_w")
    then_b, else_b = _branch("16k", 0.4), _branch("8k", 0.2)
    for b in (then_b, else_b):
        for node in b.node:
            node.input[:] = ["stem" if i == "x" else i for i in node.input]
    nodes = [helper.make_node("Conv", ["x", "stem_w"], ["stem"], name="stem"),
             helper.make_node("Shape", ["stem"], ["shape"], name="shape"),
             helper.make_node("Gather", ["shape", "two"], ["height"], name="height", axis=0),
             helper.make_node("Equal", ["height", "eight"], ["is8"], name="is8"),
             helper.make_node("If", ["is8"], ["y"], name="by_shape", then_branch=then_b, else_branch=else_b)]
    # the height is dynamic: the If stays in the written model (one on a fixed dim folds for good)
    g = helper.make_graph(nodes, "shaped", [helper.make_tensor_value_info("x", TensorProto.FLOAT, ["N", 3, "H", "W"])],
                          [helper.make_tensor_value_info("y", TensorProto.FLOAT, ["N", 4])],
                          [stem, numpy_helper.from_array(np.array(2, np.int64), "two"),
                           numpy_helper.from_array(np.array(8, np.int64), "eight")])
    model = helper.make_model(g, opset_imports=[helper.make_opsetid("", 17)], ir_version=8)
    out = tmp_path / "o.onnx"
    r = onnxprune.prune(model, 0.5, data={"x": X}, out=out, latency=False, simplify=False, storage="dense",
                        schedule=onnxprune.Schedule(epochs=1, finetune_epochs=1, batch_size=16))
    assert any("1 If node(s) decided by tensor shapes" in c for c in r.report["preparation"])
    written = onnx.load(str(out))
    assert "If" in {n.op_type for n in written.graph.node}
    w = numpy_helper.to_array(next(t for t in written.graph.initializer if t.name == "stem_w"))
    assert not np.allclose(w, numpy_helper.to_array(stem))  # trained through the If's branch


def _two_inputs(names=("input_ids", "attention_mask")) -> list:
    from onnxprune.data import InputSpec

    return [InputSpec(k, np.dtype(np.int64), ["batch", "sequence_length"]) for k in names]


def test_a_dimension_name_in_input_shape_fixes_every_input_that_shares_it():
    from onnxprune.data import resolve_shapes

    specs = _two_inputs()
    assert resolve_shapes(specs, ("sequence_length=32",)) == {"input_ids": ["batch", 32], "attention_mask": ["batch", 32]}
    assert resolve_shapes(specs, ("input_ids=1x16",))["attention_mask"] == [1, 16]  # shared through the name
    with pytest.raises(OnnxPruneError, match="neither a model input .* nor a dimension name"):
        resolve_shapes(specs, ("seq=32",))
    with pytest.raises(OnnxPruneError, match="fixes one dimension"):
        resolve_shapes(specs, ("sequence_length=1x32",))


def test_an_unfixed_length_names_the_dimension_to_fix():
    from onnxprune.data import synthesize

    with pytest.raises(OnnxPruneError, match=r"dynamic dimension\(s\) sequence_length .*--input-shape sequence_length=L"):
        synthesize(_two_inputs(), 4, {}, np.random.default_rng(0), {"input_ids": 0, "attention_mask": 0},
                   {"input_ids": 100})


def test_an_attention_mask_is_synthesized_as_all_positions_attended():
    from onnxprune.data import resolve_shapes, synthesize

    specs = _two_inputs()
    arrays, _ = synthesize(specs, 8, resolve_shapes(specs, ("sequence_length=5",)), np.random.default_rng(0),
                           {"input_ids": 0, "attention_mask": 0}, {"input_ids": 100})
    assert arrays["attention_mask"].shape == (8, 5) and (arrays["attention_mask"] == 1).all()
    assert arrays["input_ids"].max() < 100


def test_a_matmul_of_two_activations_is_no_layer_and_not_listed_as_skipped():
    from tests.encoder import encoder

    from onnxprune.layers import find_prunable

    layers, skipped = find_prunable(encoder())
    assert {layer.weight for layer in layers} >= {"Wq", "Wk", "Wv", "Wo", "W1", "W2"}
    assert not any(s.name in ("qk", "ctx") for s in skipped)


def test_a_bfloat16_model_is_refused_in_one_line():
    """ORT 1.19's CPU build has no bfloat16 Conv kernel and cannot feed bfloat16 arrays."""
    g = _branch("b", 0.4)
    inits = []
    for t in g.initializer:
        bits = (numpy_helper.to_array(t).astype(np.float32).view(np.uint32) >> 16).astype(np.uint16)
        inits.append(helper.make_tensor(t.name, TensorProto.BFLOAT16, t.dims, bits.tobytes(), raw=True))
    graph = helper.make_graph(list(g.node), "bf16", [helper.make_tensor_value_info("x", TensorProto.BFLOAT16, ["N", 3, 8, 8])],
                              [helper.make_tensor_value_info("y_b", TensorProto.BFLOAT16, ["N", 4])], inits)
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)], ir_version=8)
    with pytest.raises(OnnxPruneError, match="bfloat16 tensors .* convert it to float32 or float16"):
        onnxprune.prune(model, 0.5, latency=False)


def test_an_if_decided_by_a_dim_the_graph_fixes_folds_for_good(tmp_path):
    """silero-vad's decoder: `if state.shape[0]` (state is [2, batch, 128]: always 2) chooses the
    LSTM branch. The If folds in the written model too, and the weights it reads become layers,
    also when the exporter reordered them with Slice/Concat (gates) before use."""
    from onnxprune.loading import load

    w = (0.3 * RNG.standard_normal((8, 4))).astype(np.float32)

    def branch(name, scale):
        nodes = [helper.make_node("Slice", ["w", "s0", "s4", "ax0"], [f"{name}_top"]),
                 helper.make_node("Slice", ["w", "s4", "s8", "ax0"], [f"{name}_bottom"]),
                 helper.make_node("Concat", [f"{name}_bottom", f"{name}_top"], [f"{name}_w"], axis=0),  # reordered
                 helper.make_node("MatMul", ["h", f"{name}_w"], [f"{name}_mm"]),
                 helper.make_node("Mul", [f"{name}_mm", scale], [f"y_{name}"])]
        return helper.make_graph(nodes, name, [], [helper.make_tensor_value_info(f"y_{name}", TensorProto.FLOAT, None)])

    nodes = [helper.make_node("Shape", ["state"], ["state_shape"]),
             helper.make_node("Gather", ["state_shape", "zero"], ["dim0"], axis=0),
             helper.make_node("Cast", ["dim0"], ["cond"], to=TensorProto.BOOL),
             helper.make_node("MatMul", ["x", "w_in"], ["h0"], name="proj"),
             helper.make_node("ReduceSum", ["state", "axes02"], ["state_sum"], keepdims=0),
             helper.make_node("Add", ["h0", "state_sum"], ["h"]),
             helper.make_node("If", ["cond"], ["y"], name="by_state", then_branch=branch("on", "one"),
                              else_branch=branch("off", "zero_f"))]
    consts = [numpy_helper.from_array(a, k) for k, a in {
        "w": w, "w_in": (0.3 * RNG.standard_normal((6, 8))).astype(np.float32), "zero": np.array(0, np.int64),
        "s0": np.array([0], np.int64), "s4": np.array([4], np.int64), "s8": np.array([8], np.int64),
        "ax0": np.array([0], np.int64), "axes02": np.array([0], np.int64), "one": np.array(1, np.float32),
        "zero_f": np.array(0, np.float32)}.items()]
    g = helper.make_graph(nodes, "vad_state", [helper.make_tensor_value_info("x", TensorProto.FLOAT, ["N", 6]),
                                               helper.make_tensor_value_info("state", TensorProto.FLOAT, [2, "N", 8])],
                          [helper.make_tensor_value_info("y", TensorProto.FLOAT, ["N", 4])], consts)
    model = helper.make_model(g, opset_imports=[helper.make_opsetid("", 17)], ir_version=8)
    loaded = load(model)  # onnxsim folds the reordering into one stored weight
    assert "If" not in {n.op_type for n in loaded.prepared.export_base.graph.node}
    assert any("decided by dims the graph fixes" in c for c in loaded.prepared.changes)
    assert len(loaded.layers) == 2  # w_in, and w as the branch reorders it
    feed = {"x": RNG.standard_normal((3, 6)).astype(np.float32), "state": RNG.standard_normal((2, 3, 8)).astype(np.float32)}
    want = session(model).run(None, feed)[0]
    assert np.allclose(session(loaded.prepared.export_base).run(None, feed)[0], want, atol=1e-5)
