"""The one on-disk dataset format.

A *store* is a directory holding one dataset:

    manifest.json                 format, name, class names, image shape, per-subset counts and hashes
    <subset>-<k>.images.npy       uint8 images, N x H x W x C (shard k of that subset)
    <subset>-<k>.labels.npy       int64 labels, N (-1 = unknown, e.g. truly unlabelled images)
    *.json                        small extras a stage adds (class mapping, split indices, ...)

Subsets are named parts of a dataset (`train`, `test`, `unlabeled`, or after a split `label`, `unlabel`,
`valid`, `test`). Large subsets are written in several shards so that writers stream with bounded
memory; readers memory-map the shards. The whole directory is written to a temporary sibling and renamed
into place, so a killed writer never leaves a half store behind.

A pre-augmented split may instead be *virtual* (format `realmix-virtual-pool/1`): a manifest holding the recipe of
its unlabelled pool and the path and hashes of its source split, whose files it reads; `Store.open` returns it as
a store like any other (realmix/preaugment.py).
"""

from __future__ import annotations

import hashlib
import json
import os
import shutil
from collections.abc import Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from . import atomic
from .errors import RealmixError

FORMAT = "realmix-store/1"
VIRTUAL_FORMAT = "realmix-virtual-pool/1"  # a pre-augmented split stored as its recipe (realmix/preaugment.py)
MANIFEST = "manifest.json"
CLASS_MAPPING = "class_mapping.json"
NAMES = "names.json"  # per subset, where each row came from (Store.row_names)
UNKNOWN = -1  # label of an image whose class is not known
UNKNOWN_NAME = "<unknown>"


def sha256_array(a: np.ndarray) -> str:
    return hashlib.sha256(np.ascontiguousarray(a).data).hexdigest()


def write_json(path: Path, obj: Any) -> None:
    atomic.write_text(path, json.dumps(obj, indent=2, sort_keys=True) + "\n")


