"""Offline pre-augmentation: `copies` augmented copies of every unlabelled image (the original make_aug_copy).

Fixes relative to the original (reference §C.6, §G.8): the label, validation and test subsets are carried
over verbatim (validation comes from the original split, so no augmented sibling of a validation image is
in the pool); the unaugmented originals can be kept; the output streams shard by shard with bounded
memory instead of holding ~30 GB in RAM; the augmentations really draw per image; the result is
deterministic for a seed.

Output item i of the unlabelled pool (0 <= i < n * (copies + keep)) is copy i // n of source image i % n,
where copy 0 is the original when `keep_originals`. A seeded permutation of all items spreads copies of
one image over the whole pool. Augmentation randomness is drawn per block of `CHUNK` output positions from
a generator seeded by (seed, block), so the content does not depend on `shard_size`, which only decides
how the pool is cut into files.
"""

from __future__ import annotations

from concurrent.futures import Future, ThreadPoolExecutor
from pathlib import Path

import numpy as np
import torch
from tqdm import tqdm

from .augment import AUGMENTS, augment_batch
from .errors import RealmixError
from .store import NAMES, Store, StoreWriter

POOL = "unlabel"
SHARD_BYTES = 256 << 20  # largest shard buffer; two are held while writing in the background
CHUNK = 4096  # output positions per generator; changing it changes every output, so it is fixed


def _generator(seed: int, *key: int) -> np.random.SeedSequence:
    return np.random.SeedSequence(seed, spawn_key=key)


def chunk_generator(seed: int, chunk: int) -> torch.Generator:
    """The torch generator that drives the augmentation of output block `chunk`."""
    state = _generator(seed, 1, chunk).generate_state(1, np.uint64)[0]
    return torch.Generator().manual_seed(int(state))


def item_order(seed: int, total: int) -> np.ndarray:
    """Seeded permutation: output position j holds item order[j]."""
    rng = np.random.Generator(np.random.PCG64(_generator(seed, 0)))
    dtype = np.int32 if total < 2**31 else np.int64  # halves the only O(total) array
    return rng.permutation(total).astype(dtype, copy=False)


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
    name: str | None = None,
    progress: bool = True,
    background_write: bool = True,
) -> Store:
    """Write a store at `out` whose `unlabel` subset is the augmented pool; other subsets are copied.

    `background_write` saves and hashes shard k in a writer thread while shard k+1 is computed.
    """
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
    # Bound memory for large images (96 px STL-10: 27 KB each): shards hold at most ~256 MB. The content
    # does not depend on the shard size, only the cut into files does.
    shard_size = min(shard_size, max(1, SHARD_BYTES // int(np.prod(src.image_shape))))
    params = {
        "copies": copies,
        "augment": augment,
        "keep_originals": keep_originals,
        "seed": seed,
        "cutout_prob": cutout_prob,
        "shard_size": shard_size,
        "chunk": CHUNK,
        "source": src.name,
    }
    meta = dict(src.meta, preaugment=params)
    with StoreWriter(out, src.class_names, name=name, meta=meta, shard_size=shard_size) as writer:
        for subset in src.subsets:
            if subset == POOL:
                _write_pool(writer, src, params, progress=progress, background_write=background_write)
            else:
                writer.copy_subset(subset, src.subset(subset))
        if (src.path / NAMES).is_file():  # the pool's names stay those of its source images, in source order
            writer.write_json(NAMES, src.read_json(NAMES))
    return Store.open(out)


def _write_pool(writer: StoreWriter, src: Store, p: dict, *, progress: bool, background_write: bool) -> None:
    pool = src.subset(POOL)
    images, labels = pool.images, pool.labels
    n = len(labels)
    keep = 1 if p["keep_originals"] else 0
    total = n * (p["copies"] + keep)
    if total == 0:
        writer.add(POOL, np.zeros((0, *src.image_shape), np.uint8), np.zeros(0, np.int64))
        return
    order = item_order(p["seed"], total)
    shard_size = min(p["shard_size"], total)
    # Two shard buffers: one being filled while the writer thread saves and hashes the other.
    nbuf = 2 if background_write else 1
    bufs = [np.empty((shard_size, *src.image_shape), np.uint8) for _ in range(nbuf)]
    lbufs = [np.empty(shard_size, np.int64) for _ in range(nbuf)]
    pending: list[Future | None] = [None] * nbuf
    executor = ThreadPoolExecutor(1, thread_name_prefix="preaugment-write") if background_write else None
    bar = _progress(total, progress)
    cur, fill = 0, 0  # buffer being filled, images in it

    def flush() -> None:
        nonlocal cur, fill
        args = (POOL, bufs[cur][:fill], lbufs[cur][:fill])
        if executor is None:
            writer.add_shard(*args)
        else:
            pending[cur] = executor.submit(writer.add_shard, *args)
            cur = (cur + 1) % nbuf
            if pending[cur] is not None:  # the buffer's previous shard must be on disk before reuse
                pending[cur].result()
                pending[cur] = None
        fill = 0

    try:
        for c, start in enumerate(range(0, total, CHUNK)):
            items = order[start : start + CHUNK]
            source = items % n
            originals = items < n * keep
            batch = images[source]  # N x H x W x C, gathered from the memory-mapped shards
            x = torch.from_numpy(batch).permute(0, 3, 1, 2)
            y = augment_batch(x, p["augment"], chunk_generator(p["seed"], c), cutout_prob=p["cutout_prob"])
            aug = y.permute(0, 2, 3, 1).numpy()  # NHWC-contiguous: no copy
            if originals.any():
                aug[originals] = batch[originals]
            lab = labels[source]
            done = 0
            while done < len(items):
                take = min(len(items) - done, shard_size - fill)
                bufs[cur][fill : fill + take] = aug[done : done + take]
                lbufs[cur][fill : fill + take] = lab[done : done + take]
                fill += take
                done += take
                if fill == shard_size:
                    flush()
            bar.update(len(items))
        if fill:
            flush()
        for f in pending:
            if f is not None:
                f.result()
    finally:
        bar.close()
        if executor is not None:
            executor.shutdown(wait=True, cancel_futures=True)


def _progress(total: int, enabled: bool) -> tqdm:
    return tqdm(total=total, unit="img", unit_scale=True, desc="preaugment", disable=not enabled)


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
