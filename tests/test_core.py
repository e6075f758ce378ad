"""The core: the config is checked before any file is read, structures and op rules are
registered, modules import without cycles, and every fallback says what it did."""
import ast
import logging

import numpy as np
import onnx
import pytest
from onnx import TensorProto, helper, numpy_helper

from conftest import MODELS, ROOT, run_cli, small_model
import onnxprune
from onnxprune import compress, config, oprules, structures
from onnxprune.errors import OnnxPruneError
from onnxprune.layers import PrunableLayer


# ---- config --------------------------------------------------------------------------------

@pytest.mark.parametrize("options,words", [
    ({"mode": "bogus"}, "mode must be one of"),
    ({"rate": 1.5}, "rate must be between 0 and 1"),
    ({"structure": "nm", "rate": 0.9}, "prunes exactly 0.5"),
    ({"rate_of": "macs"}, "--rate-of macs needs --structure filter"),
    ({"mode": "layerwise", "structure": "filter"}, "--mode layerwise prunes each layer alone"),
    ({"mode": "layerwise", "finetune_lr": 1e-3}, "--finetune-lr is not used by --mode layerwise"),
    ({"qat": True}, "--qat trains against the int8 quantizer"),
    ({"block": "4by4", "structure": "block"}, "--block '4by4' is not RxC"),
    ({"input_shapes": ["x=1x-3"]}, "--input-shape"),
    ({"resume": True}, "give the same --workdir"),
])
def test_options_are_refused_before_the_model_is_read(options, words):
    """A typo in an option costs nothing: the model path does not even exist."""
    with pytest.raises(OnnxPruneError, match=words.replace("(", r"\(")):
        onnxprune.prune("no/such/model.onnx", **options)


def test_an_unknown_option_is_a_type_error():
    with pytest.raises(TypeError, match="strucure"):
        onnxprune.prune("no/such/model.onnx", strucure="filter")


def test_config_defaults_and_derived_values():
    cfg = onnxprune.PruneConfig.from_options(structure="nm", nm="1:4", target="trt")
    assert cfg.pruning.rate == 0.75 and cfg.compression.storage == "dense"
    assert onnxprune.PruneConfig().pruning.rate == 0.9 and onnxprune.PruneConfig().compression.storage == "dense"
    with pytest.raises(Exception):  # frozen
        cfg.pruning.rate = 0.5


def test_resume_fingerprint_covers_what_trains_and_only_that():
    base = onnxprune.PruneConfig.from_options(rate=0.8)
    same = onnxprune.PruneConfig.from_options(rate=0.8, storage="compact", shrink=False, latency=False, threads=1)
    assert base.training_options() == same.training_options()
    for change in ({"epochs": 3}, {"lam": 2.0}, {"seed": 1}, {"structure": "column"}, {"quantize": "cluster"},
                   {"simplify": False}, {"output_name": "y"}):
        assert onnxprune.PruneConfig.from_options(rate=0.8, **change).training_options() != base.training_options()


def test_the_cli_refuses_options_before_reading_the_model(tmp_path):
    code, _, stderr = run_cli(tmp_path / "missing.onnx", "--mode", "layerwise", "--finetune-lr", "0.1")
    assert code == 2 and "--finetune-lr is not used" in stderr and "Traceback" not in stderr


# ---- registries and layering ---------------------------------------------------------------

def test_every_structure_name_is_registered():
    assert set(config.STRUCTURES) == set(structures.REGISTRY)
    for name in config.STRUCTURES:
        s = structures.make_structure(name)
        assert s.name == name and s.coupled == (name in config.COUPLED)


def test_op_rules_are_one_per_op_and_layers_make_channels():
    assert {op for op, r in oprules.RULES.items() if r.makes_channels} == {"Conv", "ConvTranspose", "Gemm", "MatMul",
                                                                               "LSTM", "GRU", "RNN"}
    with pytest.raises(ValueError, match="already has a channel rule"):
        oprules.rule("Relu")(lambda a, s: None)


