"""--max-loss: the search for the largest compression within an accuracy budget, its schedule of
rates, and the executors that run its trials (this process, worker processes, Ray)."""
import json

import numpy as np
import onnx
import pytest

from conftest import MODELS, run_cli
from onnxprune import search
from onnxprune.config import Search

DIGITS, DATA = MODELS / "digits_mlp.onnx", MODELS / "digits_train.npz"
ONE_SHOT = ["--method", "magnitude", "--no-latency"]  # trials in a second: the search is what is tested


def _trial(rate, within):
    return {"rate": rate, "within": within}


def test_rates_split_the_gap_in_log_compression_and_stop_when_fine_or_out_of_trials():
    s = Search(max_loss=1, min_rate=0.5, max_rate=0.99, max_trials=6, trials_per_round=2)
    trials = [_trial(0.5, True), _trial(0.99, False)]
    rates = search.next_rates(trials, s)
    c = [1 / (1 - r) for r in (0.5, *rates, 0.99)]  # 2x … 100x in three equal ratios
    assert len(rates) == 2 and np.allclose(np.diff(np.log(c)), np.log(50) / 3, rtol=1e-4)
    assert search.next_rates([_trial(0.5, True), _trial(0.99, True)], s) == []  # the most compressed is within
    assert search.next_rates([_trial(0.5, False), _trial(0.99, False)], s) == []  # nothing within: done (an error)
    assert search.next_rates([_trial(0.9, True), _trial(0.904, False)], s) == []  # a gap under 5%
    assert len(search.next_rates(trials + [_trial(0.8, True), _trial(0.95, False)], s)) == 2
    assert search.next_rates(trials * 3, s) == []  # max_trials spent


def test_a_loss_exactly_at_the_budget_is_within_it():
    from onnxprune.metrics import drop_points

    assert 100 * (0.9875 - 0.9825) > 0.5  # what float arithmetic says
    assert drop_points({"name": "accuracy", "dense": 0.9875, "pruned": 0.9825}) == 0.5
    assert drop_points({"name": "relative error", "dense": 0.0125, "pruned": 0.0175}) == 0.5


def test_max_loss_writes_the_most_compressed_trial_within_the_budget(tmp_path):
    out, report = tmp_path / "s.onnx", tmp_path / "s.json"
    code, stdout, stderr = run_cli(DIGITS, "--max-loss", "2", "--data", DATA, "--max-trials", "6", "-o", out,
                                   "--report", report, *ONE_SHOT)
    assert code == 0, stderr
    rep = json.loads(report.read_text())
    trials = rep["search"]["trials"]
    assert len(trials) == 6 and [t["rate"] for t in trials[:2]] == [0.5, 0.995]
    within = [t for t in trials if t["within"]]
    chosen = max(within, key=lambda t: t["rate"])
    assert rep["search"]["chosen_rate"] == chosen["rate"] == rep["rate"]
    assert all(t["drop"] <= 2 for t in within) and not trials[1]["within"]
    assert abs(rep["totals"]["sparsity"] - chosen["rate"]) < 0.01 and out.exists()
    assert "search            6 trials" in stdout
    # 2 points of 144 held-out samples: a budget of ~3 samples, which the user is told
    assert any("is 2.88 of the 144 evaluation samples" in w for w in rep["warnings"]) and "2.88 of the 144" in stderr


def test_the_process_pool_chooses_what_the_serial_search_chooses(tmp_path):
    runs = {}
    for jobs in (1, 2):
        report = tmp_path / f"{jobs}.json"
        code, _, stderr = run_cli(DIGITS, "--max-loss", "2", "--data", DATA, "--max-trials", "4", "--jobs", jobs,
                                  "-o", tmp_path / f"{jobs}.onnx", "--report", report, *ONE_SHOT)
        assert code == 0, stderr
        runs[jobs] = json.loads(report.read_text())["search"]
    assert runs[2]["executor"] == "Pool" and runs[2]["workers"] == 2
    assert [(t["rate"], t["drop"]) for t in runs[1]["trials"]] == [(t["rate"], t["drop"]) for t in runs[2]["trials"]]
    a, b = (onnx.load(str(tmp_path / f"{j}.onnx")) for j in (1, 2))
    for x, y in zip(a.graph.initializer, b.graph.initializer):
        assert x.SerializeToString() == y.SerializeToString()


def test_ray_runs_the_same_trials_on_a_local_instance(tmp_path):
    pytest.importorskip("ray")
    report = tmp_path / "r.json"
    code, _, stderr = run_cli(DIGITS, "--max-loss", "2", "--data", DATA, "--max-trials", "2", "--ray", "auto",
                              "-o", tmp_path / "r.onnx", "--report", report, *ONE_SHOT)
    assert code == 0, stderr
    got = json.loads(report.read_text())["search"]
    assert got["executor"] == "RayTasks" and [t["rate"] for t in got["trials"]] == [0.5, 0.995]


