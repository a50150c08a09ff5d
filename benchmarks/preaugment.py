"""Benchmark offline pre-augmentation on a synthetic CIFAR-sized split store.

    .venv/bin/python benchmarks/preaugment.py                       # 50,000 images x 50 copies, cifar10
    .venv/bin/python benchmarks/preaugment.py --augment color --copies 5

Writes the input and output stores to a temporary directory (the default run writes ~7.7 GB) and removes
it at the end unless --keep-dir is given. Prints wall time, images/s and the process's peak RSS.
Targets (2 CPU cores): <= 3 minutes and <= 2 GB peak RSS for the default run.
"""

from __future__ import annotations

import argparse
import resource
import shutil
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))  # run from a checkout without installing

from realmix.augment import AUGMENTS  # noqa: E402
from realmix.preaugment import preaugment  # noqa: E402
from realmix.store import Store, StoreWriter  # noqa: E402


def peak_rss_mb() -> float:
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024  # Linux reports KiB


def make_split_store(path: Path, images: int, *, size: int = 32, classes: int = 10, seed: int = 0) -> Store:
    """A split store of random uint8 images: `images` unlabelled plus small label/valid/test subsets."""
    rng = np.random.default_rng(seed)
    with StoreWriter(path, [f"c{i}" for i in range(classes)], name="synthetic") as w:
        for subset, n in (("label", 250), ("unlabel", images), ("valid", 500), ("test", 1000)):
            for start in range(0, n, 65536):  # bounded memory for large --images
                m = min(65536, n - start)
                w.add(subset, rng.integers(0, 256, (m, size, size, 3), np.uint8), rng.integers(0, classes, m))
    return Store.open(path)


def main(argv: list[str] | None = None) -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--images", type=int, default=50_000, help="unlabelled images in the synthetic store")
    ap.add_argument("--copies", type=int, default=50)
    ap.add_argument("--augment", choices=AUGMENTS, default="cifar10")
    ap.add_argument("--size", type=int, default=32, help="image side in pixels")
    ap.add_argument("--shard-size", type=int, default=65536)
    ap.add_argument("--no-keep-originals", action="store_true")
    ap.add_argument("--foreground-write", action="store_true", help="save/hash shards on the main thread")
    ap.add_argument("--keep-dir", type=Path, default=None, help="work here and keep the stores afterwards")
    ap.add_argument("--no-progress", action="store_true")
    args = ap.parse_args(argv)

    work = args.keep_dir or Path(tempfile.mkdtemp(prefix="realmix-bench-"))
    work.mkdir(parents=True, exist_ok=True)
    try:
        t0 = time.perf_counter()
        src = make_split_store(work / "src", args.images, size=args.size)
        setup = time.perf_counter() - t0
        print(f"synthetic store: {args.images} x {args.size}x{args.size}x3 images in {setup:.1f} s")
        rss_before = peak_rss_mb()
        t0 = time.perf_counter()
        out = preaugment(
            src,
            work / "out",
            copies=args.copies,
            augment=args.augment,
            keep_originals=not args.no_keep_originals,
            seed=1,
            cutout_prob=0.3,
            shard_size=args.shard_size,
            progress=not args.no_progress,
            background_write=not args.foreground_write,
        )
        wall = time.perf_counter() - t0
        n = out.subset("unlabel").count
        gb = n * args.size * args.size * 3 / 1e9
        print(f"preaugment augment={args.augment} copies={args.copies}: {n:,} images ({gb:.2f} GB)")
        print(f"wall time {wall:.1f} s = {n / wall:,.0f} images/s")
        print(f"peak RSS {peak_rss_mb():,.0f} MB (before preaugment: {rss_before:,.0f} MB)")
    finally:
        if args.keep_dir is None:
            shutil.rmtree(work, ignore_errors=True)


if __name__ == "__main__":
    main()
