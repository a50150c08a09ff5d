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
from ..images import UNLABELED_DIRS, Problems, class_from_name, is_hidden, list_files, load_many
from ..params import DatasetParams
from ..store import UNKNOWN
from .raw import RawDataset


def labelled_files(split_dir: Path, problems: Problems) -> list[tuple[Path, str]]:
    """(file, class name) pairs of a train/ or test/ folder, in either supported layout; what is wrong with it
    goes into `problems` (the files that are fine are still returned, so later checks see them)."""
    if not split_dir.is_dir():
        problems.add(f"{split_dir}: folder not found; a folder dataset needs {split_dir.name}/<class>/ image folders")
        return []
    entries = [p for p in sorted(split_dir.iterdir()) if not is_hidden(p.name)]
    subdirs = [p for p in entries if p.is_dir()]
    if not entries:
        problems.add(f"{split_dir}: folder is empty; add {split_dir.name}/<class>/ folders of images")
        return []
    if subdirs:
        for stray in (p for p in entries if not p.is_dir()):
            problems.add(f"{stray}: file next to class folders; move it into {split_dir.name}/<class>/")
        pairs = []
        for d in subdirs:
            files = list_files(d, problems)
            if not files:
                problems.add(f"{d}: class folder has no images; add PNG/JPEG files or remove the folder")
            pairs += [(f, d.name) for f in files]
        return pairs
    pairs = []
    for f in list_files(split_dir, problems):
        cls = class_from_name(f)
        if cls is None:
            problems.add(f"{f}: cannot tell its class; put it in {split_dir.name}/<class>/ or name it "
                         f"<number>_<class>{f.suffix}")
            continue
        pairs.append((f, cls))
    return pairs


def unlabelled_files(root: Path, problems: Problems) -> list[Path]:
    dirs = [root / d for d in UNLABELED_DIRS if (root / d).is_dir()]
    if len(dirs) > 1:
        problems.add(f"{root}: has both unlabeled/ and unlabelled/; merge them into one")
    return [f for d in dirs for f in list_files(d, problems)]


def load(p: DatasetParams) -> RawDataset:
    """Read the folder. Every problem in it (layout, non-image or unreadable files, classes) is collected and
    reported together, capped, in one error: one run shows all that needs fixing."""
    root = Path(p.folder)
    if not root.is_dir():
        raise RealmixError(f"dataset.folder={p.folder!r}: folder not found; set it to your dataset root")
    problems = Problems(root)
    train = labelled_files(root / "train", problems)
    test = labelled_files(root / "test", problems)
    class_names = sorted({c for _, c in train})
    missing = sorted({c for _, c in test} - set(class_names))
    if missing and train:
        problems.add(
            f"{root / 'test'}: classes {missing} have test images but no training images in {root / 'train'}; "
            "add training images for them or remove them from test"
        )
    unl = unlabelled_files(root, problems)
    # decode every file before reporting, so unreadable images are listed with the layout problems
    paths = {"train": [f for f, _ in train], "test": [f for f, _ in test], "unlabeled": unl}
    decoded = {name: load_many(fs, p.img_size, p.resize, desc=name, problems=problems)
               for name, fs in paths.items() if fs}
    problems.raise_if_any()
    index = {c: i for i, c in enumerate(class_names)}

    subsets = {name: [(decoded[name], np.array([index[c] for _, c in pairs], np.int64))]
               for name, pairs in (("train", train), ("test", test))}
    if unl:
        subsets["unlabeled"] = [(decoded["unlabeled"], np.full(len(unl), UNKNOWN, np.int64))]
    files = {name: [str(f.relative_to(root)) for f in fs] for name, fs in paths.items()}
    return RawDataset(
        class_names=class_names,
        subsets=subsets,
        meta={"folder": str(root), "img_size": p.img_size, "resize": p.resize},
        extras={"files.json": files},
    )
