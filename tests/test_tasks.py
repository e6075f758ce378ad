"""Task-level fidelity: each kind of output is recognized from its graph and values, and scored
in its own terms (what a reader, a detector or a VAD would decide), which relative error hides."""
import numpy as np
import onnx
from onnx import TensorProto, helper, numpy_helper

import onnxprune
from onnxprune import tasks
from tests.conftest import ROOT

RNG = np.random.default_rng(0)


def _one_node(op, out_shape, **attrs):
    """x -> op -> y, the output made by `op` (the producer is what kind_of reads)."""
    g = helper.make_graph([helper.make_node(op, ["x"], ["y"], **attrs)], "g",
                          [helper.make_tensor_value_info("x", TensorProto.FLOAT, out_shape)],
                          [helper.make_tensor_value_info("y", TensorProto.FLOAT, out_shape)])
    return helper.make_model(g, opset_imports=[helper.make_opsetid("", 17)])


def _probs(shape, axis):
    z = RNG.standard_normal(shape) * 3
    e = np.exp(z - z.max(axis, keepdims=True))
    return (e / e.sum(axis, keepdims=True)).astype(np.float32)


def test_each_kind_of_output_is_recognized():
    seq = _probs((6, 40, 30), 2)
    assert tasks.kind_of(_one_node("Softmax", [6, 40, 30], axis=2), "y", seq, False) == tasks.SEQUENCE
    seg = _probs((2, 5, 16, 16), 1)
    assert tasks.kind_of(_one_node("Softmax", [2, 5, 16, 16], axis=1), "y", seg, False) == tasks.PIXEL_CLASSES
    text_map = RNG.random((2, 1, 32, 32)).astype(np.float32)
    assert tasks.kind_of(_one_node("Sigmoid", [2, 1, 32, 32]), "y", text_map, False) == tasks.MASK
    speech = RNG.random(50).astype(np.float32)
    assert tasks.kind_of(_one_node("Sigmoid", [50]), "y", speech, False) == tasks.FRAMES
    yolo = np.concatenate([RNG.random((2, 4, 300)) * 640, RNG.random((2, 11, 300))], 1).astype(np.float32)
    assert tasks.kind_of(_one_node("Identity", [2, 15, 300]), "y", yolo, False) == tasks.DETECTIONS
    emb = RNG.standard_normal((20, 32)).astype(np.float32)
    assert tasks.kind_of(_one_node("LpNormalization", [20, 32]), "y", emb, False) == tasks.EMBEDDING
    assert tasks.kind_of(_one_node("Identity", [20, 32]), "y", emb, True) is None  # class scores: top-1 serves


def test_ctc_lines_are_read_greedily_and_compared_whole_and_by_character():
    # three lines over classes {blank 0, a 1, b 2}: "ab", "a", "bb" (a blank between the two b's)
    def line(path):
        s = np.full((len(path), 3), 0.01)
        s[np.arange(len(path)), path] = 1
        return s
    dense = np.stack([line([1, 1, 2, 0, 0]), line([0, 1, 0, 0, 0]), line([2, 0, 2, 2, 0])])
    assert tasks.greedy_decode(dense) == [(1, 2), (1,), (2, 2)]
    pruned = dense.copy()
    pruned[2] = line([2, 2, 2, 2, 0])  # "bb" read as "b": one line of three wrong, one character of five
    got = tasks.score(tasks.SEQUENCE, dense, pruned)
    assert np.isclose(got["value"], 2 / 3) and np.isclose(got["character_agreement"], 1 - 1 / 5)
    assert tasks.edit_distance((1, 2, 3), (1, 3)) == 1 and tasks.edit_distance((), (4, 4)) == 2


def test_frames_masks_and_embeddings_score_decisions_not_distances():
    speech = np.array([0.9, 0.8, 0.2, 0.1, 0.6, 0.4])
    moved = np.array([0.6, 0.51, 0.45, 0.3, 0.49, 0.4])  # large relative error, one decision flipped
    assert np.isclose(tasks.score(tasks.FRAMES, speech, moved)["value"], 5 / 6)
    m = np.zeros((1, 1, 8, 8))
    m[..., :4, :4] = 0.9
    half = m.copy()
    half[..., :2, :4] = 0.1
    assert np.isclose(tasks.score(tasks.MASK, m, half)["value"], 0.5)
    emb = RNG.standard_normal((30, 16))
    assert tasks.score(tasks.EMBEDDING, emb, emb * 3)["value"] == 1.0  # a scale changes no neighbour
    assert tasks.score(tasks.EMBEDDING, emb, RNG.standard_normal((30, 16)))["value"] < 0.5


