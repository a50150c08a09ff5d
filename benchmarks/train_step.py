"""Time one training step (sampling + augmentation, forwards, losses, backward, optimiser, decay, EMA) on CPU or
CUDA, with the fast path off and on (default algorithms: supervised, MixMatch, RealMix, FixMatch, IOMatch; the
last two at the paper's mu 7 with RandAugment strong views and SGD).

    .venv/bin/python benchmarks/train_step.py                        # WRN-28-2, batch 64, this device, all three
    .venv/bin/python benchmarks/train_step.py --algorithms realmix --steps 40
    .venv/bin/python benchmarks/train_step.py --fast-path on          # only the fast path
    .venv/bin/python benchmarks/train_step.py --memory-format compare  # channels-last vs NCHW memory
    .venv/bin/python benchmarks/train_step.py --fast-path off --memory-format compare --compile compare \
        --algorithms supervised mixmatch fixmatch --filters 16 --repeat 1 --rounds 3   # the CPU switches
    .venv/bin/python benchmarks/train_step.py --precision compare      # fp32 vs bf16 autocast, ratio printed
    .venv/bin/python benchmarks/train_step.py --filters 8 --repeat 1 --steps 5 --warmup 1   # a quick smoke run

Builds a `realmix.train.Trainer` on a synthetic in-memory split store (random uint8 32x32x3 images: 250
labelled, --unlabelled unlabelled, 10 valid, 10 test, 10 classes) with the default params (the paper's
WRN-28-2, batch 64, RealMix nu 2), so it needs no pipeline data. Configurations (alternated, --rounds times):
fast path off = train.precision fp32, channels_last / fused_adam / pin_memory / compile false; fast path on =
precision auto (bf16 where native), channels_last and fused Adam on, pinned copies where CUDA, compile per
--compile (auto: on CUDA only). For each algorithm and configuration it prints the median `Trainer.step()` time
over --steps steps after --warmup warm-up steps, labelled images/s (batch / median) and all images/s (labelled
+ unlabelled views), the ratio to the first configuration, and the achieved FLOP/s: the FLOPs of one step
(torch.utils.flop_counter, forward + backward, counted once per algorithm in fp32 eager) / the median time;
on CUDA also its fraction of the GPU's dense bf16 peak (a table by device name; n/a when unknown). Then a
breakdown from more `Trainer.step()` calls with a timer around each of the step's parts: augmentation
(feed.next_batch: sampling + augmentation + to_input), forward (Trainer.losses, the algorithm's step: the guessing
forwards, MixUp, the training forwards and the losses; the model's own forward time is split into no-grad
guessing and training forwards with hooks), backward (Trainer.backward), optimiser + decay (optim.apply), EMA
(ema.update) and the rest of the step (NaN check, window sums). Compile time is spent in the warm-up steps, whose
total each measurement prints (`warm-up ... s`; with a fresh TORCHINDUCTOR_CACHE_DIR the first compiled one
compiles cold).
"""

from __future__ import annotations

import argparse
import dataclasses
import itertools
import re
import statistics
import sys
import tempfile
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np
import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))  # run from a checkout without installing

from realmix.algorithms import ALGORITHMS  # noqa: E402
from realmix.params import parse  # noqa: E402
from realmix.store import Store, StoreWriter  # noqa: E402
from realmix.train import Trainer  # noqa: E402

MEMORY_FORMATS = ("nchw", "channels_last")  # train.channels_last false / true
PRECISIONS = ("fp32", "bf16")
PARTS = ("augment", "forward", "backward", "optim+decay", "ema", "other")  # optim: Adam or SGD (fixmatch, iomatch)
FAST_OFF = {"precision": "fp32", "channels_last": False, "fused_adam": False, "pin_memory": False, "compile": False}
# dense (no sparsity) bf16 tensor-core peaks in TFLOP/s, by device name; the first matching pattern wins
BF16_PEAK_TFLOPS = (
    (r"H100.*PCIe", 756.0), (r"H100.*(SXM|HBM3)", 989.0), (r"H200(?!.*NVL)", 989.0), (r"A100", 312.0),
    (r"\bL4\b", 121.0), (r"\bA10\b", 125.0), (r"RTX 4090", 165.0),
)


