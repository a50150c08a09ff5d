"""Pre-augmentation: `copies` augmented copies of every unlabelled image (the original make_aug_copy).

Fixes relative to the original (reference §C.6, §G.8): the label, validation and test subsets are carried
over verbatim (validation comes from the original split, so no augmented sibling of a validation image is
in the pool); the unaugmented originals can be kept; the pool is computed with bounded memory instead of
holding ~30 GB in RAM; the augmentations really draw per image; the result is deterministic for a seed.

Output item i of the unlabelled pool (0 <= i < n * (copies + keep)) is copy i // n of source image i % n,
where copy 0 is the original when `keep_originals`. A seeded permutation of all items (`item_order`) spreads
copies of one image over the whole pool: position p holds item order[p]. Every random draw of item i (flip,
shift, colour, erase box) is a hash of (seed, i, draw index) (realmix/draws.py), so an item is a pure function
of the recipe -- (source split, augment, seed, copies, ...) -- whatever else is computed with it.

That makes two storages of one pool, equal bit for bit:
- `materialized`: the pool's images written as store shards (~7.7 GB for 50 copies of 50,000 CIFAR images);
- `virtual`: a manifest holding the recipe and the hashes of the source split, which stays where it is; the
  pool's images are computed where they are read (`VirtualPool`: on the host; `PoolBank`, in
  realmix/data_stream.py: on the training device, per batch).
`Store.open` returns either as a store whose `subset("unlabel")` is the pool, so readers do not care which.
"""

from __future__ import annotations

import os
from collections.abc import Iterator
from concurrent.futures import Future, ThreadPoolExecutor
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch import Tensor
from tqdm import tqdm

from . import atomic
from .augment import AUGMENTS, augment_batch
from .draws import VERSION, HashDraws, derive_key
from .errors import RealmixError
from .store import CLASS_MAPPING, MANIFEST, NAMES, VIRTUAL_FORMAT, Store, StoreWriter, Subset, write_json

POOL = "unlabel"
STORAGES = ("materialized", "virtual")
SHARD_BYTES = 256 << 20  # largest shard buffer; two are held while writing in the background
CHUNK = 4096  # pool positions computed per batch when materializing or reading on the host (no effect on content)
_STORAGE_KEYS = ("storage", "shard_size")  # how a pool is stored, not what it holds


def _generator(seed: int, *key: int) -> np.random.SeedSequence:
    return np.random.SeedSequence(seed, spawn_key=key)


def item_order(seed: int, total: int) -> np.ndarray:
    """Seeded permutation: output position j holds item order[j]."""
    rng = np.random.Generator(np.random.PCG64(_generator(seed, 0)))
    dtype = np.int32 if total < 2**31 else np.int64  # halves the only O(total) array
    return rng.permutation(total).astype(dtype, copy=False)


def recipe_identity(recipe: dict[str, Any]) -> dict[str, Any]:
    """What decides a pool's images: its recipe without how it is stored."""
    return {k: v for k, v in recipe.items() if k not in _STORAGE_KEYS}


def augment_items(x: Tensor, items: Tensor, recipe: dict[str, Any], n: int) -> Tensor:
    """Pool items `items` (int64, on x's device) from their source images x (N x C x H x W uint8: x[k] is
    source image items[k] % n), on any device. The one function both storages compute the pool with."""
    draws = HashDraws(derive_key(recipe["seed"], 1), items)
    y = augment_batch(x, recipe["augment"], draws, cutout_prob=recipe["cutout_prob"])
    if recipe["keep_originals"]:  # copy 0 is the original: selected on the device, no host read
        y = torch.where((items < n).view(-1, 1, 1, 1), x, y)
    return y.contiguous(memory_format=torch.channels_last)


