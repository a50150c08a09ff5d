"""Labelled / unlabelled / validation splits: the original `create_split` algorithm, and split names.

A split is named `name.seed@size-valid` (e.g. `cifar10.3@250-5000`); names are parsed, so any seed and
size work (the original only registered a few).

Selection (method reference §C.5), over the *pool* = the dataset's `train`, then `extra`, then
`unlabeled` subsets, indexed globally in that order:
1. labelled candidates are the `train` images (only the first `label_size` when given);
2. for seed != 0 each class's candidate list is shuffled with legacy `np.random.seed(seed)` in class order,
   so the same seed picks the same images as the original;
3. labels are taken one at a time from class argmax(prior - taken/max(taken)), which follows the class
   prior (25/class at 250 on CIFAR-10); `class_balance` makes it strict round-robin;
4. the remaining pool is written in a class-balanced interleave; validation is its first `nvalid` images, so
   validation images are labelled training images that were not taken as labels.
Size `all` (your own images: use every label): the `nvalid` validation images are taken first, class-balanced
and seeded, from the labelled candidates, and every other candidate is labelled; the unlabelled pool is then
the rest of the pool (`unlabeled/`, `extra`).

Fix over the original: images of unknown class (label -1: folder `unlabeled/`, STL-10 unlabeled) go after
the interleave, so they can never become validation images with fake labels.
"""

from __future__ import annotations

import hashlib
import re
from collections import deque
from dataclasses import dataclass
from pathlib import Path

import numpy as np
from tqdm import tqdm

from .errors import RealmixError
from .store import NAMES, ShardedArray, Store, StoreWriter, sha256_array

POOL_SUBSETS = ("train", "extra", "unlabeled")
SPLIT_NAME = re.compile(r"^(?P<name>[A-Za-z0-9_]+)\.(?P<seed>\d+)@(?P<size>\d+|all)-(?P<nvalid>\d+)$")
ALL = "all"  # split size: every labelled training image that is not a validation image


@dataclass(frozen=True)
class SplitName:
    name: str
    seed: int
    size: int | str  # a label count, or ALL
    nvalid: int

    def __str__(self) -> str:
        return f"{self.name}.{self.seed}@{self.size}-{self.nvalid}"

    @classmethod
    def parse(cls, text: str) -> SplitName:
        m = SPLIT_NAME.match(text)
        if not m:
            raise RealmixError(
                f"{text!r} is not a split name; expected name.seed@size-valid, e.g. cifar10.3@250-5000 "
                "(size may be `all`)"
            )
        size = m["size"] if m["size"] == ALL else int(m["size"])
        return cls(m["name"], int(m["seed"]), size, int(m["nvalid"]))


def _argmax(stats: list[float], npos: list[int], usable: list[bool]) -> int:
    """argmax_c (stats[c] - npos[c] / max(max(npos), 1)), first index on ties, over usable classes."""
    m = max(max(npos), 1)
    best, best_c = -np.inf, -1
    for c, (s, n, ok) in enumerate(zip(stats, npos, usable, strict=True)):
        v = s - n / m
        if ok and v > best:
            best, best_c = v, c
    return best_c


def _shuffle_classes(class_id: list[list[int]], seed: int) -> None:
    """Shuffle each class's candidate list in place; seed 0 keeps file order, as the original."""
    if seed != 0:
        rng = np.random.RandomState(seed)  # same stream as the original's np.random.seed(seed)
        for c in class_id:
            rng.shuffle(c)


def select_labelled(candidates: list[np.ndarray], size: int, seed: int, *, class_balance: bool = False,
                    stats: np.ndarray | None = None) -> np.ndarray:
    """Pick `size` labelled indices from per-class candidate lists; returns them sorted."""
    k = len(candidates)
    class_id = [list(map(int, c)) for c in candidates]
    total = sum(len(c) for c in class_id)
    if size > total:
        raise RealmixError(
            f"split: {size} labels requested but only {total} labelled images are available; "
            "lower split.sizes (or raise split.label_size)"
        )
    _shuffle_classes(class_id, seed)
    counts = np.array([len(c) for c in class_id], np.float64)
    if stats is None:
        stats = counts / max(counts.max(), 1)
    stats_l = [float(s) for s in stats]
    npos = [0] * k
    picked = []
    c = -1
    for _ in range(size):
        usable = [npos[j] < len(class_id[j]) for j in range(k)]
        if class_balance:  # strict round-robin, skipping exhausted classes
            c = next((c + i) % k for i in range(1, k + 1) if usable[(c + i) % k])
        else:  # follow the class prior; an exhausted class (where the original crashed) is skipped
            c = _argmax(stats_l, npos, usable)
        picked.append(class_id[c][npos[c]])
        npos[c] += 1
    return np.sort(np.array(picked, np.int64))


