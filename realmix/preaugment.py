"""Pre-augmentation: `copies` augmented copies of every unlabelled image (the original make_aug_copy).

Fixes relative to the original (reference §C.6, §G.8): the label, validation and test subsets are carried
over verbatim (validation comes from the original split, so no augmented sibling of a validation image is
in the pool); the unaugmented originals can be kept; the pool is computed with bounded memory instead of
holding ~30 GB in RAM; the augmentations really draw per image; the result is deterministic for a seed.

This module is the stage: it writes a pool in either storage, equal bit for bit --
- `materialized`: the pool's images written as store shards (~7.7 GB for 50 copies of 50,000 CIFAR images),
  computed here in chunks with a background writer thread;
- `virtual`: a manifest holding the recipe and the hashes of the source split, which stays where it is.
What a pool's items are (item order, per-item draws) and how a virtual pool is read live with the store format,
in realmix/store/virtual.py.
"""

from __future__ import annotations

import os
from concurrent.futures import Future, ThreadPoolExecutor
from pathlib import Path
from typing import Any

import numpy as np
from tqdm import tqdm

from . import atomic
from .augment import AUGMENTS
from .draws import VERSION
from .errors import RealmixError
from .store import (
    CHUNK,
    CLASS_MAPPING,
    MANIFEST,
    NAMES,
    POOL,
    STORAGES,
    VIRTUAL_FORMAT,
    Store,
    StoreWriter,
    VirtualPool,
    VirtualStore,
    write_json,
)

SHARD_BYTES = 256 << 20  # largest shard buffer; two are held while writing in the background


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
