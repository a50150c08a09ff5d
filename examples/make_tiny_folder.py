"""Regenerate examples/tiny_folder: a tiny custom dataset in the seed's folder layout.

Three classes of drawn shapes (circle, square, triangle) in PNG and JPEG, of several sizes and modes
(RGB, grayscale, RGBA), so the folder source and the rename stage have a real, offline example.
Run: python examples/make_tiny_folder.py
"""

from __future__ import annotations

import shutil
from pathlib import Path

import numpy as np
from PIL import Image, ImageDraw

ROOT = Path(__file__).parent / "tiny_folder"
CLASSES = ("circle", "square", "triangle")


def draw(shape: str, rng: np.random.Generator) -> Image.Image:
    w, h = int(rng.integers(20, 40)), int(rng.integers(20, 40))
    bg = tuple(int(v) for v in rng.integers(0, 80, 3))
    fg = tuple(int(v) for v in rng.integers(150, 256, 3))
    im = Image.new("RGB", (w, h), bg)
    d = ImageDraw.Draw(im)
    s = min(w, h) * float(rng.uniform(0.5, 0.8))
    cx, cy = w / 2 + rng.uniform(-2, 2), h / 2 + rng.uniform(-2, 2)
    box = (cx - s / 2, cy - s / 2, cx + s / 2, cy + s / 2)
    if shape == "circle":
        d.ellipse(box, fill=fg)
    elif shape == "square":
        d.rectangle(box, fill=fg)
    else:
        d.polygon([(cx, cy - s / 2), (cx - s / 2, cy + s / 2), (cx + s / 2, cy + s / 2)], fill=fg)
    return im


def save(im: Image.Image, path: Path, i: int) -> None:
    if i % 3 == 1:
        im = im.convert("L")
    elif i % 3 == 2:
        im = im.convert("RGBA")
    if i % 2:
        path.with_suffix(".jpg").parent.mkdir(parents=True, exist_ok=True)
        im.convert("RGB" if im.mode == "RGBA" else im.mode).save(path.with_suffix(".jpg"), quality=90)
    else:
        path.parent.mkdir(parents=True, exist_ok=True)
        im.save(path.with_suffix(".png"))


def main() -> None:
    rng = np.random.default_rng(0)
    shutil.rmtree(ROOT, ignore_errors=True)
    for split, n in (("train", 6), ("test", 3)):
        for c in CLASSES:
            for i in range(n):
                save(draw(c, rng), ROOT / split / c / f"{c}{i}", i)
    for i in range(9):
        save(draw(CLASSES[i % 3], rng), ROOT / "unlabeled" / f"img{i}", i)


if __name__ == "__main__":
    main()
