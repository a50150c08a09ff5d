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


class Problems:
    """The problems found in a user's folder, collected so that one run reports all of them.

    `add` records one line (`<file>: <what is wrong>; <what to do>`); `raise_if_any` raises one RealmixError
    listing them, the first `CAP` in full and a count of the rest (a single problem stays a single line).
    """

    CAP = 20

    def __init__(self, root: Path):
        self.root = root
        self.lines: list[str] = []

    def add(self, line: str) -> None:
        self.lines.append(line)

    def raise_if_any(self) -> None:
        if not self.lines:
            return
        if len(self.lines) == 1:
            raise RealmixError(self.lines[0])
        shown = self.lines[:self.CAP]
        more = len(self.lines) - len(shown)
        raise RealmixError(
            f"{self.root}: {len(self.lines)} problems; nothing was written (fix them all and rerun):\n  "
            + "\n  ".join(shown) + (f"\n  ... and {more} more" if more else ""))


def list_files(root: Path, problems: Problems | None = None) -> list[Path]:
    """All non-hidden files under `root`, sorted; any file that is not PNG/JPEG is an error (recorded in
    `problems` and left out when given, raised at once otherwise)."""
    files = []
    for p in sorted(root.rglob("*")):
        if any(is_hidden(part) for part in p.relative_to(root).parts) or not p.is_file():
            continue
        if p.suffix.lower() not in IMAGE_SUFFIXES:
            line = f"{p}: not a PNG/JPEG image (only {', '.join(IMAGE_SUFFIXES)} are read); move or delete it"
            if problems is None:
                raise RealmixError(line)
            problems.add(line)
            continue
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


def load_many(paths: list[Path], size: int, mode: str = "pad", *, desc: str = "images",
              problems: Problems | None = None) -> np.ndarray:
    """Read many files (threads: PIL releases the GIL while decoding) into N x size x size x 3 uint8.

    An unreadable file raises at once, or, with `problems`, is recorded there (its slot stays black) so that
    every bad file is found in one pass."""

    def read(p: Path) -> np.ndarray | RealmixError:
        try:
            return load_rgb(p, size, mode)
        except RealmixError as e:
            if problems is None:
                raise
            return e

    out = np.zeros((len(paths), size, size, 3), np.uint8)
    with ThreadPoolExecutor(max_workers=min(8, os.cpu_count() or 1)) as pool:
        it = pool.map(read, paths)
        for i, a in enumerate(tqdm(it, total=len(paths), desc=desc, unit="img", disable=len(paths) < 500)):
            if isinstance(a, RealmixError):
                problems.add(str(a))  # here, in file order (the threads finish in any order)
            else:
                out[i] = a
    return out
