"""The virtual pre-augmented pool (format `realmix-virtual-pool/1`): reading a pool stored as its recipe.

A pre-augmented split (written by realmix/preaugment.py) holds `copies` augmented copies of every unlabelled
image of its source split, plus the originals when `keep_originals`. Item i of the pool (0 <= i < n * (copies +
keep)) is copy i // n of source image i % n, where copy 0 is the original when `keep_originals`. A seeded
permutation of all items (`item_order`) spreads copies of one image over the whole pool: position p holds item
order[p]. Every random draw of item i (flip, shift, colour, erase box) is a hash of (seed, i, draw index)
(realmix/draws.py), so an item is a pure function of the recipe -- (source split, augment, seed, copies, ...) --
whatever else is computed with it.

That makes two storages of one pool (`STORAGES`), equal bit for bit:
- `materialized`: the pool's images written as store shards (a plain `realmix-store/1` store);
- `virtual`: a manifest holding the recipe and the hashes of the source split, which stays where it is; the
  pool's images are computed where they are read (`VirtualPool`: on the host; `PoolBank`, in
  realmix/data_stream.py: on the training device, per batch).
`Store.open` returns either as a store whose `subset("unlabel")` is the pool, so readers do not care which: this
module registers the virtual format in `OPENERS`.
"""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch import Tensor

from ..augment import augment_batch
from ..draws import HashDraws, derive_key
from .base import OPENERS, Store, Subset, open_source

VIRTUAL_FORMAT = "realmix-virtual-pool/1"
STORAGES = ("materialized", "virtual")  # how a pre-augmented pool is stored: its images, or its recipe
POOL = "unlabel"  # the subset a pre-augmented split augments
CHUNK = 4096  # pool positions computed per batch when materializing or reading on the host (no effect on content)


def _generator(seed: int, *key: int) -> np.random.SeedSequence:
    return np.random.SeedSequence(seed, spawn_key=key)


def item_order(seed: int, total: int) -> np.ndarray:
    """Seeded permutation: output position j holds item order[j]."""
    rng = np.random.Generator(np.random.PCG64(_generator(seed, 0)))
    dtype = np.int32 if total < 2**31 else np.int64  # halves the only O(total) array
    return rng.permutation(total).astype(dtype, copy=False)


def augment_items(x: Tensor, items: Tensor, recipe: dict[str, Any], n: int) -> Tensor:
    """Pool items `items` (int64, on x's device) from their source images x (N x C x H x W uint8: x[k] is
    source image items[k] % n), on any device. The one function both storages compute the pool with."""
    draws = HashDraws(derive_key(recipe["seed"], 1), items)
    y = augment_batch(x, recipe["augment"], draws, cutout_prob=recipe["cutout_prob"])
    if recipe["keep_originals"]:  # copy 0 is the original: selected on the device, no host read
        y = torch.where((items < n).view(-1, 1, 1, 1), x, y)
    return y.contiguous(memory_format=torch.channels_last)


