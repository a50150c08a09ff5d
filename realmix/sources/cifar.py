"""CIFAR-10 and CIFAR-100 from the official *binary* archives (no pickle is ever loaded).

Binary layout (https://www.cs.toronto.edu/~kriz/cifar.html): fixed-size records of label byte(s)
followed by 3072 pixel bytes, a 32x32 red plane, then green, then blue (CHW, row-major).

- CIFAR-10: `cifar-10-batches-bin/data_batch_1.bin` .. `data_batch_5.bin` (the `train` subset, in that
  order, as the original `create_datasets` concatenated them) and `test_batch.bin`; records are
  1 label byte + 3072 bytes; class names one per line in `batches.meta.txt`.
- CIFAR-100: `cifar-100-binary/train.bin` and `test.bin`; records are a coarse label byte, a fine label
  byte, then 3072 bytes. RealMix uses the **fine** labels; names in `fine_label_names.txt`.
"""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import numpy as np

from ..errors import RealmixError
from ..params import DatasetParams
from .archive import ArchiveSpec, Lazy, TarArchive, fetch, open_tar
from .raw import RawDataset

PIXELS = 3 * 32 * 32
CHUNK = 10_000  # records decoded per chunk (~30 MB)

# md5 values as published on the dataset page https://www.cs.toronto.edu/~kriz/cifar.html (its table
# of versions), cross-checked against public code that pins the same binary archives.
SPECS: dict[str, ArchiveSpec] = {
    "cifar10": ArchiveSpec(
        "cifar-10-binary.tar.gz",
        "https://www.cs.toronto.edu/~kriz/cifar-10-binary.tar.gz",
        "c32a1d4ab5d03f1284b67883e8d87530",
    ),
    "cifar100": ArchiveSpec(
        "cifar-100-binary.tar.gz",
        "https://www.cs.toronto.edu/~kriz/cifar-100-binary.tar.gz",
        "03b5dce01913d631647c71ecec9e9cb8",
    ),
}

C10_DIR = "cifar-10-batches-bin"
C10_TRAIN = [f"{C10_DIR}/data_batch_{i}.bin" for i in range(1, 6)]
C10_TEST = f"{C10_DIR}/test_batch.bin"
C10_NAMES = f"{C10_DIR}/batches.meta.txt"
C100_DIR = "cifar-100-binary"
C100_TRAIN = f"{C100_DIR}/train.bin"
C100_TEST = f"{C100_DIR}/test.bin"
C100_NAMES = f"{C100_DIR}/fine_label_names.txt"


def decode_records(records: np.ndarray, label_offset: int) -> tuple[np.ndarray, np.ndarray]:
    """N x (label bytes + 3072) uint8 records -> (N x 32 x 32 x 3 uint8 HWC, int64 labels)."""
    labels = records[:, label_offset].astype(np.int64)
    pixels = records[:, -PIXELS:].reshape(-1, 3, 32, 32)
    return np.ascontiguousarray(pixels.transpose(0, 2, 3, 1)), labels


def _class_names(archive: TarArchive, member: str) -> list[str]:
    names = [line.strip() for line in archive.read_text(member).splitlines() if line.strip()]
    if len(set(names)) != len(names):
        raise RealmixError(
            f"{archive.path}: {member} lists a class twice; the archive is corrupt: "
            "delete it and download it again"
        )
    return names


def _stream(
    archive: TarArchive, members: list[str], label_bytes: int, label_offset: int, n_classes: int
) -> Iterator[tuple[np.ndarray, np.ndarray]]:
    try:
        for member in members:
            for records in archive.iter_records(member, label_bytes + PIXELS, CHUNK):
                images, labels = decode_records(records, label_offset)
                if len(labels) and labels.max() >= n_classes:
                    raise RealmixError(
                        f"{archive.path}: {member} has label {int(labels.max())} but there are only "
                        f"{n_classes} classes; the archive is corrupt: delete it and download it again"
                    )
                yield images, labels
    finally:
        archive.close()  # reopened lazily by the next subset's stream


def _read(
    path: Path, names: str, subsets: dict[str, list[str]], label_bytes: int, label_offset: int
) -> RawDataset:
    archive = open_tar(path)
    try:
        class_names = _class_names(archive, names)
        for members in subsets.values():
            for m in members:
                archive.member(m)  # fail now, not half-way through writing, if a member is missing
    finally:
        archive.close()
    n = len(class_names)
    return RawDataset(
        class_names=class_names,
        subsets={
            s: Lazy(lambda ms=ms: _stream(archive, ms, label_bytes, label_offset, n))
            for s, ms in subsets.items()
        },
        meta={"upstream": path.name},
    )


def read_cifar10(path: Path) -> RawDataset:
    """Read a CIFAR-10 binary tarball (no checksum check: `load_cifar10` does that)."""
    return _read(Path(path), C10_NAMES, {"train": C10_TRAIN, "test": [C10_TEST]}, 1, 0)


def read_cifar100(path: Path) -> RawDataset:
    """Read a CIFAR-100 binary tarball with its fine labels (no checksum check: `load_cifar100` does that)."""
    return _read(Path(path), C100_NAMES, {"train": [C100_TRAIN], "test": [C100_TEST]}, 2, 1)


def _load(key: str, p: DatasetParams, read) -> RawDataset:
    spec = SPECS[key]
    raw = read(fetch(spec, Path(p.archive_dir), p.download))
    raw.meta["md5"] = spec.md5
    return raw


def load_cifar10(p: DatasetParams) -> RawDataset:
    return _load("cifar10", p, read_cifar10)


def load_cifar100(p: DatasetParams) -> RawDataset:
    return _load("cifar100", p, read_cifar100)
