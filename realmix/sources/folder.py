"""A custom dataset from a folder of images, in the seed's layout:

    <root>/train/<class>/*.png|jpg     labelled training images (or flat `train/{n}_{class}.png` names,
    <root>/test/<class>/*.png|jpg       as written by the rename stage)
    <root>/unlabeled/**/*.png|jpg       optional unlabelled images (also accepted: `unlabelled/`)

Images of any size and mode are converted to RGB and resized to `img_size` (see `realmix.images.fit`).
Class names are the sorted class folder names of `train`; every test class must exist in train.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np

from ..errors import RealmixError
from ..images import UNLABELED_DIRS, class_from_name, is_hidden, list_files, load_many
from ..params import DatasetParams
from ..store import UNKNOWN
from . import RawDataset


def labelled_files(split_dir: Path) -> list[tuple[Path, str]]:
    """(file, class name) pairs of a train/ or test/ folder, in either supported layout."""
    if not split_dir.is_dir():
        raise RealmixError(
            f"{split_dir}: folder not found; a folder dataset needs {split_dir.name}/<class>/ image folders"
        )
    entries = [p for p in sorted(split_dir.iterdir()) if not is_hidden(p.name)]
    subdirs = [p for p in entries if p.is_dir()]
    if not entries:
        raise RealmixError(f"{split_dir}: folder is empty; add {split_dir.name}/<class>/ folders of images")
    if subdirs:
        stray = [p for p in entries if not p.is_dir()]
        if stray:
            raise RealmixError(f"{stray[0]}: file next to class folders; move it into {split_dir.name}/<class>/")
        pairs = []
        for d in subdirs:
            files = list_files(d)
            if not files:
                raise RealmixError(f"{d}: class folder has no images; add PNG/JPEG files or remove the folder")
            pairs += [(f, d.name) for f in files]
        return pairs
    pairs = []
    for f in list_files(split_dir):
        cls = class_from_name(f)
        if cls is None:
            raise RealmixError(
                f"{f}: cannot tell its class; put it in {split_dir.name}/<class>/ or name it <number>_<class>"
                f"{f.suffix}"
            )
        pairs.append((f, cls))
    return pairs


def unlabelled_files(root: Path) -> list[Path]:
    dirs = [root / d for d in UNLABELED_DIRS if (root / d).is_dir()]
    if len(dirs) > 1:
        raise RealmixError(f"{root}: has both unlabeled/ and unlabelled/; merge them into one")
    return list_files(dirs[0]) if dirs else []


def load(p: DatasetParams) -> RawDataset:
    root = Path(p.folder)
    if not root.is_dir():
        raise RealmixError(f"dataset.folder={p.folder!r}: folder not found; set it to your dataset root")
    train = labelled_files(root / "train")
    test = labelled_files(root / "test")
    class_names = sorted({c for _, c in train})
    missing = sorted({c for _, c in test} - set(class_names))
    if missing:
        raise RealmixError(
            f"{root / 'test'}: classes {missing} have test images but no training images in {root / 'train'}; "
            "add training images for them or remove them from test"
        )
    index = {c: i for i, c in enumerate(class_names)}
    unl = unlabelled_files(root)

    def subset(pairs: list[tuple[Path, str]], desc: str):
        images = load_many([f for f, _ in pairs], p.img_size, p.resize, desc=desc)
        return [(images, np.array([index[c] for _, c in pairs], np.int64))]

    subsets = {"train": subset(train, "train"), "test": subset(test, "test")}
    if unl:
        images = load_many(unl, p.img_size, p.resize, desc="unlabeled")
        subsets["unlabeled"] = [(images, np.full(len(unl), UNKNOWN, np.int64))]
    files = {
        "train": [str(f.relative_to(root)) for f, _ in train],
        "test": [str(f.relative_to(root)) for f, _ in test],
        "unlabeled": [str(f.relative_to(root)) for f in unl],
    }
    return RawDataset(
        class_names=class_names,
        subsets=subsets,
        meta={"folder": str(root), "img_size": p.img_size, "resize": p.resize},
        extras={"files.json": files},
    )
