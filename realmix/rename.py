"""The seed's `{number}_{class_name}.{ext}` naming, as a non-destructive copy.

The original `rename_files.py` renamed the user's files in place. Here the user's folder is only read:
the renamed view is written to a new folder (atomically) with a CSV mapping old -> new names.

Rules (as the seed): files are numbered in sorted path order from `start`, zero-padded to the width of
the largest number; the class is the name of the file's parent folder, and `unlabeled` for anything under
an `unlabeled/` folder. A file `train/cat/x.jpg` becomes `train/0007_cat.png`; `cat/x.jpg` becomes
`0007_cat.png` (the class folder is folded into the name).
"""

from __future__ import annotations

import csv
import io
import shutil
from dataclasses import dataclass
from pathlib import Path

from . import atomic
from .errors import RealmixError
from .images import UNLABELED_DIRS, list_files, open_image, to_rgb

_FORMATS = {".png": "png", ".jpg": "jpg", ".jpeg": "jpg"}


@dataclass(frozen=True)
class Renamed:
    old: str  # relative to the source folder
    new: str  # relative to the output folder
    cls: str


def plan(src: Path, start: int = 0, ext: str = "png") -> list[Renamed]:
    """Compute the new name of every image under `src` (nothing is written)."""
    if not src.is_dir():
        raise RealmixError(f"rename.src={str(src)!r}: folder not found; point it at your image folder")
    files = list_files(src)
    if not files:
        raise RealmixError(f"rename.src={str(src)!r}: no PNG/JPEG images found")
    width = len(str(len(files) + start))
    out = []
    for i, f in enumerate(files):
        rel = f.relative_to(src)
        if len(rel.parts) < 2:
            raise RealmixError(f"{f}: image directly in {src}; put it in a class folder so its class is known")
        unlabeled = any(part.lower() in UNLABELED_DIRS for part in rel.parts[:-1])
        cls = "unlabeled" if unlabeled else rel.parts[-2]
        # keep the top-level split folder (train/, test/, unlabeled/), fold the class folder into the name
        top = Path(rel.parts[0]) if (unlabeled or len(rel.parts) > 2) else Path()
        suffix = f.suffix.lower() if ext == "keep" else f".{ext}"
        out.append(Renamed(str(rel), str(top / f"{i + start:0{width}d}_{cls}{suffix}"), cls))
    return out


def rename_view(src: str | Path, out_dir: str | Path, mapping_csv: str | Path, *, start: int = 0,
                ext: str = "png") -> list[Renamed]:
    """Write the renamed copy of `src` into `out_dir` and the old -> new CSV to `mapping_csv`."""
    src, out_dir = Path(src).resolve(), Path(out_dir)
    if out_dir.resolve().is_relative_to(src):
        raise RealmixError(f"rename: output {out_dir} lies inside the source folder {src}; choose another")
    items = plan(src, start, ext)
    with atomic.atomic_path(out_dir, directory=True) as tmp:
        for r in items:
            source, target = src / r.old, tmp / r.new
            target.parent.mkdir(parents=True, exist_ok=True)
            if _FORMATS.get(source.suffix.lower()) == _FORMATS.get(target.suffix.lower()):
                shutil.copyfile(source, target)  # same format: copy bytes, never touch the original
            else:
                im = to_rgb(open_image(source))
                im.save(target, format="PNG" if target.suffix == ".png" else "JPEG", quality=95)
    buf = io.StringIO()
    writer = csv.writer(buf, lineterminator="\n")
    writer.writerow(["old", "new", "class"])
    writer.writerows((r.old, r.new, r.cls) for r in items)
    atomic.write_text(mapping_csv, buf.getvalue())
    return items
