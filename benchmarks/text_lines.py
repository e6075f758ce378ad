"""Rendered text lines for a text recognizer (PP-OCRv4's, as rapidocr ships it): real words from
onnx's operator documentation, set in the machine's DejaVu faces at several sizes, weights and
grey levels, with a little blur and noise, then resized and normalized the way rapidocr feeds
the recognizer ([N, 3, 48, 320], (x/255 − 0.5)/0.5, right-padded with zeros).

    python benchmarks/text_lines.py out_dir [--train 400] [--test 120] [--seed 0]

writes out_dir/lines_train.npz and out_dir/lines_test.npz (input `x`) and the texts beside them.
"""
from __future__ import annotations

import argparse
import re
from pathlib import Path

import numpy as np

HEIGHT, WIDTH = 48, 320
FONTS = Path("/usr/share/fonts/truetype/dejavu")


def vocabulary() -> list[str]:
    """Words from onnx's operator docs, plus numbers and amounts as documents have them."""
    import onnx.defs

    text = " ".join(s.doc or "" for s in onnx.defs.get_all_schemas())
    words = sorted({w for w in re.findall(r"[A-Za-z]{2,12}", text)})
    return words


def render(text: str, rng: np.random.Generator) -> np.ndarray:
    from PIL import Image, ImageDraw, ImageFilter, ImageFont

    faces = sorted(FONTS.glob("DejaVu*.ttf"))
    font = ImageFont.truetype(str(faces[rng.integers(len(faces))]), int(rng.integers(26, 44)))
    ink, paper = int(rng.integers(0, 90)), int(rng.integers(200, 256))
    left, top, right, bottom = font.getbbox(text)
    pad = int(rng.integers(2, 10))
    img = Image.new("L", (right - left + 2 * pad, bottom - top + 2 * pad), paper)
    ImageDraw.Draw(img).text((pad - left, pad - top), text, fill=ink, font=font)
    if rng.random() < 0.5:
        img = img.filter(ImageFilter.GaussianBlur(float(rng.uniform(0.3, 1.0))))
    w = min(WIDTH, max(8, round(img.width * HEIGHT / img.height)))
    a = np.asarray(img.resize((w, HEIGHT), Image.BILINEAR), np.float32)
    a = np.clip(a + rng.normal(0, rng.uniform(0, 8), a.shape), 0, 255)
    x = np.zeros((3, HEIGHT, WIDTH), np.float32)
    x[:, :, :w] = (a / 255 - 0.5) / 0.5
    return x


def line(words: list[str], rng: np.random.Generator) -> str:
    parts = []
    while sum(len(p) + 1 for p in parts) < rng.integers(6, 20):
        r = rng.random()
        parts.append(str(rng.integers(0, 10000)) if r < 0.1 else f"{rng.uniform(0, 999):.2f}" if r < 0.15
                     else words[rng.integers(len(words))])
    return " ".join(parts)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("out", type=Path)
    ap.add_argument("--train", type=int, default=400)
    ap.add_argument("--test", type=int, default=120)
    ap.add_argument("--seed", type=int, default=0)
    args = ap.parse_args()
    rng = np.random.default_rng(args.seed)
    words = vocabulary()
    args.out.mkdir(parents=True, exist_ok=True)
    for split, n in (("train", args.train), ("test", args.test)):
        texts = [line(words, rng) for _ in range(n)]
        np.savez(args.out / f"lines_{split}.npz", x=np.stack([render(t, rng) for t in texts]))
        (args.out / f"lines_{split}.txt").write_text("\n".join(texts) + "\n")
        print(f"{args.out / f'lines_{split}.npz'}: {n} lines")


if __name__ == "__main__":
    main()
