"""Writing a store (the format: realmix/store/base.py): shards into a temporary directory, renamed into place
on commit."""

from __future__ import annotations

import os
import shutil
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np

from .. import atomic
from ..errors import RealmixError
from .base import CLASS_MAPPING, FORMAT, MANIFEST, UNKNOWN, UNKNOWN_NAME, Subset, sha256_array, write_json


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
