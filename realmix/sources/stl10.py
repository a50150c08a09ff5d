"""STL-10 from the official binary tarball.

`stl10_binary/` holds `train_X.bin` / `test_X.bin` / `unlabeled_X.bin` (uint8 images, each 3 x 96 x 96
with every channel stored column-major), `train_y.bin` / `test_y.bin` (one byte per image, 1..10),
`class_names.txt` (one per line) and `fold_indices.txt` (10 lines of 0-based train indices; the
split stage uses line `seed` as the labelled set for 1000 labels).

Labels become 0..9; the 100,000 unlabeled images get label -1 (unknown), where the original wrote 0.
`unlabeled_X.bin` is 2.7 GB, so image members are streamed in chunks, never read whole.
"""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import numpy as np

from ..errors import RealmixError
from ..params import DatasetParams
from ..store import UNKNOWN
from .archive import ArchiveSpec, Lazy, TarArchive, fetch, open_tar
from .raw import RawDataset

SIDE = 96
PIXELS = 3 * SIDE * SIDE
CHUNK = 8192  # images per chunk (~226 MB)
DIR = "stl10_binary"

# md5 from torchvision 0.28.0 (torchvision/datasets/stl10.py, `STL10.tgz_md5`), which pins the same
# official tarball; the dataset page itself publishes no checksum.
SPECS: dict[str, ArchiveSpec] = {
    "stl10": ArchiveSpec(
        "stl10_binary.tar.gz",
        "http://ai.stanford.edu/~acoates/stl10/stl10_binary.tar.gz",
        "91f7769df0f17e558f3565bffb0c7dfb",
    ),
}


def decode_images(records: np.ndarray) -> np.ndarray:
    """N x 27648 uint8 (per channel column-major) -> N x 96 x 96 x 3 HWC."""
    return np.ascontiguousarray(records.reshape(-1, 3, SIDE, SIDE).transpose(0, 3, 2, 1))


def _corrupt(archive: TarArchive, why: str) -> RealmixError:
    return RealmixError(
        f"{archive.path}: {why}; the archive is corrupt or not the official one: "
        "delete it and download it again"
    )


def _labels(archive: TarArchive, member: str, n_images: int, n_classes: int) -> np.ndarray:
    y = np.frombuffer(archive.read(member), np.uint8).astype(np.int64)
    if len(y) != n_images:
        raise _corrupt(archive, f"{member} has {len(y)} labels for {n_images} images")
    if len(y) and (y.min() < 1 or y.max() > n_classes):
        raise _corrupt(archive, f"{member} has labels {y.min()}..{y.max()}, expected 1..{n_classes}")
    return y - 1


def _folds(archive: TarArchive, member: str, n_train: int) -> list[list[int]]:
    try:
        lines = [line for line in archive.read_text(member).splitlines() if line.strip()]
        folds = [[int(v) for v in line.split()] for line in lines]
    except ValueError as e:
        raise _corrupt(archive, f"{member} is not lines of integers ({e})") from e
    if any(i < 0 or i >= n_train for fold in folds for i in fold):
        raise _corrupt(archive, f"{member} has an index outside 0..{n_train - 1}")
    return folds


def _stream(
    archive: TarArchive, member: str, labels: np.ndarray | None
) -> Iterator[tuple[np.ndarray, np.ndarray]]:
    start = 0
    try:
        for records in archive.iter_records(member, PIXELS, CHUNK):
            n = len(records)
            y = labels[start : start + n] if labels is not None else np.full(n, UNKNOWN, np.int64)
            start += n
            yield decode_images(records), y
    finally:
        archive.close()  # reopened lazily by the next subset's stream


def read_stl10(path: Path) -> RawDataset:
    """Read an STL-10 binary tarball (no checksum check: `load` does that)."""
    path = Path(path)
    archive = open_tar(path)
    try:
        text = archive.read_text(f"{DIR}/class_names.txt")
        class_names = [s.strip() for s in text.splitlines() if s.strip()]
        counts = {}
        for subset in ("train", "test", "unlabeled"):
            size = archive.size(f"{DIR}/{subset}_X.bin")
            if size % PIXELS:
                raise _corrupt(archive, f"{subset}_X.bin has {size} bytes, not a multiple of {PIXELS}")
            counts[subset] = size // PIXELS
        labels = {
            s: _labels(archive, f"{DIR}/{s}_y.bin", counts[s], len(class_names)) for s in ("train", "test")
        }
        folds = _folds(archive, f"{DIR}/fold_indices.txt", counts["train"])
    finally:
        archive.close()
    subsets = {
        s: Lazy(lambda s=s: _stream(archive, f"{DIR}/{s}_X.bin", labels.get(s)))
        for s in ("train", "test", "unlabeled")
    }
    return RawDataset(
        class_names=class_names,
        subsets=subsets,
        meta={"upstream": path.name},
        extras={"folds.json": folds},
    )


def load(p: DatasetParams) -> RawDataset:
    spec = SPECS["stl10"]
    raw = read_stl10(fetch(spec, Path(p.archive_dir), p.download))
    raw.meta["md5"] = spec.md5
    return raw
