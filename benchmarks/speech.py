"""Speech for a voice-activity detector (silero-vad): sentences spoken by espeak-ng (Debian's
`espeak-ng` package) in several voices, speeds and pitches, with silences and low noise between
them, at 16 kHz, cut into the windows silero's sequence export takes (512 new samples plus the 64
before them: [N, 576]); train and test come from different sentences.

    python benchmarks/speech.py out_dir [--seconds-train 60] [--seconds-test 20] [--seed 0]

writes out_dir/speech_train.npz and out_dir/speech_test.npz (input `input`), and the same windows
as silero's per-window exports take them, each window its own sample from a zero state
(out_dir/silero_train.npz, silero_test.npz: `input`, `state` [2, N, 128], `sr`):

    onnxprune silero_vad_16k_op15.onnx --rate 0.5 --data out_dir/silero_train.npz --eval-data out_dir/silero_test.npz
"""
from __future__ import annotations

import argparse
import io
import re
import shutil
import subprocess
import wave
from pathlib import Path

import numpy as np

RATE, HOP, CONTEXT = 16000, 512, 64
VOICES = ["en", "en-us", "en-gb-x-rp", "de", "fr", "es"]


def sentences() -> list[str]:
    """Sentences from onnx's operator docs: real prose, offline."""
    import onnx.defs

    text = " ".join(s.doc or "" for s in onnx.defs.get_all_schemas())
    found = [re.sub(r"[^A-Za-z ,.]", " ", s).strip() for s in re.split(r"(?<=[.])\s", text)]
    return [re.sub(r"\s+", " ", s) for s in found if 30 <= len(s) <= 160]


def speak(text: str, rng: np.random.Generator) -> np.ndarray:
    voice = VOICES[rng.integers(len(VOICES))]
    wav = subprocess.run(["espeak-ng", "-v", voice, "-s", str(int(rng.integers(120, 200))), "-p",
                          str(int(rng.integers(30, 70))), "--stdout", text], capture_output=True, check=True).stdout
    with wave.open(io.BytesIO(wav)) as w:
        a = np.frombuffer(w.readframes(w.getnframes()), np.int16).astype(np.float32) / 32768
        rate = w.getframerate()
    t = np.arange(int(len(a) * RATE / rate)) * rate / RATE  # to 16 kHz
    return np.interp(t, np.arange(len(a)), a).astype(np.float32)


def audio(texts: list[str], seconds: float, rng: np.random.Generator) -> np.ndarray:
    parts, total = [], 0
    for text in texts:
        if total >= seconds * RATE:
            break
        gap = np.zeros(int(rng.uniform(0.2, 1.5) * RATE), np.float32)
        parts += [gap, speak(text, rng) * rng.uniform(0.3, 1.0)]
        total += len(parts[-1]) + len(gap)
    a = np.concatenate(parts)[: int(seconds * RATE)]
    return a + rng.normal(0, rng.uniform(0.001, 0.01), a.shape).astype(np.float32)


def windows(a: np.ndarray) -> np.ndarray:
    a = np.concatenate([np.zeros(CONTEXT, np.float32), a])
    n = (len(a) - CONTEXT) // HOP
    return np.stack([a[i * HOP: i * HOP + CONTEXT + HOP] for i in range(n)]).astype(np.float32)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("out", type=Path)
    ap.add_argument("--seconds-train", type=float, default=60)
    ap.add_argument("--seconds-test", type=float, default=20)
    ap.add_argument("--seed", type=int, default=0)
    args = ap.parse_args()
    if shutil.which("espeak-ng") is None:
        raise SystemExit("speech.py: espeak-ng is not installed (apt-get install espeak-ng)")
    rng = np.random.default_rng(args.seed)
    texts = sentences()
    rng.shuffle(texts)
    half = len(texts) // 2
    args.out.mkdir(parents=True, exist_ok=True)
    for split, pool, seconds in (("train", texts[:half], args.seconds_train), ("test", texts[half:], args.seconds_test)):
        x = windows(audio(pool, seconds, rng))
        np.savez(args.out / f"speech_{split}.npz", input=x)
        np.savez(args.out / f"silero_{split}.npz", input=x, state=np.zeros((2, len(x), 128), np.float32),
                 sr=np.array(RATE, np.int64))
        print(f"{args.out / f'speech_{split}.npz'}: {len(x)} windows of {x.shape[1]} samples (and silero_{split}.npz)")


if __name__ == "__main__":
    main()
