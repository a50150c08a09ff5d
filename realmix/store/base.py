"""The one on-disk dataset format: reading it (`Store`), and the table of formats `Store.open` knows.

A *store* is a directory holding one dataset:

    manifest.json                 format, name, class names, image shape, per-subset counts and hashes
    <subset>-<k>.images.npy       uint8 images, N x H x W x C (shard k of that subset)
    <subset>-<k>.labels.npy       int64 labels, N (-1 = unknown, e.g. truly unlabelled images)
    *.json                        small extras a stage adds (class mapping, split indices, ...)

Subsets are named parts of a dataset (`train`, `test`, `unlabeled`, or after a split `label`, `unlabel`,
`valid`, `test`). Large subsets are written in several shards so that writers stream with bounded
memory; readers memory-map the shards. The whole directory is written to a temporary sibling and renamed
into place, so a killed writer never leaves a half store behind (realmix/store/writer.py).

A manifest's `format` picks how its directory is read: `OPENERS` maps each format to its opener. This module
registers its own; a pre-augmented split may instead be *virtual* (format `realmix-virtual-pool/1`, registered by
realmix/store/virtual.py): a manifest holding the recipe of its unlabelled pool and the path and hashes of its
source split, whose files it reads. `Store.open` returns either as a store like any other.
"""

from __future__ import annotations

import hashlib
import json
import os
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from .. import atomic
from ..errors import RealmixError

FORMAT = "realmix-store/1"
MANIFEST = "manifest.json"
CLASS_MAPPING = "class_mapping.json"
NAMES = "names.json"  # per subset, where each row came from (Store.row_names)
UNKNOWN = -1  # label of an image whose class is not known
UNKNOWN_NAME = "<unknown>"
_STORAGE_KEYS = ("storage", "shard_size")  # how a pre-augmented pool is stored, not what it holds


def sha256_array(a: np.ndarray) -> str:
    return hashlib.sha256(np.ascontiguousarray(a).data).hexdigest()


def write_json(path: Path, obj: Any) -> None:
    atomic.write_text(path, json.dumps(obj, indent=2, sort_keys=True) + "\n")


def recipe_identity(recipe: dict[str, Any]) -> dict[str, Any]:
    """What decides a pre-augmented pool's images: its recipe (manifest meta `preaugment`) without how it is
    stored."""
    return {k: v for k, v in recipe.items() if k not in _STORAGE_KEYS}


class ShardedArray:
    """Read-only, memory-mapped view over the image shards of a subset, indexable like an array."""

    def __init__(self, parts: Sequence[np.ndarray], item_shape: Sequence[int]):
        self.parts = list(parts)
        self.item_shape = tuple(item_shape)
        self._starts = np.cumsum([0] + [len(p) for p in self.parts])

    def __len__(self) -> int:
        return int(self._starts[-1])

    @property
    def shape(self) -> tuple[int, ...]:
        return (len(self), *self.item_shape)

    dtype = np.dtype(np.uint8)

    def __array__(self, dtype=None, copy=None):
        out = self[:]
        return out.astype(dtype) if dtype is not None else out

    def __getitem__(self, index) -> np.ndarray:
        if len(self.parts) == 1:
            return np.asarray(self.parts[0][index])
        if isinstance(index, slice):
            index = np.arange(len(self))[index]
        if np.isscalar(index):
            i = int(index) + (len(self) if int(index) < 0 else 0)
            k = int(np.searchsorted(self._starts, i, side="right") - 1)
            return np.asarray(self.parts[k][i - self._starts[k]])
        index = np.asarray(index, dtype=np.int64)
        index = np.where(index < 0, index + len(self), index)
        if len(index) and (index.min() < 0 or index.max() >= len(self)):
            raise IndexError("index out of range")
        out = np.empty((len(index), *self.item_shape), np.uint8)
        shard_of = np.searchsorted(self._starts, index, side="right") - 1
        for k in np.unique(shard_of):
            sel = shard_of == k
            out[sel] = self.parts[k][index[sel] - self._starts[k]]
        return out


@dataclass
class Subset:
    store: Store
    name: str
    count: int
    shards: list[dict[str, Any]]
    class_counts: dict[str, int]

    @property
    def image_shape(self) -> tuple[int, ...]:
        return tuple(self.store.image_shape)

    @property
    def images(self) -> ShardedArray:
        return ShardedArray([self._load(s["images"]) for s in self.shards], self.image_shape)

    @property
    def labels(self) -> np.ndarray:
        if not self.shards:
            return np.zeros(0, np.int64)
        return np.concatenate([self._load(s["labels"]) for s in self.shards])

    def iter_shards(self) -> Iterator[tuple[np.ndarray, np.ndarray]]:
        for s in self.shards:
            yield self._load(s["images"]), np.asarray(self._load(s["labels"]))

    def _load(self, filename: str) -> np.ndarray:
        path = self.store.path / filename
        try:
            return np.load(path, mmap_mode="r", allow_pickle=False)
        except (OSError, ValueError) as e:
            raise RealmixError(f"{path}: unreadable store file ({e}); rerun the stage that wrote it") from e