class StoreWriter:
    """Writes a store into a temporary directory; `commit()` renames it into place.

    Use as a context manager: leaving the block normally commits, an exception discards everything.
    """

    def __init__(
        self,
        path: str | os.PathLike,
        class_names: Sequence[str],
        *,
        name: str | None = None,
        meta: dict[str, Any] | None = None,
        shard_size: int = 1 << 16,
    ):
        self.path = Path(path)
        self.class_names = [str(c) for c in class_names]
        if len(set(self.class_names)) != len(self.class_names):
            raise ValueError(f"duplicate class names: {self.class_names}")
        self.name = name or self.path.name
        self.meta = dict(meta or {})
        self.shard_size = int(shard_size)
        self._subsets: dict[str, dict[str, Any]] = {}
        self._image_shape: list[int] | None = None
        self._ctx = atomic.atomic_path(self.path, directory=True)
        self.tmp = self._ctx.__enter__()
        self._done = False

    # -- writing -----------------------------------------------------------------------------------
    def add(self, subset: str, images: np.ndarray, labels: np.ndarray) -> None:
        """Append images/labels to `subset`, cut into shards of at most `shard_size` images."""
        self._subset(subset)
        if len(images) == 0:
            self._check(images, labels)
            return
        for start in range(0, len(images), self.shard_size):
            self.add_shard(subset, images[start : start + self.shard_size], labels[start : start + self.shard_size])

    def add_shard(self, subset: str, images: np.ndarray, labels: np.ndarray) -> None:
        """Write one shard of `subset` as it is (streaming writers call this once per chunk)."""
        images, labels = self._check(images, labels)
        entry = self._subset(subset)
        k = len(entry["shards"])
        stem = f"{subset}-{k:05d}"
        np.save(self.tmp / f"{stem}.images.npy", images, allow_pickle=False)
        np.save(self.tmp / f"{stem}.labels.npy", labels, allow_pickle=False)
        entry["shards"].append(
            {
                "images": f"{stem}.images.npy",
                "labels": f"{stem}.labels.npy",
                "count": len(images),
                "sha256_images": sha256_array(images),
                "sha256_labels": sha256_array(labels),
            }
        )
        entry["count"] += len(images)
        entry["_counts"] += np.bincount(labels + 1, minlength=len(self.class_names) + 1)

    def copy_subset(self, subset: str, source: Subset) -> None:
        """Copy a subset of another store verbatim (shard files and hashes are reused)."""
        entry = self._subset(subset)
        for k, shard in enumerate(source.shards):
            stem = f"{subset}-{k:05d}"
            self._check_shape(source.image_shape)
            shutil.copyfile(source.store.path / shard["images"], self.tmp / f"{stem}.images.npy")
            shutil.copyfile(source.store.path / shard["labels"], self.tmp / f"{stem}.labels.npy")
            entry["shards"].append(dict(shard, images=f"{stem}.images.npy", labels=f"{stem}.labels.npy"))
            entry["count"] += shard["count"]
        labels = source.labels
        entry["_counts"] += np.bincount(labels + 1, minlength=len(self.class_names) + 1)

    def write_json(self, filename: str, obj: Any) -> None:
        if filename in (MANIFEST, CLASS_MAPPING):
            raise ValueError(f"{filename} is written by commit()")
        write_json(self.tmp / filename, obj)

    def commit(self) -> Path:
        if self._image_shape is None:
            raise RealmixError(f"{self.path}: nothing to write (every subset is empty)")
        subsets = {}
        for name, entry in self._subsets.items():
            counts = entry.pop("_counts")
            by_class = {c: int(n) for c, n in zip(self.class_names, counts[1:], strict=True)}
            if counts[0]:
                by_class[UNKNOWN_NAME] = int(counts[0])
            subsets[name] = dict(entry, class_counts=by_class)
        manifest = {
            "format": FORMAT,
            "name": self.name,
            "class_names": self.class_names,
            "image_shape": self._image_shape,
            "meta": self.meta,
            "subsets": subsets,
        }
        write_json(self.tmp / MANIFEST, manifest)
        # the seed's class-mapping form, {"0": "cat", ...}, beside every store (e.g. for per-class logging)
        write_json(self.tmp / CLASS_MAPPING, {str(i): c for i, c in enumerate(self.class_names)})
        self._done = True
        self._ctx.__exit__(None, None, None)
        return self.path

    def abort(self) -> None:
        if not self._done:
            self._done = True
            try:
                self._ctx.__exit__(RuntimeError, RuntimeError("aborted"), None)
            except RuntimeError:
                pass

    def __enter__(self) -> StoreWriter:
        return self

    def __exit__(self, exc_type, exc, tb) -> None:
        if exc_type is None:
            try:
                self.commit()
            except BaseException as e:  # e.g. the disk filled up while writing the manifest
                self.abort()
                exc = e
                if not atomic.is_disk_full(e):
                    raise
        else:
            self.abort()
        if atomic.is_disk_full(exc):
            raise atomic.disk_full(self.path, exc) from exc

    # -- checks ------------------------------------------------------------------------------------
    def _subset(self, subset: str) -> dict[str, Any]:
        if not subset or not subset.replace("_", "").isalnum():
            raise ValueError(f"bad subset name {subset!r}")
        return self._subsets.setdefault(
            subset, {"count": 0, "shards": [], "_counts": np.zeros(len(self.class_names) + 1, np.int64)}
        )

    def _check_shape(self, shape: Sequence[int]) -> None:
        shape = [int(s) for s in shape]
        if self._image_shape is None:
            self._image_shape = shape
        elif shape != self._image_shape:
            raise ValueError(f"image shape {shape} differs from the store's {self._image_shape}")

    def _check(self, images: np.ndarray, labels: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        images = np.ascontiguousarray(images)
        labels = np.ascontiguousarray(labels, dtype=np.int64)
        if images.dtype != np.uint8 or images.ndim != 4 or images.shape[-1] not in (1, 3):
            raise ValueError(f"images must be uint8 N x H x W x C (C=1 or 3), got {images.dtype} {images.shape}")
        if labels.shape != (len(images),):
            raise ValueError(f"{len(images)} images but labels of shape {labels.shape}")
        if len(labels) and (labels.min() < UNKNOWN or labels.max() >= len(self.class_names)):
            raise ValueError(f"labels must lie in [-1, {len(self.class_names) - 1}]")
        if len(images):
            self._check_shape(images.shape[1:])
        return images, labels


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
        if manifest.get("format") == VIRTUAL_FORMAT:
            from .preaugment import VirtualStore  # the pool's code lives with the stage that writes it

            return VirtualStore.from_manifest(path, manifest)
        if manifest.get("format") != FORMAT:
            raise RealmixError(f"{mpath}: unknown store format {manifest.get('format')!r} (expected {FORMAT})")
        return cls(path, manifest)

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
            from .preaugment import recipe_identity

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
