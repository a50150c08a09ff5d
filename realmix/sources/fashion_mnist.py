"""Fashion-MNIST (Zalando Research) from the four official gzipped IDX files, at native size.

`train-images-idx3-ubyte.gz` / `train-labels-idx1-ubyte.gz` are the `train` subset (60,000, file order) and
`t10k-images-idx3-ubyte.gz` / `t10k-labels-idx1-ubyte.gz` the `test` subset (10,000). The store keeps the
images as they are, 28 x 28 x 1 uint8 (one channel, no padding or resizing; `dataset.img_size` is ignored):
the model takes the store's channel count and size.

IDX layout (big-endian): magic 0x00000803 for images (unsigned bytes, 3 dims) followed by the uint32 dims
count, rows, cols; magic 0x00000801 for labels (1 dim: count); then the uint8 data, row-major.

Two sources are accepted for each file: the official one (its published md5), or Debian's package
`dataset-fashion-mnist` (/usr/share/datasets/fashion-mnist/), whose files are the same data re-compressed, so
only the sha256 of the decompressed contents matches (`ArchiveSpec.content_sha256`). The store's meta records
which check each file passed.
"""

from __future__ import annotations

import math
from pathlib import Path

import numpy as np

from ..errors import RealmixError
from ..params import DatasetParams
from .archive import ArchiveSpec, DownloadError, fetch_contents, gunzip
from .raw import RawDataset

BASE_URL = "http://fashion-mnist.s3-website.eu-central-1.amazonaws.com/"
DEBIAN_DIR = "/usr/share/datasets/fashion-mnist"
SIDE = 28
# The upstream names (T-shirt/top, Ankle boot) made safe for file and folder names.
CLASS_NAMES = ["T-shirt_top", "Trouser", "Pullover", "Dress", "Coat", "Sandal", "Shirt", "Sneaker", "Bag",
               "Ankle_boot"]
IMAGES_MAGIC = 0x00000803  # unsigned bytes (0x08), 3 dims
LABELS_MAGIC = 0x00000801  # unsigned bytes (0x08), 1 dim


def _spec(filename: str, md5: str, content_sha256: str) -> ArchiveSpec:
    return ArchiveSpec(filename, BASE_URL + filename, md5, content_sha256)


# md5: the official .gz files (the values published in the Fashion-MNIST README); content_sha256: their
# decompressed contents (the same for the official files and Debian's re-compressed copies).
SPECS: dict[str, ArchiveSpec] = {
    "train_images": _spec("train-images-idx3-ubyte.gz", "8d4fb7e6c68d591d4c3dfef9ec88bf0d",
                          "c59f468a2f672dc815687fe0f83887768d799fd8a3f3276145d20f83aa44d888"),
    "train_labels": _spec("train-labels-idx1-ubyte.gz", "25c81989df183df01b3e8a0aad5dffbe",
                          "bad3541b69d912435c50bb6ba87bec294ff4f6a2e1246121d8633921760443d9"),
    "test_images": _spec("t10k-images-idx3-ubyte.gz", "bef4ecab320f06d8554ea6380940ec79",
                         "5b4141f0afbad91edebe8549f8fcffe087ea10ca49f1dbef5c9a5cd8815ce37b"),
    "test_labels": _spec("t10k-labels-idx1-ubyte.gz", "bb300cfdad3c16e7a12a480ee83cd310",
                         "0402a96d92fd2663957122ceb108a494c5af83dab82d92729df917d7dec38c34"),
}
SUBSETS = {"train": ("train_images", "train_labels"), "test": ("test_images", "test_labels")}


def _bad(path: Path, why: str) -> RealmixError:
    return RealmixError(
        f"{path}: {why}; it is truncated, corrupt or not the official Fashion-MNIST file: delete it and get the "
        f"official file again (run again to download it, or `apt-get install --reinstall dataset-fashion-mnist` "
        f"for the Debian copy)"
    )