def bf16_peak(device_name: str) -> float | None:
    """The dense bf16 peak FLOP/s of a GPU from its name, or None when it is not in the table."""
    for pattern, tflops in BF16_PEAK_TFLOPS:
        if re.search(pattern, device_name):
            return tflops * 1e12
    return None


def fast_path(on: bool, compile_mode: str, device: str) -> dict[str, Any]:
    """The train param overrides of the fast path off or on."""
    if not on:
        return dict(FAST_OFF)
    compile_on = compile_mode == "on" or (compile_mode == "auto" and device == "cuda")
    return {"precision": "auto", "channels_last": True, "fused_adam": True, "pin_memory": "auto",
            "compile": compile_on}


def configurations(args: argparse.Namespace) -> list[tuple[str, dict[str, Any]]]:
    """(label, train param overrides) of every configuration, from the four axes."""
    fast = ["off", "on"] if args.fast_path == "compare" else [args.fast_path]
    memory = list(MEMORY_FORMATS) if args.memory_format == "compare" else [args.memory_format]
    precision = list(PRECISIONS) if args.precision == "compare" else [args.precision]
    compiled = [False, True] if args.compile == "compare" else [None]
    out = []
    for f, m, pr, c in itertools.product(fast, memory, precision, compiled):
        over = fast_path(f == "on", args.compile, args.device)
        if m is not None:
            over["channels_last"] = m == "channels_last"
        if pr is not None:
            over["precision"] = pr
        if c is not None:
            over["compile"] = c
        label = "/".join([f"fast-{f}", *([m] if m else []), *([pr] if pr else []),
                          *([] if c is None else ["compiled" if c else "eager"])])
        out.append((label, over))
    return out


def make_store(path: Path, unlabelled: int, *, size: int = 32, classes: int = 10, seed: int = 0) -> Store:
    rng = np.random.default_rng(seed)
    with StoreWriter(path, [f"c{i}" for i in range(classes)], name="synthetic") as w:
        for subset, n in (("label", 250), ("unlabel", unlabelled), ("valid", 10), ("test", 10)):
            labels = rng.integers(0, classes, n) if subset != "unlabel" else np.full(n, -1)
            w.add(subset, rng.integers(0, 256, (n, size, size, 3), np.uint8), labels)
    return Store.open(path)


def make_trainer(store: Store, algorithm: str, args: argparse.Namespace, overrides: dict[str, Any]) -> Trainer:
    p = parse({})
    p = dataclasses.replace(
        p,
        train=dataclasses.replace(p.train, threads=args.threads, augment=args.augment, device=args.device,
                                  batch=args.batch, progress=False, **overrides),
        model=dataclasses.replace(p.model, filters=args.filters, repeat=args.repeat, scales=args.scales),
    )
    trainer = Trainer(p, algorithm, store, split_seed=1)
    torch.set_num_threads(args.threads)
    return trainer


def step_flops(store: Store, algorithm: str, args: argparse.Namespace) -> int:
    """FLOPs of one training step (forwards and backward; fp32 eager: the count does not depend on the path)."""
    from torch.utils.flop_counter import FlopCounterMode

    trainer = make_trainer(store, algorithm, args, FAST_OFF)
    trainer.step()
    with FlopCounterMode(display=False) as counter:
        trainer.step()
    return int(counter.get_total_flops())


def describe(trainer: Trainer) -> str:
    rt = trainer.runtime
    on = [k for k, v in dataclasses.asdict(rt.fast).items() if v]
    return f"{str(rt.autocast_dtype or torch.float32).removeprefix('torch.')} " + ("+".join(on) or "plain")


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
    if trainer.runtime.device.type != "cuda":
        return time.perf_counter

    def clock() -> float:
        torch.cuda.synchronize()
        return time.perf_counter()

    return clock


def full_steps(trainer: Trainer, warmup: int, steps: int) -> tuple[float, list[float]]:
    """(the warm-up steps' total time, which holds a compile's one-off cost; each timed step's time)."""
    clock = clock_for(trainer)
    t0 = clock()
    for _ in range(warmup):
        trainer.step()
    warm = clock() - t0
    times = []
    for _ in range(steps):
        t0 = clock()
        trainer.step()
        times.append(clock() - t0)
    return warm, times