@pytest.mark.parametrize("args,message", [
    (["--max-loss", "1", "--rate", "0.9"], "either --rate or --max-loss"),
    (["--max-loss", "-1"], "--max-loss must be ≥ 0"),
    (["--jobs", "2"], "add --max-loss"),
    (["--max-loss", "1", "--structure", "nm"], "nothing for --max-loss to choose"),
    (["--max-loss", "1", "--min-rate", "0.9", "--max-rate", "0.8"], "--min-rate < --max-rate"),
])
def test_search_options_are_checked_before_any_work(args, message, tmp_path):
    code, _, stderr = run_cli(MODELS / "no_such_model.onnx", *args, "-o", tmp_path / "x.onnx")
    assert code == 2 and message in stderr and len(stderr.strip().splitlines()) == 1


def test_a_budget_nothing_meets_is_one_line_with_the_best_found(tmp_path):
    out = tmp_path / "x.onnx"
    code, _, stderr = run_cli(DIGITS, "--max-loss", "0", "--min-rate", "0.97", "--max-rate", "0.99", "--data", DATA,
                              "-o", out, *ONE_SHOT)
    errors = [line for line in stderr.splitlines() if "error" in line]  # the rest: a line per trial
    assert code == 2 and len(errors) == 1 and errors[0] == stderr.strip().splitlines()[-1], stderr
    assert "no rate kept within --max-loss 0: the best trial, rate 0.97" in stderr and not out.exists()


def test_ray_missing_or_unreachable_is_one_line(monkeypatch, tmp_path):
    import builtins

    real = builtins.__import__

    def no_ray(name, *a, **k):
        if name == "ray":
            raise ImportError("No module named 'ray'")
        return real(name, *a, **k)
    monkeypatch.setattr(builtins, "__import__", no_ray)
    code, _, stderr = run_cli(DIGITS, "--max-loss", "1", "--ray", "auto", "--data", DATA, "-o", tmp_path / "x.onnx")
    assert code == 2 and "pip install 'onnxprune[ray]'" in stderr and len(stderr.strip().splitlines()) == 1
    monkeypatch.setattr(builtins, "__import__", real)
    pytest.importorskip("ray")
    code, _, stderr = run_cli(DIGITS, "--max-loss", "1", "--ray", "127.0.0.1:1", "--data", DATA,
                              "-o", tmp_path / "x.onnx")
    assert code == 2 and "cannot reach the Ray cluster at 127.0.0.1:1" in stderr
    assert len(stderr.strip().splitlines()) == 1



def test_plots_of_a_search_and_of_a_reweighted_run(tmp_path):
    pytest.importorskip("matplotlib")
    code, stdout, stderr = run_cli(DIGITS, "--max-loss", "2", "--data", DATA, "--max-trials", "3", "--plot",
                                   tmp_path / "search", "-o", tmp_path / "s.onnx", *ONE_SHOT)
    assert code == 0, stderr
    assert sorted(p.name for p in (tmp_path / "search").iterdir()) == ["layers.png", "search.png"]
    code, stdout, stderr = run_cli(DIGITS, "--rate", "0.8", "--data", DATA, "--epochs", "2", "--finetune-epochs", "1",
                                   "--reweight-every", "5", "--always-reweight", "--plot", tmp_path / "run",
                                   "-o", tmp_path / "r.onnx", "--no-latency")
    assert code == 0, stderr
    assert sorted(p.name for p in (tmp_path / "run").iterdir()) == ["layers.png", "training.png"]
    for png in (tmp_path / "run").iterdir():
        assert png.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n" and png.stat().st_size > 5000
    assert f"plot              {tmp_path / 'run' / 'training.png'}" in stdout


def test_plot_without_matplotlib_is_one_line_before_any_work(monkeypatch, tmp_path):
    import importlib.util

    real = importlib.util.find_spec
    monkeypatch.setattr(importlib.util, "find_spec", lambda name, *a: None if name == "matplotlib" else real(name, *a))
    code, _, stderr = run_cli(MODELS / "no_such_model.onnx", "--plot", tmp_path, "-o", tmp_path / "x.onnx")
    assert code == 2 and "pip install 'onnxprune[plot]'" in stderr and len(stderr.strip().splitlines()) == 1


def test_trials_share_one_reweighted_phase_and_end_where_they_would_alone(tmp_path):
    """The reweighted phase does not depend on the rate, so a search trains it once: the first
    trial leaves its checkpoint, later ones start from it and write the model they would have
    trained alone, bit for bit."""
    import onnxprune

    kw = dict(data=DATA, latency=False, always_reweight=True, epochs=2, finetune_epochs=1, threads=1)
    alone = onnxprune.prune(DIGITS, 0.95, **kw)
    first = onnxprune.prune(DIGITS, 0.9, shared=str(tmp_path), **kw)  # trains the phase and leaves it
    assert (tmp_path / "resume.ckpt").exists() and not any("trained once" in n for n in first.report["preparation"])
    reused = onnxprune.prune(DIGITS, 0.95, shared=str(tmp_path), **kw)
    assert any("trained once for every trial" in n for n in reused.report["preparation"])
    for x, y in zip(alone.model.graph.initializer, reused.model.graph.initializer):
        assert x.SerializeToString() == y.SerializeToString(), x.name
    got, want = (r.report["phases"][0] for r in (reused, alone))
    assert got["name"] == "reweighted" and len(got["history"]) == len(want["history"]) > 0
    other = onnxprune.prune(DIGITS, 0.95, shared=str(tmp_path), **{**kw, "lam": 0.5})  # another job: not reused
    assert not any("trained once" in n for n in other.report["preparation"])