def test_modules_import_without_cycles():
    """Module-level `from .x import` edges of the package form no cycle (function-local imports
    are not counted because the rule is that none are needed to break one)."""
    package = ROOT / "onnxprune"
    edges = {}
    for path in package.glob("*.py"):
        tree = ast.parse(path.read_text())
        deps = set()
        for node in tree.body:
            if isinstance(node, ast.ImportFrom) and node.level == 1:
                deps |= {node.module} if node.module else {a.name for a in node.names}
        edges[path.stem] = deps - {"__init__"}
    seen, stack = set(), []

    def visit(m):
        assert m not in stack, f"import cycle: {' -> '.join(stack[stack.index(m):] + [m])}"
        if m in seen:
            return
        stack.append(m)
        for d in edges.get(m, ()):
            visit(d)
        stack.pop()
        seen.add(m)
    for m in edges:
        visit(m)


# ---- fallbacks that say what they did -------------------------------------------------------

class _Broken(structures.Unstructured):
    def rewrite(self, masked, plan, masks, shapes):
        raise KeyError("Concat.1")


def test_a_failing_rewrite_falls_back_to_the_masked_model_with_a_warning():
    from onnxprune.rewrite import rewrite

    m = small_model()
    warnings = []
    got = rewrite(_Broken(), m, [np.zeros((1, 3))], None, {}, {}, lambda model, what: [np.zeros((1, 3))],
                  True, warnings)
    assert got.model is m and got.done == []
    assert warnings and "KeyError" in warnings[0] and "the output is the masked model" in warnings[0]


def test_a_layer_missing_from_the_written_graph_is_counted_from_its_mask():
    layer = PrunableLayer("gone", "MatMul", "w", (4, 3), 1)
    mask = np.zeros((4, 3), np.float32)
    mask[0] = 1
    warnings = []
    assert compress.kept_counts([layer], {}, {"w": mask}, warnings) == {"w": 3}
    assert "gone" in warnings[0]


def test_the_zero_check_covers_tensors_whose_shape_changed():
    w = np.array([[1, 0, 0], [0, 2, 0]], np.float32)
    before = small_model()
    before.graph.initializer[0].CopyFrom(numpy_helper.from_array(np.resize(w, (4, 3)), "w"))
    after = small_model()
    after.graph.initializer[0].CopyFrom(numpy_helper.from_array(np.ones((3, 4), np.float32), "w"))
    slots = {"fc": ("fc", 1)}
    stored = {"fc": after.graph.initializer[0]}
    with pytest.raises(OnnxPruneError, match="non-zero"):
        compress.check_zeros_kept(before, after, slots, stored)


def test_batchnorm_without_a_known_input_shape_is_an_error_not_a_guess():
    from onnxprune.losses import MeanSquaredError
    from onnxprune.training import build_training_graph

    c = 3
    inits = [numpy_helper.from_array(np.ones(c, np.float32), n) for n in ("s", "b", "m", "v")]
    g = helper.make_graph([helper.make_node("BatchNormalization", ["x", "s", "b", "m", "v"], ["y"], name="bn")], "g",
                          [helper.make_tensor_value_info("x", TensorProto.FLOAT, ["N", c, 5])],
                          [helper.make_tensor_value_info("y", TensorProto.FLOAT, ["N", c, 5])], inits)
    m = helper.make_model(g, opset_imports=[helper.make_opsetid("", 17)])
    terms = [MeanSquaredError("y", "y", "t", (c, 5))]
    with pytest.raises(OnnxPruneError, match="shape of its input x is unknown"):
        build_training_graph(m, {}, set(), terms, {})
    from onnxprune import autodiff

    for norms, suffix in (("frozen", "/shape"), ("batch", "/per_channel")):  # rank 3: a [C, 1] scale
        graph = autodiff.expand_private(build_training_graph(m, {}, set(), terms, {"x": (2, c, 5)}, norms=norms))
        shape = next(t for t in graph.graph.initializer if t.name.endswith(suffix))
        assert numpy_helper.to_array(shape).tolist() == [-1, 1]