def breakdown_steps(trainer: Trainer, warmup: int, steps: int) -> dict[str, list[float]]:
    """`Trainer.step()` itself, with a timer around each of its parts (the feed's next batch, the algorithm's
    losses, the backward, the optimiser and decay, the EMA update); "other" is the rest of the step."""
    fwd = ForwardTimer(trainer.model)
    clock = clock_for(trainer)
    spent: dict[str, float] = {}

    def timed(part: str, fn: Callable[..., Any]) -> Callable[..., Any]:
        def call(*args: Any, **kwargs: Any) -> Any:
            t0 = clock()
            try:
                return fn(*args, **kwargs)
            finally:
                spent[part] = spent.get(part, 0.0) + clock() - t0
        return call

    # instance attributes shadow the methods the step calls, so the step runs as it is, timed part by part
    for part, owner, name in (("augment", trainer.feed, "next_batch"), ("forward", trainer, "losses"),
                              ("backward", trainer, "backward"), ("optim+decay", trainer.optim, "apply"),
                              ("ema", trainer.ema, "update")):
        setattr(owner, name, timed(part, getattr(owner, name)))
    parts: dict[str, list[float]] = {k: [] for k in (*PARTS, "model fwd (guess)", "model fwd (train)", "total")}
    for i in range(warmup + steps):
        fwd.reset()
        spent.clear()
        t0 = clock()
        trainer.step()
        total = clock() - t0
        if i < warmup:
            continue
        for k in PARTS[:-1]:
            parts[k].append(spent[k])
        parts["other"].append(total - sum(spent.values()))
        parts["model fwd (guess)"].append(fwd.guess)
        parts["model fwd (train)"].append(fwd.train)
        parts["total"].append(total)
    fwd.remove()
    return parts


