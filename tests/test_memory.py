"""The batch size fits memory: measured at two small batches, capped below what is free, said."""
import numpy as np
import pytest

import onnxprune
from onnxprune import memory
from tests.conftest import MODELS

pytestmark = pytest.mark.skipif(memory.peak() is None, reason="needs Linux's /proc to measure memory")


def _step_taking(mb_per_sample):
    def run_step_at(batch):  # touches its memory, as a step's tensors do
        np.ones(batch * mb_per_sample * 2 ** 20 // 8).sum()
    return run_step_at


def test_a_batch_too_big_for_free_memory_is_capped_and_said(monkeypatch):
    monkeypatch.setattr(memory, "available", lambda: 400 * 2 ** 20)
    batch, per_sample, why = memory.fit(64, 20 * 2 ** 20, _step_taking(20))
    assert 15 * 2 ** 20 < per_sample < 30 * 2 ** 20  # measured, not assumed
    assert 6 <= batch <= 14 and f"training uses batches of {batch}" in why and "MB per sample, measured" in why


def test_a_batch_that_fits_is_neither_measured_nor_changed(monkeypatch):
    monkeypatch.setattr(memory, "available", lambda: 64 * 2 ** 30)
    calls = []
    assert memory.fit(64, 1e4, lambda b: calls.append(b)) == (64, None, None) and not calls
    monkeypatch.setattr(memory, "available", lambda: 2 ** 30)  # measured, and it fits
    batch, per_sample, why = memory.fit(64, 2 * 2 ** 20, _step_taking(2))
    assert batch == 64 and per_sample is not None and why is None


def test_a_run_caps_its_batch_and_reports_its_peak(monkeypatch):
    """The run measures real steps (each batch's step is run), here reported as 32 KB + 4 KB per
    sample whatever this long-lived test process has cached, with 200 KB free: batches of 9 (35%
    of 200 KB, less the 40 KB at batches of 2, over 4 KB per sample, plus those 2)."""
    sizes = iter([40 * 2 ** 10, 48 * 2 ** 10])

    def step_bytes(run_step):
        run_step()
        return next(sizes)
    monkeypatch.setattr(memory, "step_bytes", step_bytes)
    monkeypatch.setattr(memory, "available", lambda: 200 * 2 ** 10)
    r = onnxprune.prune(MODELS / "digits_mlp.onnx", 0.5, data=MODELS / "digits_train.npz", latency=False,
                        epochs=1, finetune_epochs=1, batch_size=64)
    assert r.report["schedule"]["batch_size"] == 9
    assert any("training uses batches of" in w for w in r.report["warnings"])
    assert r.report["peak_memory_mb"] > 10
