"""Benchmark pre-augmentation on a synthetic CIFAR-sized split store: both storages, then the training step on each.

    .venv/bin/python benchmarks/preaugment.py                       # 50,000 images x 50 copies, cifar10, both
    .venv/bin/python benchmarks/preaugment.py --storage virtual --no-train-step
    .venv/bin/python benchmarks/preaugment.py --images 5000 --copies 5 --steps 4   # a quick smoke run

1. The stage: for each storage (virtual, materialized) `realmix.preaugment.preaugment` runs in its own subprocess,
   so the peak RSS is that storage's. Printed: bytes on disk of the output directory (allocated blocks, as du), its
   files, the wall time of the call and of the whole subprocess (interpreter and torch import included, as a DVC
   stage), images/s, and the subprocess's peak RSS.
2. The training step: RealMix (batch 64 labelled + 2 x 64 unlabelled views; the model of --filters/--repeat) on the
   virtual pool and on the materialized one, alternated step by step in one process (--steps on each, after
   --warmup). Printed: median/min/max s/step per storage, the virtual/materialized ratio per pair of steps (median
   and quartiles: robust to load from other processes), of the medians and of the minima; then the median time of
   the pool read alone (`unlabel_bank.gather` of 128 positions: the virtual pool computes its images there, the
   materialized one reads them from its memory map).

Writes the stores to a temporary directory (the default materialized pool is ~7.7 GB) and removes it at the end
unless --keep-dir is given.
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import os
import resource
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))  # run from a checkout without installing

from realmix.augment import AUGMENTS  # noqa: E402
from realmix.preaugment import STORAGES, preaugment  # noqa: E402
from realmix.store import Store, StoreWriter  # noqa: E402


def peak_rss_mb() -> float:
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024  # Linux reports KiB


def disk_bytes(path: Path) -> tuple[int, int]:
    """(bytes allocated on disk, as du counts them; number of files) under `path`."""
    files = [p for p in path.rglob("*") if p.is_file()]
    return sum(p.stat().st_blocks * 512 for p in files), len(files)


def human(n: float) -> str:
    """Bytes in decimal units."""
    for unit in ("B", "kB", "MB"):
        if n < 1000:
            return f"{n:.1f} {unit}"
        n /= 1000
    return f"{n:,.2f} GB"


def make_split_store(path: Path, images: int, *, size: int = 32, classes: int = 10, seed: int = 0) -> Store:
    """A split store of random uint8 images: `images` unlabelled plus small label/valid/test subsets."""
    rng = np.random.default_rng(seed)
    with StoreWriter(path, [f"c{i}" for i in range(classes)], name="synthetic.1@250-500") as w:
        for subset, n in (("label", 250), ("unlabel", images), ("valid", 500), ("test", 1000)):
            for start in range(0, n, 65536):  # bounded memory for large --images
                m = min(65536, n - start)
                w.add(subset, rng.integers(0, 256, (m, size, size, 3), np.uint8), rng.integers(0, classes, m))
    return Store.open(path)


def stage(args: argparse.Namespace) -> None:
    """The child: run the stage once and print its figures as one JSON line."""
    rss_before = peak_rss_mb()
    t0 = time.perf_counter()
    out = preaugment(Store.open(args.src), args.out, copies=args.copies, augment=args.augment,
                     keep_originals=not args.no_keep_originals, seed=1, cutout_prob=0.3, shard_size=args.shard_size,
                     storage=args.child_stage, progress=False)
    wall = time.perf_counter() - t0
    print(json.dumps({"wall": wall, "images": out.subset("unlabel").count, "rss_mb": peak_rss_mb(),
                      "rss_before_mb": rss_before}))


def run_stage(storage: str, src: Path, out: Path, args: argparse.Namespace) -> dict:
    cmd = [sys.executable, __file__, "--child-stage", storage, "--src", str(src), "--out", str(out),
           "--copies", str(args.copies), "--augment", args.augment, "--shard-size", str(args.shard_size)]
    if args.no_keep_originals:
        cmd.append("--no-keep-originals")
    t0 = time.perf_counter()
    res = subprocess.run(cmd, check=True, capture_output=True, text=True)
    fig = json.loads(res.stdout.strip().splitlines()[-1])
    fig["process_wall"] = time.perf_counter() - t0
    fig["disk"], fig["files"] = disk_bytes(out)
    return fig


def make_trainer(store: Store, args: argparse.Namespace):
    from realmix.params import parse
    from realmix.train import Trainer

    p = parse({})
    p = dataclasses.replace(
        p, train=dataclasses.replace(p.train, threads=args.threads, device="cpu", batch=64, progress=False,
                                     precision="fp32", augment=args.augment),
        model=dataclasses.replace(p.model, filters=args.filters, repeat=args.repeat))
    return Trainer(p, "realmix", store, split_seed=1)


def train_steps(stores: dict[str, Store], args: argparse.Namespace) -> None:
    torch.set_num_threads(args.threads)
    trainers = {s: make_trainer(store, args) for s, store in stores.items()}
    assert len({t.fingerprint for t in trainers.values()}) == 1  # the same run on either storage
    for t in trainers.values():
        for _ in range(args.warmup):
            t.step()
    # Alternated step by step (the order flipped every pair), so each pair of steps ran under the same load.
    times: dict[str, list[float]] = {s: [] for s in trainers}
    names = list(trainers)
    for i in range(args.steps):
        for s in names if i % 2 == 0 else names[::-1]:
            t0 = time.perf_counter()
            trainers[s].step()
            times[s].append(time.perf_counter() - t0)
    ratios = [v / m for v, m in zip(times["virtual"], times["materialized"], strict=True)]
    q1, q2, q3 = statistics.quantiles(ratios, n=4)
    print(f"train step (realmix, WRN filters {args.filters} repeat {args.repeat}, batch 64 + 2x64, fp32, "
          f"{args.threads} threads, {len(ratios)} steps per storage after {args.warmup} warm-up, alternated step by "
          "step):")
    for s, ts in times.items():
        print(f"  {s:12s} median {statistics.median(ts):.3f} s/step (min {min(ts):.3f}, max {max(ts):.3f})")
    print(f"  virtual / materialized, per pair of steps: median {q2:.3f} (quartiles {q1:.3f} .. {q3:.3f}); "
          f"ratio of the medians {statistics.median(times['virtual']) / statistics.median(times['materialized']):.3f}"
          f", of the minima {min(times['virtual']) / min(times['materialized']):.3f}")
    rng = np.random.default_rng(0)
    reads: dict[str, list[float]] = {s: [] for s in trainers}
    for _ in range(50):
        idx = rng.integers(0, len(trainers["virtual"].feed.unlabel_bank), 128)
        for s, t in trainers.items():
            t0 = time.perf_counter()
            t.feed.unlabel_bank.gather(idx, torch.from_numpy(idx))
            reads[s].append(time.perf_counter() - t0)
    print("  pool read per step (128 positions, median of 50): "
          + ", ".join(f"{s} {statistics.median(r) * 1e3:.2f} ms" for s, r in reads.items()))


def main(argv: list[str] | None = None) -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--images", type=int, default=50_000, help="unlabelled images in the synthetic store")
    ap.add_argument("--copies", type=int, default=50)
    ap.add_argument("--augment", choices=AUGMENTS, default="cifar10")
    ap.add_argument("--size", type=int, default=32, help="image side in pixels")
    ap.add_argument("--shard-size", type=int, default=65536)
    ap.add_argument("--no-keep-originals", action="store_true")
    ap.add_argument("--storage", choices=(*STORAGES, "both"), default="both")
    ap.add_argument("--no-train-step", action="store_true", help="only the stage figures")
    ap.add_argument("--filters", type=int, default=16, help="WRN width of the step benchmark")
    ap.add_argument("--repeat", type=int, default=1, help="WRN depth of the step benchmark")
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--steps", type=int, default=40, help="timed steps per storage")
    ap.add_argument("--warmup", type=int, default=2)
    ap.add_argument("--keep-dir", type=Path, default=None, help="work here and keep the stores afterwards")
    ap.add_argument("--child-stage", choices=STORAGES, help=argparse.SUPPRESS)
    ap.add_argument("--src", type=Path, help=argparse.SUPPRESS)
    ap.add_argument("--out", type=Path, help=argparse.SUPPRESS)
    args = ap.parse_args(argv)
    if args.child_stage:
        return stage(args)

    work = args.keep_dir or Path(tempfile.mkdtemp(prefix="realmix-bench-"))
    work.mkdir(parents=True, exist_ok=True)
    storages = STORAGES[::-1] if args.storage == "both" else (args.storage,)  # virtual first: it is quick
    try:
        t0 = time.perf_counter()
        src = make_split_store(work / "synthetic.1@250-500", args.images, size=args.size)
        print(f"synthetic store: {args.images:,} x {args.size}x{args.size}x3 images in "
              f"{time.perf_counter() - t0:.1f} s ({human(disk_bytes(src.path)[0])}); {args.copies} copies, "
              f"augment {args.augment}, "
              f"{os.cpu_count()} CPUs")
        stores = {}
        for storage in storages:
            out = work / f"synthetic_aug{args.copies}_{storage}.1@250-500"
            f = run_stage(storage, src.path, out, args)
            rate = f" ({f['images'] / f['wall']:,.0f} images/s)" if storage == "materialized" else ""
            print(f"{storage:12s}: {human(f['disk'])} on disk in {f['files']} files; {f['images']:,} images; stage "
                  f"call {f['wall']:.3f} s{rate}, whole process "
                  f"{f['process_wall']:.1f} s; peak RSS {f['rss_mb']:,.0f} MB (after imports: "
                  f"{f['rss_before_mb']:,.0f} MB)")
            stores[storage] = Store.open(out)
        if not args.no_train_step and len(stores) == 2:
            train_steps(stores, args)
    finally:
        if args.keep_dir is None:
            shutil.rmtree(work, ignore_errors=True)


if __name__ == "__main__":
    main()