def test_quantize_leaves_the_root_logger_alone_and_wraps_converter_failures(monkeypatch):
    from onnxprune import quantize

    root = logging.getLogger()
    level, filters = root.level, list(root.filters)
    with quantize._quiet():
        assert root.level == level
    assert root.level == level and root.filters == filters

    def broken(model, target):
        raise RuntimeError("No Adapter From Version 11 for Relu\nlong C++ context")
    monkeypatch.setattr(onnx.version_converter, "convert_version", broken)
    layers = [PrunableLayer("fc", "MatMul", "w", (4, 3), 1)]
    with pytest.raises(OnnxPruneError, match="could not convert the model from opset 11: No Adapter"):
        quantize.int8(small_model(opset=11), {"x": np.zeros((4, 4), np.float32)}, ["x"], "ort", layers, {})


def test_the_library_reports_through_logging(caplog, tmp_path):
    """No print from the library: warnings go to the 'onnxprune' logger (the CLI shows them)."""
    m = small_model(op_after="Relu")
    with caplog.at_level(logging.WARNING, logger="onnxprune"):
        r = onnxprune.prune(m, 0.5, latency=False, synth_samples=64,
                            schedule=onnxprune.Schedule(epochs=1, finetune_epochs=1))
    assert any("synthesized inputs" in rec.message for rec in caplog.records if rec.name == "onnxprune")
    assert r.report["warnings"]


def test_ort_refusing_the_inputs_is_one_whole_line():
    """ORT continues 'for the following indices' on the next line: the user gets all of it, once."""
    from onnxprune.data import run_model
    from onnxprune.plumbing import session

    with pytest.raises(OnnxPruneError, match=r"for the following indices index: 1 Got: 5 Expected: 4") as e:
        run_model(session(small_model()), {"x": np.zeros((3, 5), np.float32)}, ["x"])
    assert "\n" not in str(e.value)


def test_one_shot_never_runs_the_training_data_and_large_synthetic_inputs_are_capped(monkeypatch):
    """One-shot magnitude pruning needs the dense model's outputs on the held-out samples only;
    synthesized inputs stop at SYNTH_BYTES (a 416×416 detector spent minutes on 2,048 of them)."""
    from onnxprune import data as data_stage

    seen = []
    real = data_stage.run_model
    monkeypatch.setattr(data_stage, "run_model", lambda s, a, names, *k, **kw: seen.append(len(a[names[0]])) or real(s, a, names, *k, **kw))
    x = np.random.default_rng(0).standard_normal((200, 4)).astype(np.float32)
    onnxprune.prune(small_model(op_after="Relu"), 0.5, data={"x": x}, method="magnitude", latency=False)
    assert seen and max(seen) == 20  # the 10% held out, never the 180 training samples

    spec = data_stage.InputSpec("img", np.dtype(np.float32), ["N", 3, 416, 416])
    assert data_stage.synth_count([spec], 2048, {}) == data_stage.SYNTH_BYTES // (3 * 416 * 416 * 4)
    assert data_stage.synth_count([spec], 40, {}) == 40
    big = data_stage.InputSpec("img", np.dtype(np.float32), ["N", 3, 4096, 4096])
    assert data_stage.synth_count([big], 2048, {}) == data_stage.SYNTH_FLOOR


def test_a_written_model_that_fails_its_check_is_removed(tmp_path, monkeypatch):
    from onnxprune import export

    def broken(out, reference):
        raise OnnxPruneError(f"the written model {out} failed its check: simulated")
    monkeypatch.setattr(export, "verify", broken)
    out = tmp_path / "o.onnx"
    with pytest.raises(OnnxPruneError, match="failed its check"):
        export.write(small_model(), out, small_model())
    assert not out.exists()


def test_each_stage_says_what_it_does_as_it_starts(caplog):
    """A terminal shows these lines (the CLI turns the 'onnxprune.stage' logger to INFO on a tty)."""
    x = np.random.default_rng(0).standard_normal((40, 4)).astype(np.float32)
    with caplog.at_level(logging.INFO, logger="onnxprune.stage"):
        onnxprune.prune(small_model(op_after="Relu"), 0.5, data={"x": x}, method="magnitude", latency=False)
    said = [r.getMessage() for r in caplog.records if r.name == "onnxprune.stage"]
    assert [s.split()[0] for s in said] == ["loading", "data:", "planning", "refit:", "refit:", "checking"]