def run(store: Store, algorithm: str, args: argparse.Namespace, overrides: dict[str, Any]) -> dict[str, object]:
    trainer = make_trainer(store, algorithm, args, overrides)
    warm, times = full_steps(trainer, args.warmup, args.steps)
    result: dict[str, object] = {"median": statistics.median(times), "min": min(times), "max": max(times),
                                 "warmup": warm, "resolved": describe(trainer),
                                 "views": len(trainer.algo.needs.views) * trainer.algo.needs.mu}
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
    ap.add_argument("--algorithms", nargs="+", choices=list(ALGORITHMS),
                    default=["supervised", "mixmatch", "realmix", "fixmatch", "iomatch"])
    ap.add_argument("--steps", type=int, default=20, help="timed steps per measurement (median reported)")
    ap.add_argument("--warmup", type=int, default=3, help="untimed steps before each measurement")
    ap.add_argument("--threads", type=int, default=2, help="torch.set_num_threads")
    ap.add_argument("--batch", type=int, default=64, help="labelled batch (SSL methods add nu views of as many)")
    ap.add_argument("--filters", "--arch-filters", type=int, default=32, help="WRN width (32 = WRN-28-2)")
    ap.add_argument("--repeat", type=int, default=4, help="residual blocks per stage (4 = WRN-28)")
    ap.add_argument("--scales", type=int, default=0, help="stages (0 = from the image size: 3 at 32 px)")
    ap.add_argument("--augment", default="cifar10", help="train.augment")
    ap.add_argument("--unlabelled", type=int, default=5000, help="unlabelled images in the synthetic store")
    ap.add_argument("--fast-path", choices=("off", "on", "compare"), default="compare",
                    help="off: fp32, no channels_last / fused Adam / pinned copies / compile; on: bf16 where "
                         "native, channels_last, fused Adam, pinned copies on CUDA, compile per --compile; "
                         "compare (default): both, alternated, with their ratio")
    ap.add_argument("--compile", choices=("auto", "on", "off", "compare"), default="auto",
                    help="torch.compile in the fast path (auto: on CUDA only); compare: eager and compiled in "
                         "either fast path, alternated (compile time is spent in the warm-up steps)")
    ap.add_argument("--memory-format", choices=(*MEMORY_FORMATS, "compare"), default=None,
                    help="override the fast path's layout (train.channels_last): nchw, channels_last; compare: both")
    ap.add_argument("--precision", choices=(*PRECISIONS, "auto", "compare"), default=None,
                    help="override the fast path's train.precision (auto: bf16 where native); compare: fp32 and "
                         "bf16, alternated, with their ratio")
    ap.add_argument("--device", choices=("cpu", "cuda"), default="cuda" if torch.cuda.is_available() else "cpu",
                    help="default: cuda when a GPU is visible, else cpu")
    ap.add_argument("--rounds", type=int, default=1, help="repeat each measurement, alternating configurations")
    ap.add_argument("--no-breakdown", action="store_true", help="time only the full Trainer.step()")
    args = ap.parse_args(argv)
    if args.steps < 1 or args.warmup < 0 or args.rounds < 1:
        ap.error("--steps and --rounds must be >= 1, --warmup >= 0")
    torch.set_num_threads(args.threads)
    configs = configurations(args)
    width = max(len(label) for label, _ in configs)
    device_name = torch.cuda.get_device_name() if args.device == "cuda" else "cpu"
    peak = bf16_peak(device_name) if args.device == "cuda" else None

    print(f"torch {torch.__version__}, device {args.device} ({device_name}), {args.threads} threads, WRN "
          f"filters={args.filters} repeat={args.repeat}, batch {args.batch}, augment {args.augment}, {args.steps} "
          f"timed steps after {args.warmup} warm-up, {args.rounds} round(s)")
    with tempfile.TemporaryDirectory(prefix="realmix-bench-") as tmp:
        store = make_store(Path(tmp) / "store", args.unlabelled)
        rows = []
        flops: dict[str, int] = {}
        for algorithm in args.algorithms:
            flops[algorithm] = step_flops(store, algorithm, args)
            fns = [lambda a=algorithm, o=o: run(store, a, args, o) for _, o in configs]
            for (label, _), results in zip(configs, alternate(fns, args.rounds), strict=True):
                rows.append((algorithm, label, results))
                med = statistics.median(r["median"] for r in results)  # type: ignore[misc]
                print(f"  {algorithm:<10} {label:<{width}} [{results[0]['resolved']}] "
                      + " ".join(f"{r['median']:.3f}" for r in results) + f"  -> {med:.3f} s; warm-up "
                      + " ".join(f"{r['warmup']:.1f}" for r in results) + " s", flush=True)

    print()
    print(f"{'algorithm':<11}{'configuration':<{width + 1}}{'median s/step':>14}{'min':>8}{'max':>8}"
          f"{'labelled img/s':>16}{'all img/s':>11}{'speed-up':>10}{'GFLOP/step':>12}"
          f"{'TFLOP/s':>9}{'of bf16 peak':>14}")
    first: dict[str, float] = {}
    for algorithm, label, results in rows:
        med = statistics.median(r["median"] for r in results)  # type: ignore[misc]
        lo = min(r["min"] for r in results)  # type: ignore[type-var]
        hi = max(r["max"] for r in results)  # type: ignore[type-var]
        speedup = first.setdefault(algorithm, med) / med
        images = args.batch * (1 + int(results[0]["views"]))  # type: ignore[call-overload]
        achieved = flops[algorithm] / med
        share = f"{100 * achieved / peak:.1f} %" if peak else "n/a"
        print(f"{algorithm:<11}{label:<{width + 1}}{med:>14.3f}{lo:>8.3f}{hi:>8.3f}{args.batch / med:>16.1f}"
              f"{images / med:>11.1f}{speedup:>10.2f}{flops[algorithm] / 1e9:>12.2f}{achieved / 1e12:>9.3f}"
              f"{share:>14}")
    print("speed-up: images/s relative to the first configuration of the algorithm; FLOPs: one step's forwards and "
          "backward (torch.utils.flop_counter); bf16 peak: dense tensor-core figure of the GPU"
          + ("" if peak or args.device != "cuda" else f" (unknown for {device_name!r}: n/a)"))
    if args.no_breakdown:
        return
    print()
    print("breakdown (median seconds of each part over the timed steps; % of the summed medians)")
    for algorithm, label, results in rows:
        parts = {k: statistics.median(r["parts"][k] for r in results) for k in results[0]["parts"]}  # type: ignore
        total = sum(parts[k] for k in PARTS)
        print(f"  {algorithm} [{label}]  step {parts['total']:.3f} s")
        for k in PARTS:
            print(f"    {k:<13}{parts[k]:>8.3f} s {100 * parts[k] / total:>6.1f} %")
        for k in ("model fwd (guess)", "model fwd (train)"):
            if parts[k] > 0:
                print(f"      of forward: {k:<18}{parts[k]:>8.3f} s")


if __name__ == "__main__":
    main()
