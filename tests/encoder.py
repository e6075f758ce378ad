"""A small BERT-style encoder built as exporters write one: token and position embeddings,
LayerNormalization, multi-head self-attention with a padding mask (per-head Reshape/Transpose),
an Erf-GELU feed-forward block, residual connections, a [CLS] classifier head."""
import numpy as np
import onnx
from onnx import TensorProto, helper, numpy_helper

VOCAB, T, H, HEADS, FFN, CLASSES = 50, 8, 16, 2, 32, 3


def encoder(seed: int = 0, computed_shapes: bool = False) -> onnx.ModelProto:
    """`computed_shapes`: the per-head Reshape targets are assembled when the model runs from the
    input's own batch and length (`Concat(Shape(x)[0], Shape(x)[1], heads, d)`), as PyTorch
    exports write them."""
    rng = np.random.default_rng(seed)
    d = H // HEADS
    w = {}

    def p(name, *shape, scale=None):
        w[name] = (rng.standard_normal(shape) * (scale if scale is not None else 1 / np.sqrt(shape[0]))).astype(np.float32)
        return name

    def c(name, value):
        w[name] = np.asarray(value)
        return name

    nodes = []

    def n(op, ins, out, **kw):
        nodes.append(helper.make_node(op, ins, [out], name=out, **kw))
        return out

    p("word", VOCAB, H, scale=0.5), p("pos", T, H, scale=0.1)
    c("i0", np.array(0, np.int64)), c("i1", np.array(1, np.int64)), c("axis0", np.array([0], np.int64))
    pos = "pos"
    if computed_shapes:  # any length up to T: the position table sliced to the input's length
        c("one_d", np.array([1], np.int64)), c("two_d", np.array([2], np.int64))
        length = n("Slice", [n("Shape", ["input_ids"], "ids_shape"), "one_d", "two_d"], "length")
        pos = n("Slice", ["pos", "axis0", length, "axis0"], "pos_used")
    x = n("Add", [n("Gather", ["word", "input_ids"], "tok"), pos], "emb")
    x = n("LayerNormalization", [x, c("ln0_s", np.ones(H, np.float32)), c("ln0_b", np.zeros(H, np.float32))], "ln0",
          axis=-1)
    # the mask: (1 - m) * -1e4 as [N, 1, 1, T]
    m = n("Cast", ["attention_mask"], "maskf", to=TensorProto.FLOAT)
    m = n("Mul", [n("Sub", [c("one", np.float32(1)), m], "inv"), c("big", np.float32(-1e4))], "bias")
    m = n("Unsqueeze", [m, c("axes12", np.array([1, 2], np.int64))], "mask4")

    def target(x, name, *tail):
        if not computed_shapes:
            return c(name, np.array([0, 0, *tail], np.int64))
        shape = n("Shape", [x], f"{name}_{x}_shape")
        dims = [n("Unsqueeze", [n("Gather", [shape, i], f"{name}_{x}_d{i}"), "axis0"], f"{name}_{x}_u{i}")
                for i in ("i0", "i1")]
        return n("Concat", [*dims, c(f"{name}_tail", np.array(tail, np.int64))], f"{name}_{x}", axis=0)

    proj = {}
    for k in "qkv":
        y = n("Add", [n("MatMul", [x, p(f"W{k}", H, H)], f"{k}_mm"), p(f"b{k}", H, scale=0.1)], f"{k}_lin")
        proj[k] = n("Reshape", [y, target(y, "split_shape", HEADS, d)], f"{k}_heads")
    q = n("Transpose", [proj["q"]], "q_t", perm=[0, 2, 1, 3])
    k = n("Transpose", [proj["k"]], "k_t", perm=[0, 2, 3, 1])
    v = n("Transpose", [proj["v"]], "v_t", perm=[0, 2, 1, 3])
    s = n("Div", [n("MatMul", [q, k], "qk"), c("sqrt_d", np.float32(np.sqrt(d)))], "scores")
    a = n("Softmax", [n("Add", [s, m], "masked")], "attn", axis=-1)
    ctx = n("Transpose", [n("MatMul", [a, v], "ctx")], "ctx_t", perm=[0, 2, 1, 3])
    ctx = n("Reshape", [ctx, target(ctx, "merge_shape", H)], "ctx_merged")
    o = n("Add", [n("MatMul", [ctx, p("Wo", H, H)], "o_mm"), p("bo", H, scale=0.1)], "o_lin")
    x = n("LayerNormalization", [n("Add", [x, o], "res1"), c("ln1_s", np.ones(H, np.float32)),
                                 c("ln1_b", np.zeros(H, np.float32))], "ln1", axis=-1)
    f = n("Add", [n("MatMul", [x, p("W1", H, FFN)], "f1_mm"), p("b1", FFN, scale=0.1)], "f1")
    g = n("Erf", [n("Div", [f, c("sqrt2", np.float32(np.sqrt(2)))], "f_scaled")], "f_erf")
    g = n("Mul", [n("Mul", [f, n("Add", [g, "one"], "f_1erf")], "f_prod"), c("half", np.float32(0.5))], "gelu")
    f2 = n("Add", [n("MatMul", [g, p("W2", FFN, H)], "f2_mm"), p("b2", H, scale=0.1)], "f2")
    x = n("LayerNormalization", [n("Add", [x, f2], "res2"), c("ln2_s", np.ones(H, np.float32)),
                                 c("ln2_b", np.zeros(H, np.float32))], "ln2", axis=-1)
    cls = n("Gather", [x, c("first", np.array(0, np.int64))], "cls", axis=1)
    n("Add", [n("MatMul", [cls, p("Wc", H, CLASSES)], "c_mm"), p("bc", CLASSES, scale=0.1)], "logits")
    g_ = helper.make_graph(nodes, "encoder",
                           [helper.make_tensor_value_info(k, TensorProto.INT64, ["N", "L" if computed_shapes else T])
                            for k in ("input_ids", "attention_mask")],
                           [helper.make_tensor_value_info("logits", TensorProto.FLOAT, ["N", CLASSES])],
                           [numpy_helper.from_array(v, k) for k, v in w.items()])
    return helper.make_model(g_, opset_imports=[helper.make_opsetid("", 17)], ir_version=8)


def token_data(n: int, seed: int = 1) -> dict[str, np.ndarray]:
    """Random token ids with padding at the end of some sequences, and labels from a rule the
    encoder can learn (which of three token ranges dominates)."""
    rng = np.random.default_rng(seed)
    ids = rng.integers(1, VOCAB, (n, T))
    lengths = rng.integers(3, T + 1, n)
    mask = (np.arange(T)[None] < lengths[:, None]).astype(np.int64)
    ids = np.where(mask == 1, ids, 0)
    return {"input_ids": ids.astype(np.int64), "attention_mask": mask}
