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


def test_filter_pruning_removes_ffn_channels_and_whole_heads(tmp_path):
    out = tmp_path / "enc.onnx"
    r = onnxprune.prune(encoder(), 0.6, data=DATA, out=out, structure="filter", channel_multiple=1, latency=False,
                        storage="dense", schedule=QUICK)
    assert not any("masked model" in w for w in r.report["warnings"])  # the shrunk graph matched the masked one
    w = _weights(out)
    d = H // HEADS
    heads_left = w["Wq"].shape[1] // d
    assert w["Wq"].shape[1] % d == 0 and w["Wk"].shape == w["Wq"].shape == w["Wv"].shape
    assert w["Wo"].shape[0] == w["Wq"].shape[1] and w["W1"].shape[1] == w["W2"].shape[0] < FFN
    assert heads_left < HEADS  # at this rate a head goes
    splits = [list(v) for k, v in w.items() if k.startswith("split_shape__")]  # each Reshape's own target
    assert splits and all(v == [0, 0, heads_left, d] for v in splits)
    logits = session(onnx.load(str(out))).run(None, {k: v[:4] for k, v in DATA.items()})[0]
    assert logits.shape == (4, 3)
