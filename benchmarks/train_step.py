"""Time one training step (sampling + augmentation, forwards, losses, backward, Adam, decay, EMA) on CPU or CUDA.

    .venv/bin/python benchmarks/train_step.py                        # WRN-28-2, batch 64, 2 threads, all three
    .venv/bin/python benchmarks/train_step.py --algorithms realmix --steps 40
    .venv/bin/python benchmarks/train_step.py --memory-format compare  # channels-last vs contiguous inputs
    .venv/bin/python benchmarks/train_step.py --precision compare      # fp32 vs bf16 autocast, ratio printed
    .venv/bin/python benchmarks/train_step.py --filters 8 --repeat 1 --steps 5 --warmup 1   # a quick smoke run

Builds a `realmix.train.Trainer` on a synthetic in-memory split store (random uint8 32x32x3 images: 250
labelled, --unlabelled unlabelled, 10 valid, 10 test, 10 classes) with the default params (the paper's
WRN-28-2, batch 64, RealMix nu 2), so it needs no pipeline data. For each algorithm it prints the median
`Trainer.step()` time over --steps steps after --warmup warm-up steps, the labelled images per second
(batch / median), and a breakdown from a second loop that mirrors `Trainer.step()` with a timer around each
sub-call: augmentation (next_batch: sampling + augmentation + to_input), forward (algo.train_step: the
guessing forwards, MixUp, the training forwards and the losses; the model's own forward time is split into
no-grad guessing and training forwards with hooks), backward, Adam + decay, EMA.
Target (2 CPU cores): realmix step <= 0.8 s.
"""

from __future__ import annotations

import argparse
import dataclasses
import itertools
import statistics
import sys
import tempfile
import time
from collections.abc import Callable
from pathlib import Path

import numpy as np
import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))  # run from a checkout without installing

from realmix.algorithms import ALGORITHMS, Progress  # noqa: E402
from realmix.params import parse  # noqa: E402
from realmix.store import Store, StoreWriter  # noqa: E402
from realmix.train import Trainer  # noqa: E402

MEMORY_FORMATS = ("default", "contiguous", "channels_last")
PRECISIONS = ("fp32", "bf16")
PARTS = ("augment", "forward", "backward", "optim+decay", "ema", "other")


def make_store(path: Path, unlabelled: int, *, size: int = 32, classes: int = 10, seed: int = 0) -> Store:
    rng = np.random.default_rng(seed)
    with StoreWriter(path, [f"c{i}" for i in range(classes)], name="synthetic") as w:
        for subset, n in (("label", 250), ("unlabel", unlabelled), ("valid", 10), ("test", 10)):
            labels = rng.integers(0, classes, n) if subset != "unlabel" else np.full(n, -1)
            w.add(subset, rng.integers(0, 256, (n, size, size, 3), np.uint8), labels)
    return Store.open(path)


def make_trainer(store: Store, algorithm: str, args: argparse.Namespace, memory_format: str,
                 precision: str) -> Trainer:
    p = parse({})
    p = dataclasses.replace(
        p,
        train=dataclasses.replace(p.train, threads=args.threads, augment=args.augment, device=args.device,
                                  batch=args.batch, progress=False, precision=precision),
        model=dataclasses.replace(p.model, filters=args.filters, repeat=args.repeat, scales=args.scales),
    )
    trainer = Trainer(p, algorithm, store, split_seed=1)
    torch.set_num_threads(args.threads)
    if memory_format == "contiguous":
        augment = trainer.augment
        trainer.augment = lambda images: augment(images).contiguous()  # type: ignore[method-assign]
    elif memory_format == "channels_last":
        # weights too (the default already feeds channels-last inputs, which makes the convs channels-last)
        trainer.model.to(memory_format=torch.channels_last)
        trainer.ema.model.to(memory_format=torch.channels_last)
    return trainer


class ForwardTimer:
    """Accumulates the wall time spent inside model.forward, split into no-grad (guessing) and grad calls."""

    def __init__(self, model: torch.nn.Module):
        self.guess = self.train = 0.0
        self._t0 = 0.0
        self._handles = [model.register_forward_pre_hook(self._pre), model.register_forward_hook(self._post)]

    def _pre(self, *_: object) -> None:
        self._t0 = time.perf_counter()

    def _post(self, *_: object) -> None:
        dt = time.perf_counter() - self._t0
        if torch.is_grad_enabled():
            self.train += dt
        else:
            self.guess += dt

    def reset(self) -> None:
        self.guess = self.train = 0.0

    def remove(self) -> None:
        for h in self._handles:
            h.remove()


