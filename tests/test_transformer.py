"""A BERT-style encoder (tests/encoder.py: int64 ids and attention mask, LayerNormalization, Erf
GELU, per-head attention): it prunes end to end and layer-wise, and filter pruning removes FFN
channels and whole attention heads, coupled through the per-head Reshape/Transpose."""
import numpy as np
import onnx
import pytest
from onnx import numpy_helper

import onnxprune
from onnxprune.plumbing import session
from tests.encoder import FFN, HEADS, H, encoder, token_data

DATA = token_data(256)
QUICK = onnxprune.Schedule(epochs=2, finetune_epochs=1, batch_size=32)


def _weights(path):
    return {t.name: numpy_helper.to_array(t) for t in onnx.load(str(path)).graph.initializer}


@pytest.mark.parametrize("mode", ["endtoend", "layerwise"])
def test_an_encoder_prunes_end_to_end_and_layer_wise(mode, tmp_path):
    out = tmp_path / "enc.onnx"
    r = onnxprune.prune(encoder(), 0.5, data=DATA, out=out, mode=mode, storage="dense", latency=False, schedule=QUICK)
    assert abs(r.report["totals"]["sparsity"] - 0.5) < 0.02
    assert r.report["metric"]["name"] == "top-1 agreement" and r.report["metric"]["pruned"] > 0.5
    w = _weights(out)
    assert 0.2 < (w["W1"] == 0).mean() < 0.8
    session(onnx.load(str(out))).run(None, {k: v[:4] for k, v in DATA.items()})


@pytest.mark.parametrize("computed", [False, True], ids=["constant-targets", "exported-targets"])
def test_filter_pruning_removes_ffn_channels_and_whole_heads(computed, tmp_path):
    """Also when the head split's target is assembled from Shape(x) at run time, as PyTorch
    exports write it: it becomes [0, 0, heads, d] first."""
    out = tmp_path / "enc.onnx"
    r = onnxprune.prune(encoder(computed_shapes=computed), 0.6, data=DATA, out=out, structure="filter", channel_multiple=1, latency=False,
                        storage="dense", schedule=QUICK)
    assert not any("masked model" in w for w in r.report["warnings"])  # the shrunk graph matched the masked one
    w = _weights(out)
    d = H // HEADS
    heads_left = w["Wq"].shape[1] // d
    assert w["Wq"].shape[1] % d == 0 and w["Wk"].shape == w["Wq"].shape == w["Wv"].shape
    assert w["Wo"].shape[0] == w["Wq"].shape[1] and w["W1"].shape[1] == w["W2"].shape[0] < FFN
    assert heads_left < HEADS  # at this rate a head goes
    splits = [list(v) for v in w.values() if v.dtype == np.int64 and v.shape == (4,)]  # each Reshape's own target
    assert len(splits) == 3 and all(v == [0, 0, heads_left, d] for v in splits)
    written = session(onnx.load(str(out)))
    assert written.run(None, {k: v[:4] for k, v in DATA.items()})[0].shape == (4, 3)
    if computed:  # the targets were rewritten (not folded by onnxsim), and batch and length are still free
        assert any("Reshape target(s) computed from the input's own dims" in c for c in r.report["preparation"])
        assert written.run(None, {k: v[:3, :5] for k, v in DATA.items()})[0].shape == (3, 3)