class VirtualPool:
    """The pool of a recipe over a source subset, indexable by position like a store's `ShardedArray`: each read
    computes its images (on the host, in batches of `CHUNK`)."""

    dtype = np.dtype(np.uint8)

    def __init__(self, source: Subset, recipe: dict[str, Any]):
        self.source = source
        self.recipe = recipe
        self.n = source.count
        self.total = self.n * (recipe["copies"] + bool(recipe["keep_originals"]))
        self.item_shape = tuple(source.image_shape)
        self._order: np.ndarray | None = None

    @property
    def order(self) -> np.ndarray:
        """Position -> item (derived from the seed on first use: ~10 MB for 2.5 M items)."""
        if self._order is None:
            self._order = item_order(self.recipe["seed"], self.total)
        return self._order

    @property
    def source_images(self):
        return self.source.images

    @property
    def labels(self) -> np.ndarray:
        """The pool's labels in position order (an item has its source image's label)."""
        return self.source.labels[self.order % self.n] if self.total else np.zeros(0, np.int64)

    def __len__(self) -> int:
        return self.total

    @property
    def shape(self) -> tuple[int, ...]:
        return (self.total, *self.item_shape)

    def __array__(self, dtype=None, copy=None):
        out = self[:]
        return out.astype(dtype) if dtype is not None else out

    def __getitem__(self, index) -> np.ndarray:
        if np.isscalar(index):
            i = int(index) + (self.total if int(index) < 0 else 0)
            return self[np.array([i])][0]
        positions = np.arange(self.total)[index] if isinstance(index, slice) else np.asarray(index, np.int64)
        positions = np.where(positions < 0, positions + self.total, positions)
        if len(positions) and (positions.min() < 0 or positions.max() >= self.total):
            raise IndexError("index out of range")
        out = np.empty((len(positions), *self.item_shape), np.uint8)
        for a in range(0, len(positions), CHUNK):
            self.compute(positions[a : a + CHUNK], out=out[a : a + CHUNK])
        return out

    def compute(self, positions: np.ndarray, out: np.ndarray) -> None:
        """The images at `positions` into `out` (NHWC uint8), on the host."""
        items = self.order[positions].astype(np.int64)
        batch = np.asarray(self.source_images[items % self.n])
        if self.recipe["keep_originals"] and bool((items < self.n).all()):
            out[:] = batch  # only originals (e.g. an evaluation of the pool's originals): nothing to compute
            return
        x = torch.from_numpy(batch).permute(0, 3, 1, 2)
        y = augment_items(x, torch.from_numpy(items), self.recipe, self.n)
        out[:] = y.permute(0, 2, 3, 1).numpy()  # NHWC-contiguous: a view

    def gather(self, x: Tensor, items: Tensor) -> Tensor:
        """On the training device: the pool items `items` from their source images `x` (see `augment_items`)."""
        return augment_items(x, items, self.recipe, self.n)


class VirtualSubset(Subset):
    """The pool of a virtual store: `images` is a `VirtualPool`, `labels` its labels; no files."""

    pool: VirtualPool

    @property
    def images(self) -> VirtualPool:  # type: ignore[override]
        return self.pool

    @property
    def labels(self) -> np.ndarray:
        return self.pool.labels

    def iter_shards(self) -> Iterator[tuple[np.ndarray, np.ndarray]]:
        labels = self.labels
        for a in range(0, self.count, 16 * CHUNK):
            b = min(a + 16 * CHUNK, self.count)
            yield self.pool[a:b], labels[a:b]


class VirtualStore(Store):
    """A pre-augmented split stored as its recipe: the pool is computed from the source split, whose other
    subsets are read in place (see the module docstring). Opened by `Store.open`."""

    source: Store

    @classmethod
    def from_manifest(cls, path: Path, manifest: dict[str, Any]) -> VirtualStore:
        store = cls(path, manifest)
        store.source = open_source(path, manifest, changed="this virtual pool was written", rerun="preaugment")
        return store

    def subset(self, name: str) -> Subset:
        if name != POOL:
            return self.source.subset(name)  # the source's files (a filtered source resolves its own source)
        e = self.manifest["subsets"][POOL]
        sub = VirtualSubset(self, POOL, int(e["count"]), [], dict(e["class_counts"]))
        sub.pool = VirtualPool(self.source.subset(POOL), self.meta["preaugment"])
        return sub

    def row_names(self, subset: str) -> list[str] | None:
        """The source split's names: a pre-augmented store lists its pool's source images (Store.row_names)."""
        return self.source.row_names(subset)

    def verify(self) -> None:
        """Re-hash the source split's shards against its manifest (the pool is a function of them)."""
        self.source.verify()


def original_positions(store: Store) -> np.ndarray | None:
    """Where a pre-augmented pool keeps its unaugmented originals: positions p_0 < ... in the order of their
    source images (so `pool[positions]` is the source split's pool in its own order); None for a store that is
    not pre-augmented or was written without originals."""
    p = store.meta.get("preaugment")
    if not p or not p.get("keep_originals"):
        return None
    total = store.subset(POOL).count
    n = total // (p["copies"] + 1)
    order = item_order(p["seed"], total)
    positions = np.flatnonzero(order < n)
    return positions[np.argsort(order[positions], kind="stable")]


# the base format knows no other: each format adds its opener, so the base never imports this module
OPENERS[VIRTUAL_FORMAT] = VirtualStore.from_manifest
