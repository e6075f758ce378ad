"""Every structure: the masks have exactly the intended shape and rate; filter/channel
groups follow the graph's channel coupling and the shrunk graph computes what the masked
graph computes, on LeNet-5 and on the onnx wheel's PyTorch-exported modules."""
import numpy as np
import onnx
import onnxruntime as ort
import pytest
from conftest import MODELS, ONNX_DATA
from onnx import TensorProto, helper, numpy_helper

from onnxprune.channels import analyze, channel_plan
from onnxprune.costs import count_macs, latencies
from onnxprune.errors import OnnxPruneError
from onnxprune.export import with_weights
from onnxprune.groups import gemm_view
from onnxprune.structures import NM, Block, Column, Pattern, make_structure
from onnxprune.layers import PrunableLayer, find_prunable
from onnxprune.loading import prepare, read_model
from onnxprune.masking import ranked as hard_prune
from onnxprune.plumbing import initializer_map, tensor_shapes
from onnxprune.shrink import shrink

RNG = np.random.default_rng(0)
LAYERS = [PrunableLayer("conv", "Conv", "wc", (16, 8, 3, 3), 0), PrunableLayer("convT", "ConvTranspose", "wt", (8, 6, 3, 3), 1),
          PrunableLayer("gemm", "Gemm", "wg", (24, 40), 0), PrunableLayer("mm", "MatMul", "wm", (40, 12), 1)]
WEIGHTS = {layer.weight: RNG.standard_normal(layer.shape).astype(np.float32) for layer in LAYERS}


def _view(layer, mask):
    """The mask in the GEMM view: rows = output features, columns = (in, kh, kw)."""
    row, col, kernel = gemm_view(layer)
    out = np.zeros((row.max() + 1, col.max() + 1))
    out[row, col] = mask.ravel()
    return out, kernel


@pytest.mark.parametrize("scope", ["global", "layer"])
def test_column_prunes_whole_columns_at_the_exact_rate(scope):
    plan = Column().plan(LAYERS, WEIGHTS)
    masks = hard_prune(WEIGHTS, plan, 0.6, scope)
    for layer in LAYERS:
        view, _ = _view(layer, masks[layer.weight])
        assert set(np.unique(view.sum(0))) <= {0, view.shape[0]}  # each column all kept or all gone
    assert sum(m.sum() for m in masks.values()) <= round(0.4 * sum(w.size for w in WEIGHTS.values()))


def test_block_prunes_whole_tiles():
    plan = Block(4, 2).plan(LAYERS, WEIGHTS)
    masks = hard_prune(WEIGHTS, plan, 0.7, "layer")
    for layer in LAYERS:
        view, _ = _view(layer, masks[layer.weight])
        for r in range(0, view.shape[0], 4):
            for c in range(0, view.shape[1], 2):
                tile = view[r:r + 4, c:c + 2]
                assert tile.min() == tile.max()
        assert masks[layer.weight].sum() <= round(0.3 * layer.size) + 8