def clock_for(trainer: Trainer) -> Callable[[], float]:
    """perf_counter, after waiting for queued GPU work on CUDA (else a step would time only its launch)."""
    if trainer.device.type != "cuda":
        return time.perf_counter

    def clock() -> float:
        torch.cuda.synchronize()
        return time.perf_counter()

    return clock


def full_steps(trainer: Trainer, warmup: int, steps: int) -> list[float]:
    clock = clock_for(trainer)
    for _ in range(warmup):
        trainer.step()
    times = []
    for _ in range(steps):
        t0 = clock()
        trainer.step()
        times.append(clock() - t0)
    return times


def breakdown_steps(trainer: Trainer, warmup: int, steps: int) -> dict[str, list[float]]:
    """A loop mirroring Trainer.step() with perf_counter around each sub-call."""
    fwd = ForwardTimer(trainer.model)
    parts: dict[str, list[float]] = {k: [] for k in (*PARTS, "model fwd (guess)", "model fwd (train)", "total")}
    clock = clock_for(trainer)
    for i in range(warmup + steps):
        fwd.reset()
        t0 = clock()
        batch = trainer.next_batch()
        t1 = clock()
        with trainer.autocast():
            out = trainer.algo.train_step(trainer.model, batch, Progress(trainer.images, trainer.total))
        t2 = clock()
        trainer._check_finite(out.loss)
        trainer.optimizer.zero_grad(set_to_none=True)
        t3 = clock()
        out.loss.backward()
        t4 = clock()
        trainer.optimizer.step()
        with torch.no_grad():
            torch._foreach_mul_(trainer.decay_params, trainer.decay_factor)
        t5 = clock()
        trainer.ema.update()
        t6 = clock()
        trainer.images += trainer.batch
        trainer._accumulate(out)
        t7 = clock()
        if i < warmup:
            continue
        for k, v in zip(PARTS, (t1 - t0, t2 - t1, t4 - t3, t5 - t4, t6 - t5, (t3 - t2) + (t7 - t6)), strict=True):
            parts[k].append(v)
        parts["model fwd (guess)"].append(fwd.guess)
        parts["model fwd (train)"].append(fwd.train)
        parts["total"].append(t7 - t0)
    fwd.remove()
    return parts


def run(store: Store, algorithm: str, args: argparse.Namespace, config: tuple[str, str]) -> dict[str, object]:
    trainer = make_trainer(store, algorithm, args, *config)
    times = full_steps(trainer, args.warmup, args.steps)
    result: dict[str, object] = {"median": statistics.median(times), "min": min(times), "max": max(times)}
    if not args.no_breakdown:
        parts = breakdown_steps(trainer, args.warmup, args.steps)
        result["parts"] = {k: statistics.median(v) for k, v in parts.items()}
    return result


def alternate(fns: list[Callable[[], dict[str, object]]], rounds: int) -> list[list[dict[str, object]]]:
    """Run each configuration `rounds` times, interleaved (A B A B ...), so drifting machine load hits all alike."""
    out: list[list[dict[str, object]]] = [[] for _ in fns]
    for _ in range(rounds):
        for i, fn in enumerate(fns):
            out[i].append(fn())
    return out


