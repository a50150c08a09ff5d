"""SVHN (cropped digits, format 2) from the official MATLAB v5 files.

`train_32x32.mat` and `test_32x32.mat` (and `extra_32x32.mat` when `dataset.svhn_extra` is set, as the
`extra` subset) each hold `X`, a 32 x 32 x 3 x N uint8 array, and `y`, N x 1 labels in 1..10 where 10
stands for the digit 0.

Labels: we map 10 -> 0, so a label is the digit itself and class i is named "i". The original TF code
subtracted 1 instead (digits 1..9 became classes 0..8 and the digit 0 became class 9); numbers per
class index therefore differ from the original, the images and their digits do not.

As in the RealMix README, plain "svhn" means train without extra (MixMatch's `svhn_noextra`).
"""

from __future__ import annotations

import zlib
from collections.abc import Iterator
from pathlib import Path

import numpy as np

from ..errors import RealmixError
from ..params import DatasetParams
from .archive import ArchiveSpec, Lazy, fetch
from .raw import RawDataset

CHUNK = 16_384  # images transposed and handed to the store writer at a time (~50 MB)
CLASS_NAMES = [str(d) for d in range(10)]
_URL = "http://ufldl.stanford.edu/housenumbers/"

# md5 values from torchvision 0.28.0 (torchvision/datasets/svhn.py, `SVHN.split_list`), which pins the
# same official files; the dataset page itself publishes no checksums.
SPECS: dict[str, ArchiveSpec] = {
    "train": ArchiveSpec("train_32x32.mat", _URL + "train_32x32.mat", "e26dedcc434d2e4c54c9b2d4a06d8373"),
    "test": ArchiveSpec("test_32x32.mat", _URL + "test_32x32.mat", "eb5a983be6a315427106f1b164d9cef3"),
    "extra": ArchiveSpec("extra_32x32.mat", _URL + "extra_32x32.mat", "a93ce644f1a588dc4d68dda5feec44a7"),
}


def _bad(path: Path, why: str) -> RealmixError:
    return RealmixError(
        f"{path}: {why}; the file is truncated, corrupt or not the official SVHN file: "
        "delete it and download it again"
    )


def read_mat(path: Path) -> tuple[np.ndarray, np.ndarray]:
    """Load one SVHN .mat: (X as 32 x 32 x 3 x N uint8, labels as N int64 digits 0..9)."""
    from scipy.io import loadmat
    from scipy.io.matlab import MatReadError

    path = Path(path)
    try:
        mat = loadmat(path, variable_names=["X", "y"])
    except (MatReadError, ValueError, TypeError, OSError, EOFError, NotImplementedError, zlib.error) as e:
        reason = " ".join(str(e).split()) or type(e).__name__
        raise _bad(path, f"not a readable MATLAB v5 file ({reason})") from e
    if "X" not in mat or "y" not in mat:
        raise _bad(path, "has no X and y variables")
    x, y = mat["X"], np.asarray(mat["y"])
    if x.dtype != np.uint8 or x.ndim != 4 or x.shape[:3] != (32, 32, 3):
        raise _bad(path, f"X is {x.dtype} {x.shape}, expected uint8 32 x 32 x 3 x N")
    if y.size != x.shape[3]:
        raise _bad(path, f"{x.shape[3]} images but {y.size} labels")
    labels = y.reshape(-1).astype(np.int64)
    if labels.size and (labels.min() < 1 or labels.max() > 10):
        raise _bad(path, f"labels range over {labels.min()}..{labels.max()}, expected 1..10")
    labels[labels == 10] = 0
    return x, labels


def iter_mat(path: Path, chunk: int | None = None) -> Iterator[tuple[np.ndarray, np.ndarray]]:
    """Stream one .mat as HWC chunks; only one transposed chunk exists beside the loaded array."""
    chunk = chunk or CHUNK
    x, labels = read_mat(path)
    for start in range(0, len(labels), chunk):
        stop = start + chunk
        yield np.ascontiguousarray(x[..., start:stop].transpose(3, 0, 1, 2)), labels[start:stop]


def read_svhn(paths: dict[str, Path]) -> RawDataset:
    """Subsets from already fetched .mat files, keyed by subset name (no checksum check here)."""
    return RawDataset(
        class_names=list(CLASS_NAMES),
        # Lazy: each file (extra is 1.6 GB decoded) is loaded only while its subset is written.
        subsets={s: Lazy(lambda path=Path(path): iter_mat(path)) for s, path in paths.items()},
        meta={"upstream": {s: Path(path).name for s, path in paths.items()}, "labels": "digit (10 -> 0)"},
    )


def load(p: DatasetParams) -> RawDataset:
    subsets = ["train", "test"] + (["extra"] if p.svhn_extra else [])
    archive_dir = Path(p.archive_dir)
    # Fetch (and verify) everything first, so a missing file fails before anything is written.
    raw = read_svhn({s: fetch(SPECS[s], archive_dir, p.download) for s in subsets})
    raw.meta["md5"] = {s: SPECS[s].md5 for s in subsets}
    return raw