def unlabelled_order(labels: np.ndarray, rest: np.ndarray, stats: np.ndarray) -> np.ndarray:
    """The original class-balanced interleave of the non-labelled pool; unknown-class images go last."""
    k = len(stats)
    stats_l = [float(s) for s in stats]
    fifo: list[deque[int]] = [deque() for _ in range(k)]
    npos = [0] * k
    always = [True] * k
    out: list[int] = []
    unknown: list[int] = []
    for i, y in zip(rest.tolist(), labels[rest].tolist(), strict=True):
        if y < 0:
            unknown.append(i)
            continue
        fifo[y].append(i)
        while True:
            c = _argmax(stats_l, npos, always)
            if not fifo[c]:
                break
            out.append(fifo[c].popleft())
            npos[c] += 1
    for q in fifo:
        out.extend(q)
    return np.array(out + unknown, np.int64)


def _image_hashes(images: ShardedArray, index: np.ndarray, chunk: int = 8192) -> list[bytes]:
    out = []
    for a in range(0, len(index), chunk):
        block = images[index[a : a + chunk]]
        out += [hashlib.blake2b(img.data, digest_size=16).digest() for img in block]
    return out


def check_disjoint(parts: dict[str, list[bytes]], name: str, allow_duplicates: bool) -> dict[str, int]:
    """Count images shared between any two parts; fail unless duplicates are allowed."""
    keys = list(parts)
    sets = {k: set(v) for k, v in parts.items()}
    shared = {}
    for i, a in enumerate(keys):
        for b in keys[i + 1 :]:
            n = len(sets[a] & sets[b])
            if n:
                shared[f"{a}/{b}"] = n
    if shared and not allow_duplicates:
        what = ", ".join(f"{n} in both {pair.replace('/', ' and ')}" for pair, n in shared.items())
        raise RealmixError(
            f"split {name}: identical images found across parts ({what}); the dataset contains duplicates - "
            "deduplicate it, or set split.allow_duplicates: true to accept them"
        )
    return shared


