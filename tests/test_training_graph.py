"""The training graph computes what the method says: task loss on W·M plus Σ P·W²."""
import numpy as np

from conftest import small_model
from onnxprune.layers import find_prunable
from onnxprune.losses import MeanSquaredError
from onnxprune.stepgraph import grad_name
from onnxprune.training import LOSS, PENALTY, TASK_LOSS, Trainer, build_training_graph, coef_name, mask_name


def _trainer(tmp_path, lr=1e-2, batch=16):
    m = small_model()
    layers, _ = find_prunable(m)
    graph = build_training_graph(m, {l.weight: l.shape for l in layers}, {l.weight for l in layers},
                                 [MeanSquaredError("y", "y", "t", (3,))], {})
    probe = {"x": np.zeros((batch, 4), np.float32), "t": np.zeros((batch, 3), np.float32)}
    return Trainer(graph, ["w"], [mask_name("w"), coef_name("w")], tmp_path, lr, probe=probe)


def _losses(tr, feed):
    r = tr.evaluate(feed)
    return r[LOSS], r[TASK_LOSS], r[PENALTY], r


def test_loss_is_task_plus_weighted_penalty(tmp_path):
    tr = _trainer(tmp_path, batch=8)
    rng = np.random.default_rng(1)
    x = rng.standard_normal((8, 4)).astype(np.float32)
    t = rng.standard_normal((8, 3)).astype(np.float32)
    w = tr.get("w")
    p = rng.random((4, 3)).astype(np.float32)
    mask = (rng.random((4, 3)) > 0.5).astype(np.float32)
    tr.set(coef_name("w"), p)
    tr.set(mask_name("w"), mask)
    loss, task, penalty, r = _losses(tr, {"x": x, "t": t})
    want_task = np.mean((x @ (w * mask) - t) ** 2)
    want_pen = np.sum(p * w * w)  # the penalty sees the raw weight: a masked weight is already 0 on export
    assert np.isclose(task, want_task, rtol=1e-5)
    assert np.isclose(penalty, want_pen, rtol=1e-5)
    assert np.isclose(loss, want_task + want_pen, rtol=1e-5)
    grad = r[grad_name("w")]
    want_grad = 2 * x.T @ (x @ (w * mask) - t) / t.size * mask + 2 * p * w
    assert np.allclose(grad, want_grad, rtol=1e-4, atol=1e-6)


def test_masked_training_keeps_effective_weights_zero(tmp_path):
    """After masked training the graph computes with W·M: the raw weights under the mask are
    still non-zero (their gradient is zero, so Adam leaves them), yet the model's output is
    exactly what the masked weights give, and not what the raw ones give."""
    tr = _trainer(tmp_path, lr=0.05)
    rng = np.random.default_rng(2)
    mask = np.array([[1, 0, 1], [0, 1, 1], [1, 1, 0], [0, 0, 1]], np.float32)
    tr.set(mask_name("w"), mask)
    start = tr.get("w")
    for _ in range(20):
        x = rng.standard_normal((16, 4)).astype(np.float32)
        tr.step({"x": x, "t": x[:, :3] * 2})
    w = tr.get("w")
    assert np.array_equal(w[mask == 0], start[mask == 0]) and np.all(w[mask == 0] != 0)
    assert not np.allclose(w[mask == 1], start[mask == 1])  # the kept weights did train
    x = rng.standard_normal((16, 4)).astype(np.float32)
    t = np.zeros((16, 3), np.float32)
    _, task, _, _ = _losses(tr, {"x": x, "t": t})  # the task loss is the mean square of the model's output here
    assert np.isclose(task, np.mean((x @ (w * mask)) ** 2), rtol=1e-5)
    assert not np.isclose(task, np.mean((x @ w) ** 2), rtol=1e-2)


def test_penalty_shrinks_weights_with_large_coefficients(tmp_path):
    tr = _trainer(tmp_path, lr=0.02)
    rng = np.random.default_rng(3)
    coef = np.zeros((4, 3), np.float32)
    coef[0] = 100.0  # row 0 heavily penalized, the rest free
    tr.set(coef_name("w"), coef)
    before = np.abs(tr.get("w"))
    for _ in range(100):
        x = rng.standard_normal((16, 4)).astype(np.float32)
        tr.step({"x": x, "t": np.zeros((16, 3), np.float32)})
    after = np.abs(tr.get("w"))
    assert after[0].max() < 0.05 * before[0].max()