class Store:
    """A dataset store opened for reading (see the module docstring)."""

    def __init__(self, path: Path, manifest: dict[str, Any]):
        self.path = path
        self.manifest = manifest

    @classmethod
    def open(cls, path: str | os.PathLike) -> Store:
        path = Path(path)
        mpath = path / MANIFEST
        if not mpath.is_file():
            raise RealmixError(f"{path}: not a dataset store (no {MANIFEST}); run the stage that produces it first")
        try:
            manifest = json.loads(mpath.read_text())
        except (OSError, ValueError) as e:
            raise RealmixError(f"{mpath}: unreadable manifest ({e}); rerun the stage that wrote it") from e
        opener = OPENERS.get(manifest.get("format"))
        if opener is None:
            raise RealmixError(f"{mpath}: unknown store format {manifest.get('format')!r} (expected one of: "
                               f"{', '.join(OPENERS)})")
        return opener(path, manifest)

    @property
    def name(self) -> str:
        return self.manifest["name"]

    @property
    def class_names(self) -> list[str]:
        return list(self.manifest["class_names"])

    @property
    def num_classes(self) -> int:
        return len(self.manifest["class_names"])

    @property
    def image_shape(self) -> list[int]:
        return list(self.manifest["image_shape"])

    @property
    def meta(self) -> dict[str, Any]:
        return dict(self.manifest.get("meta", {}))

    @property
    def subsets(self) -> list[str]:
        return list(self.manifest["subsets"])

    def has(self, subset: str) -> bool:
        return subset in self.manifest["subsets"]

    def subset(self, name: str) -> Subset:
        if name not in self.manifest["subsets"]:
            raise RealmixError(f"{self.path}: has no subset {name!r} (it has {', '.join(self.subsets)})")
        e = self.manifest["subsets"][name]
        return Subset(self, name, int(e["count"]), list(e["shards"]), dict(e["class_counts"]))

    def digest(self) -> str:
        """SHA-256 of what the store holds (class names, image shape, every shard's count and hashes), not of
        how its files are named or cut: the identity a derived store records of its source."""
        subsets = {name: [(s["count"], s["sha256_images"], s["sha256_labels"]) for s in e["shards"]]
                   for name, e in self.manifest["subsets"].items()}
        content = {"class_names": self.class_names, "image_shape": self.image_shape, "subsets": subsets}
        return hashlib.sha256(json.dumps(content, sort_keys=True).encode()).hexdigest()

    def data_id(self) -> str:
        """What a training run records as its data: the manifest's hash; for a pre-augmented split, the hash of
        its recipe (which names its source's digest), so a virtual and a materialized pool of one recipe --
        the same images, bit for bit -- are the same run data."""
        recipe = self.meta.get("preaugment")
        if isinstance(recipe, dict) and "draws" in recipe:  # written since the pool's draws are hashed
            content: Any = {"preaugment": recipe_identity(recipe), "class_names": self.class_names,
                            "image_shape": self.image_shape}
        else:
            content = self.manifest
        return hashlib.sha256(json.dumps(content, sort_keys=True).encode()).hexdigest()

    def summary(self) -> str:
        """One line: path, class count, image shape and the size of each subset."""
        parts = ", ".join(f"{s} {self.manifest['subsets'][s]['count']}" for s in self.subsets)
        shape = "x".join(map(str, self.image_shape))
        return f"{self.path}: {self.num_classes} classes, {shape}, {parts}"

    def read_json(self, filename: str) -> Any:
        path = self.path / filename
        try:
            return json.loads(path.read_text())
        except (OSError, ValueError) as e:
            raise RealmixError(f"{path}: missing or unreadable ({e}); rerun the stage that wrote it") from e

    def row_names(self, subset: str) -> list[str] | None:
        """What each row of `subset` was before it came into this store: the user's file path (relative to the
        image folder) for a folder dataset, else `<dataset subset>/<index>` (e.g. `train/4821`); from the
        store's names.json (written by split and carried by mismatch and preaugment), None when it has none.
        A pre-augmented store lists its pool's *source* images (its `unlabel` rows in source order)."""
        if not (self.path / NAMES).is_file():
            return None
        names = self.read_json(NAMES).get(subset)
        return None if names is None else list(names)

    def verify(self) -> None:
        """Re-hash every shard against the manifest; raise on the first mismatch."""
        for name in self.subsets:
            for s in self.subset(name).shards:
                for key in ("images", "labels"):
                    a = np.load(self.path / s[key], mmap_mode="r", allow_pickle=False)
                    if sha256_array(a) != s[f"sha256_{key}"]:
                        raise RealmixError(f"{self.path / s[key]}: content does not match the manifest hash")


def open_source(path: Path, manifest: dict[str, Any], *, changed: str, rerun: str) -> Store:
    """The source split a derived store (a virtual pool, a filtered split) reads in place: its manifest's
    `source` path (relative to `path`), refused in one line when unreadable or when its content hash differs.
    `changed` completes "changed since ..." and `rerun` names the stage that rewrites the derived store."""
    info = manifest.get("source") or {}
    src_path = Path(os.path.normpath(path / info.get("path", "?")))
    try:
        source = Store.open(src_path)
    except RealmixError as e:
        raise RealmixError(f"{path}: its source split {src_path} is not readable ({e}); run the stage that "
                           f"writes it (e.g. dvc repro), or rerun {rerun}") from e
    if source.digest() != info.get("sha256"):
        raise RealmixError(f"{path}: its source split {src_path} changed since {changed}; rerun {rerun} "
                           "(dvc repro does)")
    return source


# manifest format -> opener of its directory; every format module adds its own (realmix/store/virtual.py)
OPENERS: dict[str, Callable[[Path, dict[str, Any]], Store]] = {FORMAT: Store}