def create_split(dataset: Store, out: str | Path, *, seed: int, size: int | str, nvalid: int,
                 label_size: int | None = None, class_balance: bool = False,
                 allow_duplicates: bool = False) -> Store:
    """Write the split `dataset.seed@size-nvalid` of a dataset store as a new store at `out`."""
    name = str(SplitName(dataset.name, seed, size, nvalid))
    present = [s for s in POOL_SUBSETS if dataset.has(s)]
    if "train" not in present or not dataset.has("test"):
        raise RealmixError(f"{dataset.path}: a dataset needs `train` and `test` subsets to be split")
    subsets = [dataset.subset(s) for s in present]
    offsets = np.cumsum([0] + [s.count for s in subsets])
    pool_images = ShardedArray([p for s in subsets for p in s.images.parts], dataset.image_shape)
    labels = np.concatenate([s.labels for s in subsets])
    k = dataset.num_classes

    n_cand = subsets[0].count if label_size is None else min(label_size, subsets[0].count)
    if label_size is not None and label_size > subsets[0].count:
        raise RealmixError(
            f"split.label_size={label_size} exceeds the {subsets[0].count} training images of {dataset.path}"
        )
    cand = np.arange(n_cand)
    candidates = [cand[labels[:n_cand] == c] for c in range(k)]
    counts = np.array([len(c) for c in candidates], np.float64)
    stats = counts / max(counts.max(), 1)
    meta_extra: dict = {}
    folds = None
    if dataset.meta.get("source") == "stl10":
        stats = np.ones(k)  # as the original: STL-10 labels are balanced by construction
        if size == 1000 and (dataset.path / "folds.json").is_file():
            folds = dataset.read_json("folds.json")
    valid_idx = None
    if folds is not None and seed < len(folds):
        label_idx = np.sort(np.array(folds[seed], np.int64))
        meta_extra["labelled_from"] = f"STL-10 fold {seed}"
    elif size == ALL:
        # validation first (class-balanced, seeded like the labels), then every other candidate is labelled
        class_id = [list(map(int, c)) for c in candidates]
        _shuffle_classes(class_id, seed)
        by_class = unlabelled_order(labels, np.array([i for c in class_id for i in c], np.int64), stats)
        if nvalid >= len(by_class):
            raise RealmixError(
                f"split {name}: split.nvalid={nvalid} leaves no labelled images: with split.sizes [all] the "
                f"validation images are taken from the {len(by_class)} labelled training images and the rest are "
                "the labels; lower split.nvalid")
        valid_idx, label_idx = by_class[:nvalid], np.sort(by_class[nvalid:])
    else:
        available = sum(len(c) for c in candidates)
        if size > available:  # checked here, where the dataset is known, so that the message can name it
            raise RealmixError(
                f"split {name}: {size} labels requested but only {available} labelled images are available in "
                f"{dataset.path}; lower split.sizes (or raise split.label_size)")
        label_idx = select_labelled(candidates, size, seed, class_balance=class_balance, stats=stats)
    meta_extra["labelled"] = len(label_idx)

    is_label = np.zeros(len(labels), bool)
    is_label[label_idx] = True
    if valid_idx is not None:
        is_label[valid_idx] = True  # not in the unlabelled pool either
        order = np.concatenate([valid_idx, unlabelled_order(labels, np.flatnonzero(~is_label), stats)])
    else:
        order = unlabelled_order(labels, np.flatnonzero(~is_label), stats)
    known = int((labels[order] >= 0).sum())
    if nvalid >= len(order):
        raise RealmixError(
            f"split {name}: split.nvalid={nvalid} must be smaller than the {len(order)} unlabelled images "
            f"left after taking {len(label_idx)} labels; lower split.nvalid"
        )
    if nvalid > known:
        raise RealmixError(
            f"split {name}: split.nvalid={nvalid} exceeds the {known} images of known class left for validation "
            f"(validation images are the labelled training images not taken as labels: {n_cand} - {size}); lower "
            "split.nvalid or split.sizes, or set split.sizes: [all] to label every training image but nvalid"
        )
    valid_idx, unlabel_idx = order[:nvalid], order[nvalid:]

    # disjointness, by index and by image content
    if len(np.intersect1d(label_idx, order)) or len(np.unique(order)) != len(order):
        raise AssertionError("split indices overlap")  # would be a bug in this module
    test = dataset.subset("test")
    hashes = {
        "label": _image_hashes(pool_images, label_idx),
        "valid": _image_hashes(pool_images, valid_idx),
        "unlabel": _image_hashes(pool_images, unlabel_idx),
        "test": _image_hashes(test.images, np.arange(test.count)),
    }
    shared = check_disjoint(hashes, name, allow_duplicates)

    indices = {"label": label_idx, "valid": valid_idx, "unlabel": unlabel_idx}
    index_json = {
        "pool": {s.name: [int(offsets[i]), int(offsets[i + 1])] for i, s in enumerate(subsets)},
        **{key: v.tolist() for key, v in indices.items()},
        "sha256": {key: sha256_array(v) for key, v in indices.items()},
    }
    meta = {
        "dataset": dataset.name,
        "source": dataset.meta.get("source"),
        "seed": seed, "size": size, "nvalid": nvalid, "label_size": label_size,
        "class_balance": class_balance, "shared_images": shared, **meta_extra,
    }
    files = dataset.read_json("files.json") if (dataset.path / "files.json").is_file() else {}
    pool_names = [n for s in subsets for n in files.get(s.name) or [f"{s.name}/{i}" for i in range(s.count)]]
    test_names = files.get("test") or [f"test/{i}" for i in range(test.count)]
    names = {key: [pool_names[i] for i in idx.tolist()] for key, idx in indices.items()} | {"test": test_names}
    with StoreWriter(out, dataset.class_names, name=name, meta=meta) as w:
        for key, idx in indices.items():
            for a in tqdm(range(0, max(len(idx), 1), w.shard_size), desc=f"{name} {key}", unit="shard",
                          disable=len(idx) < 4 * w.shard_size):
                part = idx[a : a + w.shard_size]
                w.add_shard(key, pool_images[part], labels[part])
        w.copy_subset("test", test)
        w.write_json("indices.json", index_json)
        w.write_json(NAMES, names)
    return Store.open(out)