def main(argv: list[str] | None = None) -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0],
                                 formatter_class=argparse.RawDescriptionHelpFormatter,
                                 epilog="\n".join(__doc__.splitlines()[1:]))
    ap.add_argument("--algorithms", nargs="+", choices=list(ALGORITHMS), default=["supervised", "mixmatch", "realmix"])
    ap.add_argument("--steps", type=int, default=20, help="timed steps per measurement (median reported)")
    ap.add_argument("--warmup", type=int, default=3, help="untimed steps before each measurement")
    ap.add_argument("--threads", type=int, default=2, help="torch.set_num_threads")
    ap.add_argument("--batch", type=int, default=64, help="labelled batch (SSL methods add nu views of as many)")
    ap.add_argument("--filters", "--arch-filters", type=int, default=32, help="WRN width (32 = WRN-28-2)")
    ap.add_argument("--repeat", type=int, default=4, help="residual blocks per stage (4 = WRN-28)")
    ap.add_argument("--scales", type=int, default=0, help="stages (0 = from the image size: 3 at 32 px)")
    ap.add_argument("--augment", default="cifar10", help="train.augment")
    ap.add_argument("--unlabelled", type=int, default=5000, help="unlabelled images in the synthetic store")
    ap.add_argument("--memory-format", choices=(*MEMORY_FORMATS, "compare"), default="default",
                    help="default: inputs as augment_batch returns them (channels-last memory, contiguous weights); "
                         "contiguous: inputs made NCHW-contiguous; channels_last: model weights converted too; "
                         "compare: all three, alternated")
    ap.add_argument("--precision", choices=(*PRECISIONS, "auto", "compare"), default="auto",
                    help="train.precision (auto: bf16 where the device has native bf16); compare: fp32 and bf16, "
                         "alternated, with their ratio")
    ap.add_argument("--device", choices=("cpu", "cuda"), default="cpu")
    ap.add_argument("--rounds", type=int, default=1, help="repeat each measurement, alternating configurations")
    ap.add_argument("--no-breakdown", action="store_true", help="time only the full Trainer.step()")
    args = ap.parse_args(argv)
    if args.steps < 1 or args.warmup < 0 or args.rounds < 1:
        ap.error("--steps and --rounds must be >= 1, --warmup >= 0")
    torch.set_num_threads(args.threads)
    formats = list(MEMORY_FORMATS) if args.memory_format == "compare" else [args.memory_format]
    precisions = list(PRECISIONS) if args.precision == "compare" else [args.precision]
    configs = list(itertools.product(formats, precisions))

    print(f"torch {torch.__version__}, {args.threads} threads, WRN filters={args.filters} repeat={args.repeat}, "
          f"batch {args.batch}, augment {args.augment}, {args.steps} timed steps after {args.warmup} warm-up, "
          f"{args.rounds} round(s), device {args.device}")
    with tempfile.TemporaryDirectory(prefix="realmix-bench-") as tmp:
        store = make_store(Path(tmp) / "store", args.unlabelled)
        rows = []
        for algorithm in args.algorithms:
            fns = [lambda a=algorithm, c=c: run(store, a, args, c) for c in configs]
            for c, results in zip(configs, alternate(fns, args.rounds), strict=True):
                rows.append((algorithm, "/".join(c), results))
                med = statistics.median(r["median"] for r in results)  # type: ignore[misc]
                print(f"  {algorithm:<10} {'/'.join(c):<18} " + " ".join(f"{r['median']:.3f}" for r in results)
                      + f"  -> {med:.3f} s", flush=True)

    print()
    print(f"{'algorithm':<11}{'memory/precision':<19}{'median s/step':>14}{'min':>8}{'max':>8}{'labelled img/s':>16}"
          f"{'vs first':>10}")
    first: dict[str, float] = {}
    for algorithm, f, results in rows:
        med = statistics.median(r["median"] for r in results)  # type: ignore[misc]
        lo = min(r["min"] for r in results)  # type: ignore[type-var]
        hi = max(r["max"] for r in results)  # type: ignore[type-var]
        ratio = med / first.setdefault(algorithm, med)
        print(f"{algorithm:<11}{f:<19}{med:>14.3f}{lo:>8.3f}{hi:>8.3f}{args.batch / med:>16.1f}{ratio:>10.2f}")
    if args.no_breakdown:
        return
    print()
    print("breakdown (median seconds of each part over the timed steps; % of the summed medians)")
    for algorithm, f, results in rows:
        parts = {k: statistics.median(r["parts"][k] for r in results) for k in results[0]["parts"]}  # type: ignore
        total = sum(parts[k] for k in PARTS)
        print(f"  {algorithm} [{f}]  step {parts['total']:.3f} s")
        for k in PARTS:
            print(f"    {k:<13}{parts[k]:>8.3f} s {100 * parts[k] / total:>6.1f} %")
        for k in ("model fwd (guess)", "model fwd (train)"):
            if parts[k] > 0:
                print(f"      of forward: {k:<18}{parts[k]:>8.3f} s")


if __name__ == "__main__":
    main()