def _yolo(boxes, scores, anchors=50):
    """[1, 4+C, A]: the given boxes (cx, cy, w, h) and class scores first, low-score noise after."""
    out = np.zeros((1, 4 + scores.shape[1], anchors))
    out[0, :4] = RNG.random((4, anchors)) * 100
    out[0, 4:] = RNG.random((scores.shape[1], anchors)) * 0.05
    out[0, :4, :len(boxes)] = np.asarray(boxes, float).T
    out[0, 4:, :len(boxes)] = scores.T
    return out


def test_detections_are_matched_by_class_and_overlap_after_suppression():
    boxes = [[50, 50, 20, 20], [150, 50, 30, 30], [50, 150, 10, 40]]
    scores = np.array([[0.9, 0.0], [0.0, 0.8], [0.7, 0.0]])
    dense = _yolo(boxes, scores)
    pruned = _yolo([[51, 50, 20, 20], [150, 50, 30, 30], [50, 150, 10, 40]], np.array(
        [[0.85, 0.0], [0.9, 0.0], [0.05, 0.0]]))  # one kept, one changed class, one lost
    dup = np.concatenate([dense, dense], 2)  # every box twice: suppression keeps one of each
    assert [len(b) for b, _, _ in tasks.decode(dup, 0.25)] == [3]
    got = tasks.score(tasks.DETECTIONS, dense, pruned)
    assert np.isclose(got["value"], 1 / 3)
    assert got["by_threshold"]["0.25"] == {"matched": 1, "dense": 3, "pruned": 2, "share": 1 / 3}
    assert tasks.score(tasks.DETECTIONS, dense, dense)["value"] == 1.0


def _ctc_model(steps=12, classes=8, features=6):
    """x[N, T, F] -> MatMul -> Softmax over classes: a per-position (CTC-like) head."""
    w = numpy_helper.from_array(RNG.standard_normal((features, classes)).astype(np.float32) * 2, "w")
    g = helper.make_graph([helper.make_node("MatMul", ["x", "w"], ["z"], name="fc"),
                           helper.make_node("Softmax", ["z"], ["y"], axis=2)], "ctc",
                          [helper.make_tensor_value_info("x", TensorProto.FLOAT, ["N", steps, features])],
                          [helper.make_tensor_value_info("y", TensorProto.FLOAT, ["N", steps, classes])], [w])
    return helper.make_model(g, opset_imports=[helper.make_opsetid("", 17)])


def test_a_sequence_model_is_headlined_by_lines_read_and_trained_on_per_position_kl():
    x = RNG.standard_normal((64, 12, 6)).astype(np.float32)
    r = onnxprune.prune(_ctc_model(), 0.5, data={"x": x}, latency=False, epochs=1, finetune_epochs=1,
                        batch_size=16)
    assert r.report["metric"]["name"] == "sequences read identically"
    assert "character_agreement" in r.report["metric"]["extra"]
    assert r.report["metric"]["outputs"]["y"]["task"]["kind"] == tasks.SEQUENCE
    assert r.report["loss"].startswith("KL divergence")  # over the class axis at every position


def test_a_large_task_drop_is_a_loud_warning_without_max_drop():
    x = RNG.standard_normal((64, 12, 6)).astype(np.float32)
    r = onnxprune.prune(_ctc_model(), 0.9, data={"x": x}, latency=False, method="magnitude")
    drop = 100 * (1 - r.report["metric"]["pruned"])
    assert drop > 5  # 90% of a random head's weights cut: most lines read differently
    assert any("points of sequences read identically" in w for w in r.report["warnings"])


def test_the_summary_shows_a_detectors_score_sweep():
    """A detector's headline carries its threshold sweep (a dict): the printed summary shows it
    as counts per threshold (it raised a TypeError after a run of YOLOv8n had finished)."""
    import onnxprune
    from conftest import small_model
    from onnxprune import report

    rng = np.random.default_rng(0)
    dense = np.concatenate([rng.uniform(0, 640, (2, 4, 50)), 1 / (1 + np.exp(-rng.normal(-2, 3, (2, 3, 50))))],
                           1).astype(np.float32)
    pruned = dense.copy()
    pruned[:, 4:] *= 0.5
    r = onnxprune.prune(small_model(), 0.5, method="magnitude", latency=False, synth_samples=64)
    r.report["metric"] = tasks.headline(tasks.DETECTIONS, dense, pruned, "pages", "output0")
    table = report.format_table(r.report)
    line = next(t for t in table.splitlines() if t.startswith("detections matched by score"))
    assert "score > 0.25:" in line and " of " in line, line