def test_top_level_cli_py_runs_from_a_checkout(tmp_path):
    """`python cli.py model.onnx --rate R` works from any folder, without installing."""
    import subprocess
    import sys

    out = tmp_path / "m.onnx"
    r = subprocess.run([sys.executable, str(ROOT / "cli.py"), str(MODELS / "digits_mlp.onnx"), "--rate", "0.5",
                        "--method", "magnitude", "--no-latency", "-o", str(out)],
                       capture_output=True, text=True, cwd=tmp_path, timeout=300)
    assert r.returncode == 0, r.stderr
    assert "weights kept" in r.stdout and out.exists()


def test_device_option_is_parsed_and_cuda_refused_with_the_install_where_this_build_has_none(tmp_path):
    import onnxruntime

    from onnxprune import device

    assert device.parse("CUDA") == "cuda:0" and device.parse("cuda:1") == "cuda:1" and device.parse("cpu") == "cpu"
    assert device.providers("cuda:1")[0] == ("CUDAExecutionProvider", {"device_id": 1})
    assert device.providers("cpu") == ["CPUExecutionProvider"]
    with device.using("cuda:0"):
        assert device.current() == "cuda:0"
    assert device.current() == "cpu"
    code, _, stderr = run_cli(MODELS / "no_such_model.onnx", "--device", "gpu", "-o", tmp_path / "x.onnx")
    assert code == 2 and "--device must be cpu, cuda or cuda:N" in stderr
    if "CUDAExecutionProvider" not in onnxruntime.get_available_providers():  # the CPU wheel: refused before work
        code, _, stderr = run_cli(MODELS / "no_such_model.onnx", "--device", "cuda", "-o", tmp_path / "x.onnx")
        assert code == 2 and "pip install onnxruntime-gpu" in stderr
        assert len(stderr.strip().splitlines()) == 1
        # asked for CUDA anyway, ORT quietly runs the session on the CPU: the probe notices
        assert "fell back to the CPU" in device._probe("cuda:0")
    assert device._probe("cuda:64")  # no machine has that GPU, whatever the build


def test_the_cuda_probe_names_the_cause_as_the_gpu_wheel_reports_it():
    """What ORT's CUDA build printed on a machine without a GPU (onnxruntime-training 1.19.2 and the
    nvidia-*-cu11 wheels): without the library path it falls back to the CPU naming the missing
    library; with it but no driver it aborts the process (hence the child)."""
    from onnxprune.device import probe_verdict

    fell_back = ("[E:onnxruntime:Default, provider_bridge_ort.cc:1992 TryGetProviderInfo_CUDA] ... Failed to load "
                 "library libonnxruntime_providers_cuda.so with error: libcublasLt.so.11: cannot open shared object "
                 "file: No such file or directory\n[W:onnxruntime:Default] Failed to create CUDAExecutionProvider.\n")
    said = probe_verdict(0, "PROVIDERS:CPUExecutionProvider\n", fell_back)
    assert "libcublasLt.so.11: cannot open shared object file" in said and "fell back to the CPU" in said
    aborted = ("terminate called after throwing an instance of 'onnxruntime::OnnxRuntimeException'\n  what():  "
               "cudaDriverWrapper.cc:42 onnxruntime::contrib::cuda::CUDADriverWrapper::CUDADriverWrapper() handle != "
               "nullptr was false.\n")
    assert "no NVIDIA driver" in probe_verdict(-6, "", aborted)
    assert probe_verdict(3, "ERROR:CUDA failure 101: invalid device ordinal\n", "") == "CUDA failure 101: invalid device ordinal"
    assert probe_verdict(0, "PROVIDERS:CUDAExecutionProvider,CPUExecutionProvider\n", "") is None
