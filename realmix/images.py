"""Reading user image files (PNG/JPEG, any size and mode) and finding them in a folder.

Shared by the `folder` source, the rename stage and (later) prediction on a folder, so that every entry
point accepts the same files and rejects bad ones with the same one-line message.
"""

from __future__ import annotations

import os
import re
import warnings
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import numpy as np
from PIL import Image, ImageOps, UnidentifiedImageError
from tqdm import tqdm

from .errors import RealmixError

IMAGE_SUFFIXES = (".png", ".jpg", ".jpeg")
NUMBERED_NAME = re.compile(r"^\d+_(?P<cls>.+)$")  # the seed's `{number}_{class}` file stem
UNLABELED_DIRS = ("unlabeled", "unlabelled")


def is_hidden(name: str) -> bool:
    return name.startswith(".")


def list_files(root: Path) -> list[Path]:
    """All non-hidden files under `root`, sorted; any file that is not PNG/JPEG is an error."""
    files = []
    for p in sorted(root.rglob("*")):
        if any(is_hidden(part) for part in p.relative_to(root).parts) or not p.is_file():
            continue
        if p.suffix.lower() not in IMAGE_SUFFIXES:
            raise RealmixError(
                f"{p}: not a PNG/JPEG image (only {', '.join(IMAGE_SUFFIXES)} are read); move or delete it"
            )
        files.append(p)
    return files


def class_from_name(path: Path) -> str | None:
    m = NUMBERED_NAME.match(path.stem)
    return m.group("cls") if m else None


def open_image(path: Path) -> Image.Image:
    """Open and fully decode an image, turning any decoder failure into a one-line error."""
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("error", Image.DecompressionBombWarning)
            im = Image.open(path)
            im.load()  # decode now: truncated or corrupt files fail here, not later
        return ImageOps.exif_transpose(im)
    except (UnidentifiedImageError, OSError, SyntaxError, ValueError, Image.DecompressionBombError,
            Image.DecompressionBombWarning) as e:
        reason = str(e).splitlines()[0] if str(e) else type(e).__name__
        raise RealmixError(f"{path}: not a readable PNG/JPEG image ({reason}); replace or remove it") from e


def to_rgb(im: Image.Image) -> Image.Image:
    """Any mode -> RGB; transparent pixels are composited onto black (as the seed's crop script did)."""
    if im.mode == "P" and "transparency" in im.info:
        im = im.convert("RGBA")
    if im.mode in ("RGBA", "LA", "PA"):
        im = im.convert("RGBA")
        background = Image.new("RGBA", im.size, (0, 0, 0, 255))
        return Image.alpha_composite(background, im).convert("RGB")
    if im.mode in ("I;16", "I;16B", "I;16L", "I", "F"):
        a = np.asarray(im, dtype=np.float64)
        top = a.max() if a.size and a.max() > 255 else 255.0
        return Image.fromarray(np.clip(a * (255.0 / top), 0, 255).astype(np.uint8)).convert("RGB")
    return im.convert("RGB")


def fit(im: Image.Image, size: int, mode: str) -> Image.Image:
    """Make a square `size` x `size` image: `pad` (keep aspect, centre on black), `stretch`, or `crop`."""
    if im.size == (size, size):
        return im
    resample = Image.Resampling.BICUBIC
    if mode == "stretch":
        return im.resize((size, size), resample)
    w, h = im.size
    if mode == "pad":
        scale = size / max(w, h)
        nw, nh = max(1, round(w * scale)), max(1, round(h * scale))
        canvas = Image.new("RGB", (size, size))
        canvas.paste(im.resize((nw, nh), resample), ((size - nw) // 2, (size - nh) // 2))
        return canvas
    if mode == "crop":
        scale = size / min(w, h)
        nw, nh = max(size, round(w * scale)), max(size, round(h * scale))
        im = im.resize((nw, nh), resample)
        left, top = (nw - size) // 2, (nh - size) // 2
        return im.crop((left, top, left + size, top + size))
    raise ValueError(f"unknown resize mode {mode!r}")


def load_rgb(path: Path, size: int, mode: str = "pad") -> np.ndarray:
    """Read one file as a `size` x `size` x 3 uint8 array."""
    return np.asarray(fit(to_rgb(open_image(path)), size, mode), dtype=np.uint8)


def load_many(paths: list[Path], size: int, mode: str = "pad", *, desc: str = "images") -> np.ndarray:
    """Read many files (threads: PIL releases the GIL while decoding) into N x size x size x 3 uint8."""
    out = np.empty((len(paths), size, size, 3), np.uint8)
    with ThreadPoolExecutor(max_workers=min(8, os.cpu_count() or 1)) as pool:
        it = pool.map(lambda p: load_rgb(p, size, mode), paths)
        for i, a in enumerate(tqdm(it, total=len(paths), desc=desc, unit="img", disable=len(paths) < 500)):
            out[i] = a
    return out