def parse_idx(path: Path, data: bytes, magic: int) -> np.ndarray:
    """One decompressed IDX file of unsigned bytes as an array of its dims (no checksum check here)."""
    ndim = magic & 0xFF
    kind = "images" if magic == IMAGES_MAGIC else "labels"
    if len(data) < 4:
        raise _bad(path, f"{len(data)} bytes, too short for an IDX header")
    got = int.from_bytes(data[:4], "big")
    if got >> 8 != magic >> 8:
        raise _bad(path, f"magic number {got:#010x} is not {magic:#010x} (IDX {kind} of unsigned bytes)")
    if got & 0xFF != ndim:
        raise _bad(path, f"IDX header declares {got & 0xFF} dimension(s), expected {ndim} for {kind}")
    header = 4 + 4 * ndim
    if len(data) < header:
        raise _bad(path, f"{len(data)} bytes, shorter than its {header}-byte IDX header")
    dims = tuple(int.from_bytes(data[4 + 4 * i : 8 + 4 * i], "big") for i in range(ndim))
    if dims[1:] != (SIDE, SIDE)[: ndim - 1]:
        raise _bad(path, f"images are {dims[1]} x {dims[2]}, expected {SIDE} x {SIDE}")
    want = math.prod(dims)
    have = len(data) - header
    if have < want:
        raise _bad(path, f"ends early: {have} data bytes for {dims[0]} {kind}, expected {want}")
    if have > want:
        raise _bad(path, f"{have - want} trailing bytes after the {dims[0]} {kind} its header declares")
    return np.frombuffer(data, np.uint8, offset=header).reshape(dims)


def read_subset(images_path: Path, labels_path: Path, images_data: bytes, labels_data: bytes
                ) -> tuple[np.ndarray, np.ndarray]:
    """(N x 28 x 28 x 1 uint8, N int64 labels 0..9) from the decompressed IDX pair (no checksum check here)."""
    images = parse_idx(images_path, images_data, IMAGES_MAGIC)
    labels = parse_idx(labels_path, labels_data, LABELS_MAGIC)
    if len(images) != len(labels):
        raise _bad(labels_path, f"{len(labels)} labels but {images_path.name} holds {len(images)} images")
    if len(labels) and labels.max() >= len(CLASS_NAMES):
        i = int(np.argmax(labels >= len(CLASS_NAMES)))
        raise _bad(labels_path, f"label {int(labels[i])} of image {i} is outside 0..{len(CLASS_NAMES) - 1}")
    return images[..., None], labels.astype(np.int64)


def _unavailable(archive_dir: Path, missing: list[str], why: str) -> RealmixError:
    names = ", ".join(s.filename for s in SPECS.values())
    return RealmixError(
        f"{archive_dir}: Fashion-MNIST needs {names}; missing: {', '.join(missing)} ({why}); get them either with "
        f"`apt-get install dataset-fashion-mnist` and `dataset.archive_dir: {DEBIAN_DIR}` in params.yaml, or by "
        f"downloading them from {BASE_URL} (e.g. {SPECS['train_images'].url}) into {archive_dir}"
    )


def load(p: DatasetParams) -> RawDataset:
    archive_dir = Path(p.archive_dir)
    missing = [s.filename for s in SPECS.values() if not (archive_dir / s.filename).is_file()]
    if missing and not p.download:
        raise _unavailable(archive_dir, missing, "dataset.download is false")
    # Fetch and verify all four files before parsing any, so a missing or wrong one fails before anything else.
    fetched: dict[str, tuple[Path, bytes | None]] = {}
    for key, spec in SPECS.items():
        try:
            fetched[key] = fetch_contents(spec, archive_dir, p.download)
        except DownloadError as e:
            why = f"could not download {spec.url}: {e.reason}; run again to resume"
            raise _unavailable(archive_dir, missing, why) from e
    verified = {
        SPECS[k].filename: f"content sha256 {SPECS[k].content_sha256}" if data is not None else f"md5 {SPECS[k].md5}"
        for k, (_, data) in fetched.items()
    }
    # Each file is decompressed once: a re-compressed copy already was, by its content check.
    contents = {k: data if data is not None else gunzip(path) for k, (path, data) in fetched.items()}
    subsets = {}
    for subset, (ki, kl) in SUBSETS.items():
        subsets[subset] = [read_subset(fetched[ki][0], fetched[kl][0], contents[ki], contents[kl])]
    return RawDataset(
        class_names=list(CLASS_NAMES),
        subsets=subsets,
        meta={"upstream": {k: s.filename for k, s in SPECS.items()}, "verified": verified,
              "labels": "0 T-shirt/top, 1 Trouser, 2 Pullover, 3 Dress, 4 Coat, 5 Sandal, 6 Shirt, 7 Sneaker, "
                        "8 Bag, 9 Ankle boot"},
    )