def test_distill_weighs_the_kl_term_in_the_loss_itself(tmp_path):
    """With labels and --distill W, the task loss is cross-entropy + W·(−Σ p_dense·log p): checked on
    the graph's own loss value, for W = 1 and 10."""
    from onnxprune.losses import loss_terms
    from onnxprune.metrics import softmax

    m = small_model()
    layers, _ = find_prunable(m)
    rng = np.random.default_rng(2)
    x = rng.standard_normal((8, 4)).astype(np.float32)
    labels = rng.integers(0, 3, 8)
    dense = {"y": (x @ rng.standard_normal((4, 3))).astype(np.float32)}  # another model's scores: KL ≠ 0
    got = {}
    for w in (1.0, 10.0):
        terms, targets = loss_terms(m, ["y"], labels, dense, distill=w)
        graph = build_training_graph(m, {l.weight: l.shape for l in layers}, set(), terms, {})
        feed = {"x": x, **targets}
        tr = Trainer(graph, ["w"], [mask_name("w")], tmp_path / str(w), 1e-3, probe=feed)
        got[w] = float(_losses(tr, feed)[1])
        logits = x @ tr.get("w")
        logp = np.log(softmax(logits))
        ce = -np.mean(logp[np.arange(8), labels])
        kl = -np.mean(np.sum(softmax(dense["y"]) * logp, 1))
        assert np.isclose(got[w], ce + w * kl, rtol=1e-5), (w, got[w], ce, kl)
    assert got[10.0] > got[1.0]


def test_a_sigmoid_output_distills_by_cross_entropy_on_its_logits(tmp_path):
    """An output made by a final Sigmoid (then reshaped, as silero-vad's is) trains on
    mean(softplus(z) − p·z) over the logits z under it, checked on the graph's own loss value,
    and its gradient σ(z) − p moves the pruned model toward the dense probabilities."""
    import onnx
    from onnx import TensorProto, helper, numpy_helper

    from onnxprune.losses import SigmoidCrossEntropy, loss_terms

    rng = np.random.default_rng(3)
    w = numpy_helper.from_array(rng.standard_normal((4, 2)).astype(np.float32), "w")
    shape = numpy_helper.from_array(np.array([-1], np.int64), "flat")
    g = helper.make_graph([helper.make_node("MatMul", ["x", "w"], ["z"], name="fc"),
                           helper.make_node("Sigmoid", ["z"], ["s"], name="sig"),
                           helper.make_node("Reshape", ["s", "flat"], ["p"], name="flatten")], "g",
                          [helper.make_tensor_value_info("x", TensorProto.FLOAT, ["N", 4])],
                          [helper.make_tensor_value_info("p", TensorProto.FLOAT, None)], [w, shape])
    m = helper.make_model(g, opset_imports=[helper.make_opsetid("", 17)])
    x = rng.standard_normal((8, 4)).astype(np.float32)
    dense = {"p": (1 / (1 + np.exp(-(x @ rng.standard_normal((4, 2)))))).astype(np.float32).reshape(-1)}
    terms, targets = loss_terms(m, ["p"], None, dense)
    assert isinstance(terms[0], SigmoidCrossEntropy) and terms[0].tensor == "z"
    graph = build_training_graph(m, {"w": (4, 2)}, set(), terms, {})
    feed = {"x": x, **targets}
    tr = Trainer(graph, ["w"], [mask_name("w")], tmp_path, 1e-2, probe=feed)
    z = (x @ tr.get("w")).reshape(-1)
    want = np.mean(np.logaddexp(0, z) - dense["p"] * z)
    assert np.isclose(float(_losses(tr, feed)[1]), want, rtol=1e-5)
    before = np.abs(1 / (1 + np.exp(-z)) - dense["p"]).mean()
    for _ in range(200):
        tr.step(feed)
    after = np.abs(1 / (1 + np.exp(-(x @ tr.get("w")).reshape(-1))) - dense["p"]).mean()
    assert after < 0.5 * before, (before, after)
