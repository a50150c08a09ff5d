"""The filtered split (format `realmix-filtered-split/1`): a split whose unlabelled pool is a subset of its source
split's, stored as the kept positions.

Written by realmix/pool_filter.py (the `filter` stage): a finished run scores every unlabelled image of its split
and the images that look in-class are kept. The directory holds

    manifest.json       format, name, classes, the source split (path relative to here, content hash), the kept
                        pool's entry, meta["filter"] (teacher, score, cut, counts)
    kept.npy            int64 positions of the kept images in the source's `unlabel` subset, ascending

and reads everything else (labelled, validation and test images, names) from the source split in place, like the
virtual pre-augmented pool (realmix/store/virtual.py), so a filtered split of 23,500 images costs ~190 kB. A
pre-augmented pool of a filtered split is a virtual pool whose source is this store: `Store.open` resolves both.
"""

from __future__ import annotations

import hashlib
import json
import os
from pathlib import Path
from typing import Any

import numpy as np

from .. import atomic
from ..errors import RealmixError
from .base import CLASS_MAPPING, MANIFEST, OPENERS, UNKNOWN_NAME, Store, Subset, open_source, sha256_array, write_json
from .virtual import POOL

FILTERED_FORMAT = "realmix-filtered-split/1"
KEPT = "kept.npy"


class IndexedArray:
    """Rows `index` of an image array (a store's `ShardedArray`), indexable like it: row i is base[index[i]]."""

    dtype = np.dtype(np.uint8)

    def __init__(self, base: Any, index: np.ndarray):
        self.base, self.index = base, index
        self.item_shape = tuple(base.shape[1:])

    def __len__(self) -> int:
        return len(self.index)

    @property
    def shape(self) -> tuple[int, ...]:
        return (len(self.index), *self.item_shape)

    def __array__(self, dtype=None, copy=None):
        out = self[:]
        return out.astype(dtype) if dtype is not None else out

    def __getitem__(self, index) -> np.ndarray:
        rows = self.index[index]
        if np.isscalar(rows):
            return np.asarray(self.base[int(rows)])
        return np.asarray(self.base[np.asarray(rows, np.int64)])


class FilteredSubset(Subset):
    """The kept pool: the source pool's images and labels at the kept positions; no files of its own."""

    source: Subset
    kept: np.ndarray

    @property
    def images(self) -> IndexedArray:  # type: ignore[override]
        return IndexedArray(self.source.images, self.kept)

    @property
    def labels(self) -> np.ndarray:
        return self.source.labels[self.kept]

    def iter_shards(self):
        for a in range(0, len(self.kept), 65536):
            rows = self.kept[a:a + 65536]
            yield np.asarray(self.source.images[rows]), self.source.labels[rows]


class FilteredStore(Store):
    """A split whose pool is the kept part of its source split's (see the module docstring)."""

    source: Store
    kept: np.ndarray

    @classmethod
    def from_manifest(cls, path: Path, manifest: dict[str, Any]) -> FilteredStore:
        store = cls(path, manifest)
        store.source = open_source(path, manifest, changed="it was filtered", rerun="filter")
        try:
            store.kept = np.load(path / KEPT, allow_pickle=False)
        except (OSError, ValueError) as e:
            raise RealmixError(f"{path / KEPT}: unreadable ({e}); rerun filter") from e
        if sha256_array(store.kept) != manifest.get("sha256_kept"):
            raise RealmixError(f"{path / KEPT}: content does not match the manifest hash; rerun filter")
        return store

    def subset(self, name: str) -> Subset:
        if name != POOL:
            return self.source.subset(name)
        e = self.manifest["subsets"][POOL]
        sub = FilteredSubset(self, POOL, int(e["count"]), [], dict(e["class_counts"]))
        sub.source, sub.kept = self.source.subset(POOL), self.kept
        return sub

    def digest(self) -> str:
        """The source's digest and the kept positions: what a pool derived from this split records."""
        content = {"source": self.manifest["source"]["sha256"], "kept": self.manifest["sha256_kept"]}
        return hashlib.sha256(json.dumps(content, sort_keys=True).encode()).hexdigest()

    def row_names(self, subset: str) -> list[str] | None:
        names = self.source.row_names(subset)
        if names is None or subset != POOL:
            return names
        return [names[i] for i in self.kept.tolist()]

    def verify(self) -> None:
        self.source.verify()


def write_filtered(src: Store, out: str | os.PathLike, kept: np.ndarray, *, name: str, meta: dict[str, Any],
                   extras: dict[str, bytes] | None = None) -> Store:
    """Write the filtered split `name` of `src` keeping pool positions `kept` to `out` (atomically), with `meta`
    added to the source's meta and `extras` (file name -> bytes: the filter's report) beside the manifest."""
    out = Path(out)
    pool = src.subset(POOL)
    kept = np.unique(np.asarray(kept, np.int64))
    if len(kept) and (kept[0] < 0 or kept[-1] >= pool.count):
        raise RealmixError(f"{out}: kept positions outside the {pool.count} images of {src.path}'s pool")
    labels = pool.labels[kept]
    class_counts = {c: int((labels == i).sum()) for i, c in enumerate(src.class_names)}
    if (labels < 0).any():
        class_counts[UNKNOWN_NAME] = int((labels < 0).sum())
    subsets = {k: ({"count": int(len(kept)), "shards": [], "class_counts": class_counts} if k == POOL else v)
               for k, v in src.manifest["subsets"].items()}
    manifest = {
        "format": FILTERED_FORMAT, "name": name, "class_names": src.class_names, "image_shape": src.image_shape,
        "meta": {**src.meta, **meta},
        # the source by its path relative to this directory (they move together) and by its content
        "source": {"path": os.path.relpath(os.path.abspath(src.path), os.path.abspath(out)), "name": src.name,
                   "sha256": src.digest()},
        "sha256_kept": sha256_array(kept),
        "subsets": subsets,
    }
    with atomic.atomic_path(out, directory=True) as tmp:
        np.save(tmp / KEPT, kept, allow_pickle=False)
        write_json(tmp / MANIFEST, manifest)
        write_json(tmp / CLASS_MAPPING, {str(i): c for i, c in enumerate(src.class_names)})
        for filename, data in (extras or {}).items():
            (tmp / filename).write_bytes(data)
    return Store.open(out)


OPENERS[FILTERED_FORMAT] = FilteredStore.from_manifest