@pytest.mark.parametrize("n,m", [(2, 4), (1, 4), (2, 8)])
def test_nm_keeps_at_most_n_of_every_m_input_channels(n, m):
    plan = NM(n, m).plan(LAYERS, WEIGHTS)
    masks = NM(n, m).select(WEIGHTS, plan, 1 - n / m)
    for layer in LAYERS:
        mask = np.moveaxis(masks[layer.weight], layer.out_axis, 0)  # [out, in, k...]
        if layer.op == "ConvTranspose":
            mask = np.moveaxis(np.moveaxis(masks[layer.weight], 1, 0), 1, 1)
        if layer.op == "MatMul":
            mask = masks[layer.weight].T
        cin = mask.shape[1]
        for start in range(0, cin, m):
            assert (mask[:, start:start + m].sum(axis=1) <= n).all()
        assert mask.sum() == (mask.size // m) * n + (mask.size % m and 0)  # full blocks keep exactly N
        w = np.moveaxis(WEIGHTS[layer.weight], layer.out_axis, 0) if layer.op != "MatMul" else WEIGHTS["wm"].T
        kept_min = np.where(mask[:, :m] > 0, np.abs(w[:, :m]), np.inf).min(axis=1)
        dropped_max = np.where(mask[:, :m] == 0, np.abs(w[:, :m]), -np.inf).max(axis=1)
        assert (kept_min >= dropped_max).all()  # the largest N survive


def test_pattern_kernels_match_one_of_the_patterns():
    pattern = Pattern(count=8)
    plan = pattern.plan(LAYERS, WEIGHTS)
    rate = 0.8
    masks = hard_prune(WEIGHTS, plan, rate)
    total = sum(w.size for w in WEIGHTS.values())
    assert sum(m.sum() for m in masks.values()) == round((1 - rate) * total)
    for layer in LAYERS[:2]:
        kernels = np.moveaxis(masks[layer.weight], layer.out_axis, 0).reshape(-1, 9)
        kept = kernels[kernels.sum(1) > 0]
        assert len(kept) and (kept.sum(1) == 4).all()  # 4 of 9, or the whole kernel is gone
        chosen = pattern.patterns(np.abs(np.moveaxis(WEIGHTS[layer.weight], layer.out_axis, 0)).reshape(-1, 9), 4)
        assert len(chosen) == 8
        assert all((chosen == k.astype(bool)).all(1).any() for k in kept)  # each kept kernel is one of the set
    with pytest.raises(OnnxPruneError, match="at least"):
        hard_prune(WEIGHTS, plan, 0.1)


def test_structure_options_are_checked():
    assert make_structure("block", block="2x8").cols == 8
    assert make_structure("nm", nm="1:4").m == 4
    for name, kw in [("block", {"block": "4"}), ("nm", {"nm": "4:2"}), ("nm", {"nm": "a:b"}), ("rows", {})]:
        with pytest.raises(OnnxPruneError):
            make_structure(name, **kw)


# ---- filter / channel: analysis, coupling, shrinking -------------------------------------------

def _runnable_base(model, feed):
    """The prepared graph at the user's opset, or converted where ORT cannot run that one."""
    prepared = prepare(model)
    for base in (prepared.export_base, prepared.train_base):
        try:
            _outputs(base, feed)
            return base
        except Exception:
            continue
    raise AssertionError("no runnable base")


def _random_inputs(model, batch=3, seed=1):
    rng = np.random.default_rng(seed)
    inits = {t.name for t in model.graph.initializer}
    feed = {}
    for i in model.graph.input:
        if i.name in inits:
            continue
        dims = [d.dim_value if d.dim_value > 0 else batch for d in i.type.tensor_type.shape.dim]
        feed[i.name] = rng.standard_normal(dims).astype(np.float32)
    return feed


def _prune_and_shrink(base, side, feed, seed=0, share=0.5):
    """Random channels pruned (each space keeps one); returns (masked, shrunk, plan, pruned)."""
    layers, _ = find_prunable(base)
    shapes = tensor_shapes(base, feed)
    cg = analyze(base, shapes, layers)
    plan = channel_plan(cg, layers, side)
    rng = np.random.default_rng(seed)
    pruned = rng.random(plan.count) < share
    for u in range(len(plan.units)):  # one survivor per channel space
        members = np.flatnonzero(plan.unit == u)
        if pruned[members].all():
            pruned[members[0]] = False
    masks = plan.masks(pruned)
    inits = initializer_map(base.graph)
    masked = with_weights(base, {t: numpy_helper.to_array(inits[t]) * masks[t] for t in plan.tensors})
    roots = {plan.roots[g] for g in np.flatnonzero(pruned)}
    return masked, shrink(masked, cg, roots), plan, pruned


def _outputs(model, feed):
    return ort.InferenceSession(model.SerializeToString(), providers=["CPUExecutionProvider"]).run(None, feed)


def _assert_same(a_model, b_model, feed):
    for a, b in zip(_outputs(a_model, feed), _outputs(b_model, feed)):
        assert a.shape == b.shape
        assert np.abs(a - b).max() <= 1e-4 * max(np.abs(a).max(), 1e-6)


def _params(model):
    return sum(int(np.prod(t.dims)) for t in model.graph.initializer)


EXAMPLES = [("lenet5", True), ("resnet_mnist", True), ("resnet_mnist", False), ("concat_dw_mnist", True),
            ("concat_dw_mnist", False)]


@pytest.mark.parametrize("side", ["out", "in"])
@pytest.mark.parametrize("name,simplify", EXAMPLES, ids=[f"{n}-{'folded' if s else 'bn'}" for n, s in EXAMPLES])
def test_example_models_shrink_exactly(name, simplify, side):
    """Residual Add, projection shortcut, Concat, depthwise Conv, Reshape/Flatten into Gemm,
    and (unsimplified) BatchNorm: the shrunk graph equals the masked one."""
    feed = {"input": np.load(MODELS / "mnist_test.npz")["input"][:16]}
    prepared = prepare(read_model(MODELS / f"{name}.onnx"), simplify=simplify)
    base = prepared.export_base
    for seed in range(3):
        masked, shrunk, plan, pruned = _prune_and_shrink(base, side, feed, seed=seed)
        assert pruned.sum() >= 8 and _params(shrunk) < _params(base)
        assert any("reaches the graph output logits" in n for n in plan.notes)
        _assert_same(masked, shrunk, feed)
        onnx.checker.check_model(shrunk)


def test_residual_channels_are_coupled():
    """The two convs feeding a residual Add (and the stream's first producer) share channel
    groups; the BatchNorm scale and shift after a filter belong to its group."""
    prepared = prepare(read_model(MODELS / "resnet_mnist.onnx"), simplify=False)
    base = prepared.export_base
    feed = {"input": np.zeros((2, 1, 28, 28), np.float32)}
    layers, _ = find_prunable(base)
    plan = channel_plan(analyze(base, tensor_shapes(base, feed), layers), layers, "out")
    g = plan.ids["block2.conv2.weight"].reshape(64, -1)[5, 0]
    assert (plan.ids["block2.shortcut.weight"].reshape(64, -1)[5] == g).all()  # same channel of the stream
    assert plan.ids["block2.conv2.bn.weight"][5] == g and plan.ids["block2.conv2.bn.bias"][5] == g
    assert (plan.ids["block1.conv2.weight"].reshape(32, -1)[3] == plan.ids["stem.weight"].reshape(32, -1)[3, 0]).all()


def test_concat_and_depthwise_channels():
    prepared = prepare(read_model(MODELS / "concat_dw_mnist.onnx"))
    base = prepared.export_base
    feed = {"input": np.zeros((2, 1, 28, 28), np.float32)}
    layers, _ = find_prunable(base)
    cg = analyze(base, tensor_shapes(base, feed), layers)
    plan = channel_plan(cg, layers, "out")
    # the depthwise conv's channel c is the stem's channel c
    stem, dw = plan.ids["stem.weight"].reshape(16, -1), plan.ids["branch_b.dw.weight"].reshape(16, -1)
    assert (stem[:, :1] == dw[:, :1]).all()
    # the mixing conv reads branch_a's channels first, then branch_b.pw's
    g = plan.ids["branch_b.pw.weight"].reshape(32, -1)[0, 0]
    mix_cols = [idx for t, idx in plan.removes[g] if t == "mix.weight"]
    assert mix_cols and (np.unravel_index(mix_cols[0], (64, 64, 3, 3))[1] == 32).all()


def _wrap(module: onnx.ModelProto, x_shape, y_shape) -> onnx.ModelProto:
    """A PyTorch-exported single module between a producer and a consumer layer, so that
    its input and output channels are internal (removable) channels."""
    rng = np.random.default_rng(0)
    g = module.graph
    inits = {t.name for t in g.initializer}
    x = next(i for i in g.input if i.name not in inits)
    y = g.output[0]
    cin, cout, rank = x_shape[1], y_shape[1], len(x_shape)

    def layer(name, src, dst, n_in, n_out):
        if rank >= 3:
            w = rng.standard_normal((n_out, n_in) + (1,) * (rank - 2)).astype(np.float32)
            b = rng.standard_normal(n_out).astype(np.float32)
            return [helper.make_node("Conv", [src, f"{name}_w", f"{name}_b"], [dst], name=name)], \
                [numpy_helper.from_array(w, f"{name}_w"), numpy_helper.from_array(b, f"{name}_b")]
        w = rng.standard_normal((n_in, n_out)).astype(np.float32)
        return [helper.make_node("MatMul", [src, f"{name}_w"], [dst], name=name)], [numpy_helper.from_array(w, f"{name}_w")]

    pre_nodes, pre_w = layer("pre", "x_in", x.name, cin, cin)
    post_nodes, post_w = layer("post", y.name, "z", cout, 2)
    graph = helper.make_graph(pre_nodes + list(g.node) + post_nodes, "wrapped",
                              [helper.make_tensor_value_info("x_in", TensorProto.FLOAT, list(x_shape))],
                              [helper.make_tensor_value_info("z", TensorProto.FLOAT, [f"z{i}" for i in range(len(y_shape))])],
                              list(g.initializer) + pre_w + post_w)
    model = helper.make_model(graph, opset_imports=module.opset_import)
    model.ir_version = module.ir_version
    return model


# (the PReLU *_multiparam exports use opset-6 broadcasting that ORT cannot run at all)
PYTORCH = ["test_Conv2d", "test_Conv1d", "test_Conv3d", "test_Conv2d_depthwise", "test_Conv2d_depthwise_padded",
           "test_Conv2d_dilated", "test_Conv2d_strided", "test_Conv2d_padding", "test_Conv2d_no_bias",
           "test_Conv3d_stride_padding", "test_ConvTranspose2d", "test_ConvTranspose2d_no_bias", "test_Linear",
           "test_Linear_no_bias", "test_BatchNorm2d_eval", "test_BatchNorm1d_3d_input_eval", "test_BatchNorm3d_eval",
           "test_PReLU_2d", "test_GLU", "test_GLU_dim", "test_MaxPool2d",
           "test_AvgPool2d_stride", "test_ZeroPad2d", "test_ReflectionPad2d", "test_LeakyReLU", "test_ELU",
           "test_Sigmoid", "test_Tanh", "test_SELU", "test_Softplus", "test_Conv2d_groups"]


@pytest.mark.parametrize("name", PYTORCH)
def test_pytorch_modules_shrink_exactly(name):
    folder = ONNX_DATA / "pytorch-converted" / name
    if not folder.exists():
        pytest.skip(f"{name} is not shipped in this onnx wheel")
    module = onnx.load(str(folder / "model.onnx"))
    x = numpy_helper.to_array(onnx.load_tensor(str(folder / "test_data_set_0" / "input_0.pb")))
    y = numpy_helper.to_array(onnx.load_tensor(str(folder / "test_data_set_0" / "output_0.pb")))
    feed = {"x_in": x.astype(np.float32)}
    base = _runnable_base(_wrap(module, x.shape, y.shape), feed)
    for side in ("out", "in"):
        masked, shrunk, plan, pruned = _prune_and_shrink(base, side, feed)
        if name == "test_Conv2d_groups":  # a grouped Conv's channels stay, and the report says why
            assert any("grouped convolution" in n for n in plan.notes) and not pruned.any()
            continue
        assert pruned.any(), plan.notes  # every other module has channels the analysis can remove
        assert _params(shrunk) < _params(base)
        _assert_same(masked, shrunk, feed)


def test_macs_and_latency_of_lenet():
    model = read_model(MODELS / "lenet5.onnx")
    feed = {"input": np.zeros((4, 1, 28, 28), np.float32)}
    macs, nonzero = count_macs(model, feed)
    # conv1 24·24·20·25 + conv2 8·8·50·500 + fc1 800·500 + fc2 500·10, per sample
    assert macs == 288_000 + 1_600_000 + 400_000 + 5_000 == round(nonzero)
    t = latencies({"a": model, "b": model}, feed, runs=20, budget_s=1)
    assert set(t) == {"a", "b"} and all(v > 0 for v in t.values())