def preaugment(
    src: Store,
    out: Path,
    *,
    copies: int,
    augment: str,
    keep_originals: bool,
    seed: int,
    cutout_prob: float,
    shard_size: int,
    storage: str = "virtual",
    name: str | None = None,
    progress: bool = True,
    background_write: bool = True,
) -> Store:
    """Write a store at `out` whose `unlabel` subset is the augmented pool; other subsets are the source's.

    `storage`: materialized (the pool's images and the other subsets are written as shards) or virtual (a
    manifest: the recipe and the source's hashes; every subset is read from `src`, which must stay in place).
    `background_write` (materialized) saves and hashes shard k in a writer thread while shard k+1 is computed.
    """
    if storage not in STORAGES:
        raise RealmixError(f"preaugment: unknown storage {storage!r}; choose one of: {', '.join(STORAGES)}")
    if augment not in AUGMENTS:
        raise RealmixError(f"preaugment: unknown augment {augment!r}; choose one of: {', '.join(AUGMENTS)}")
    if copies < 1:
        raise RealmixError(f"preaugment: copies={copies} must be >= 1")
    if shard_size < 1:
        raise RealmixError(f"preaugment: shard_size={shard_size} must be >= 1")
    if not 0.0 <= cutout_prob <= 1.0:
        raise RealmixError(f"preaugment: cutout_prob={cutout_prob} must be in [0, 1]")
    if not src.has(POOL):
        raise RealmixError(f"{src.path}: has no {POOL!r} subset to augment; run preaugment on a split store")
    if isinstance(src, VirtualStore):
        raise RealmixError(f"{src.path}: is itself a virtual pre-augmented split; pre-augment its source split "
                           f"({src.source.path}) instead")
    # Bound memory for large images (96 px STL-10: 27 KB each): shards hold at most ~256 MB. The content
    # does not depend on the shard size, only the cut into files does.
    shard_size = min(shard_size, max(1, SHARD_BYTES // int(np.prod(src.image_shape))))
    recipe = {
        "copies": copies,
        "augment": augment,
        "keep_originals": keep_originals,
        "seed": seed,
        "cutout_prob": cutout_prob,
        "draws": VERSION,
        "source": src.name,
        "source_sha256": src.digest(),
        "storage": storage,
    }
    if storage == "materialized":
        recipe["shard_size"] = shard_size
    meta = dict(src.meta, preaugment=recipe)
    if storage == "virtual":
        return _write_virtual(src, Path(out), meta, name=name or Path(out).name)
    with StoreWriter(out, src.class_names, name=name, meta=meta, shard_size=shard_size) as writer:
        for subset in src.subsets:
            if subset == POOL:
                _write_pool(writer, src, recipe, shard_size, progress=progress, background_write=background_write)
            else:
                writer.copy_subset(subset, src.subset(subset))
        if (src.path / NAMES).is_file():  # the pool's names stay those of its source images, in source order
            writer.write_json(NAMES, src.read_json(NAMES))
    return Store.open(out)


def _pool_entry(src: Store, copies: int) -> dict[str, Any]:
    """The pool's manifest entry: its count and class counts (every source image appears `copies` times)."""
    e = src.manifest["subsets"][POOL]
    return {"count": int(e["count"]) * copies, "shards": [],
            "class_counts": {c: int(k) * copies for c, k in e["class_counts"].items()}}


def _write_virtual(src: Store, out: Path, meta: dict[str, Any], *, name: str) -> Store:
    """The virtual pool's directory: manifest.json (recipe, where the source is and its hashes) and the class
    mapping. The item order is derived from the seed, not stored."""
    recipe = meta["preaugment"]
    subsets = {k: (_pool_entry(src, recipe["copies"] + recipe["keep_originals"]) if k == POOL else v)
               for k, v in src.manifest["subsets"].items()}
    manifest = {
        "format": VIRTUAL_FORMAT,
        "name": name,
        "class_names": src.class_names,
        "image_shape": src.image_shape,
        "meta": meta,
        # the source split by its path relative to this directory (they move together, e.g. in a DVC
        # experiment's temporary copy), and by its content; its shard hashes are the other subsets' entries
        "source": {"path": os.path.relpath(os.path.abspath(src.path), os.path.abspath(out)),
                   "name": src.name, "sha256": recipe["source_sha256"]},
        "subsets": subsets,
    }
    with atomic.atomic_path(out, directory=True) as tmp:
        write_json(tmp / MANIFEST, manifest)
        write_json(tmp / CLASS_MAPPING, {str(i): c for i, c in enumerate(src.class_names)})
    return Store.open(out)


def _write_pool(writer: StoreWriter, src: Store, p: dict, shard_size: int, *, progress: bool,
                background_write: bool) -> None:
    pool = VirtualPool(src.subset(POOL), p)
    total = len(pool)
    if total == 0:
        writer.add(POOL, np.zeros((0, *src.image_shape), np.uint8), np.zeros(0, np.int64))
        return
    labels = pool.labels
    shard_size = min(shard_size, total)
    # Two shard buffers: one being filled while the writer thread saves and hashes the other.
    nbuf = 2 if background_write else 1
    bufs = [np.empty((shard_size, *src.image_shape), np.uint8) for _ in range(nbuf)]
    pending: list[Future | None] = [None] * nbuf
    executor = ThreadPoolExecutor(1, thread_name_prefix="preaugment-write") if background_write else None
    bar = _progress(total, progress)
    cur = 0

    def flush(start: int, fill: int) -> None:
        nonlocal cur
        args = (POOL, bufs[cur][:fill], labels[start : start + fill])
        if executor is None:
            writer.add_shard(*args)
            return
        pending[cur] = executor.submit(writer.add_shard, *args)
        cur = (cur + 1) % nbuf
        if pending[cur] is not None:  # the buffer's previous shard must be on disk before reuse
            pending[cur].result()
            pending[cur] = None

    try:
        for start in range(0, total, shard_size):
            fill = min(shard_size, total - start)
            for a in range(0, fill, CHUNK):
                b = min(a + CHUNK, fill)
                pool.compute(np.arange(start + a, start + b), out=bufs[cur][a:b])
                bar.update(b - a)
            flush(start, fill)
        for f in pending:
            if f is not None:
                f.result()
    finally:
        bar.close()
        if executor is not None:
            executor.shutdown(wait=True, cancel_futures=True)


def _progress(total: int, enabled: bool) -> tqdm:
    return tqdm(total=total, unit="img", unit_scale=True, desc="preaugment", disable=not enabled)


# -- the pool, computed where it is read -------------------------------------------------------------------
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
        info = manifest.get("source") or {}
        src_path = Path(os.path.normpath(path / info.get("path", "?")))
        try:
            store.source = Store.open(src_path)
        except RealmixError as e:
            raise RealmixError(f"{path}: its source split {src_path} is not readable ({e}); run the stage that "
                               "writes it (e.g. dvc repro), or rerun preaugment") from e
        if store.source.digest() != info.get("sha256"):
            raise RealmixError(f"{path}: its source split {src_path} changed since this virtual pool was written; "
                               "rerun preaugment (dvc repro does)")
        return store

    def subset(self, name: str) -> Subset:
        if name != POOL:
            sub = super().subset(name)
            sub.store = self.source  # the source's files
            return sub
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
