"""Where and how a run computes: device, precision, fast path, the distributed context, seeds and autocast.

Randomness: one generator per purpose (init, labelled order, unlabelled order, augmentation, MixUp), all derived
from (train.seed, split seed) and all saved in checkpoints, so a resumed run continues the same stream. The
augmentation and MixUp generators are per rank; rank 0 of a fresh run uses the purpose's own seed, so one process
trains exactly as before.
"""

from __future__ import annotations

import dataclasses

import numpy as np
import torch
from torch import nn

from .. import distributed
from ..distributed import Dist
from ..errors import RealmixError
from ..hardware import channels_last_crash, check_channels_last, pick_device, pick_precision, precision_name
from ..params import TrainParams

KIMG = 1024


@dataclasses.dataclass(frozen=True)
class FastPath:
    """The resolved fast-path switches of train.channels_last / compile / fused_adam / pin_memory."""

    channels_last: bool
    compile: bool
    fused_adam: bool
    pin_memory: bool


def pick_fast_path(t: TrainParams, device: torch.device, model: nn.Module | None = None) -> FastPath:
    """`auto` means on for CUDA and off elsewhere, except channels_last: on for CPUs too (measured faster on AVX2
    and AVX512-BF16 CPUs: docs/benchmarks.md, "The CPU fast path"), but off where it would meet oneDNN's crash
    with `model` (hardware.channels_last_crash), where `true` is refused. Pinned memory needs CUDA."""
    cuda = device.type == "cuda"
    if t.pin_memory is True and not cuda:
        raise RealmixError("params: train.pin_memory=true needs a CUDA device (page-locked memory feeds GPU "
                           "copies); use train.pin_memory=auto")

    def resolve(value: str | bool) -> bool:
        return cuda if value == "auto" else bool(value)

    channels_last = t.channels_last is True
    if t.channels_last is True and model is not None:
        check_channels_last(model, device)
    elif t.channels_last == "auto":
        channels_last = cuda or model is None or channels_last_crash(model, device) is None
    return FastPath(channels_last, t.compile, resolve(t.fused_adam), resolve(t.pin_memory))


def derive_seed(ss: np.random.SeedSequence) -> int:
    """A 63-bit integer seed (for torch generators) from a seed sequence."""
    return int(ss.generate_state(1, np.uint64)[0] >> np.uint64(1))


def rank_seed(ss: np.random.SeedSequence, rank: int, *key: int) -> np.random.SeedSequence:
    """`ss` itself for rank 0 of a fresh run (so one process trains exactly as before); otherwise a child keyed
    by the rank (and by `key`: the world size and image clock of a resume in another world size)."""
    if rank == 0 and not key:
        return ss
    return np.random.SeedSequence(ss.entropy, spawn_key=(*ss.spawn_key, rank, *key))


@dataclasses.dataclass(frozen=True)
class Seeds:
    """The run's seed per purpose, spawned from (train.seed, split seed) in this order."""

    init: np.random.SeedSequence  # the network's initial weights
    label: np.random.SeedSequence  # labelled order
    unlabel: np.random.SeedSequence  # unlabelled order
    augment: np.random.SeedSequence  # augmentation draws (per rank)
    mixup: np.random.SeedSequence  # the algorithm's MixUp lambdas and partners (per rank)


class Runtime:
    """The device, precision, fast path, distributed context and seeds of one run."""

    def __init__(self, t: TrainParams, split_seed: int, *, device: torch.device | None = None,
                 dist: Dist | None = None):
        self.params = t
        self.dist = dist or distributed.current()
        self.device = device or self.dist.place(pick_device(t.device))
        if t.threads and self.device.type == "cpu":
            torch.set_num_threads(t.threads)
        self.autocast_dtype = pick_precision(t.precision, self.device)
        self.seeds = Seeds(*np.random.SeedSequence([t.seed, split_seed]).spawn(5))
        self.fast: FastPath  # resolved against the network by place_model

    @property
    def precision(self) -> str:
        """"bf16" or "fp32": what the forwards compute in (train.precision resolved here)."""
        return precision_name(self.autocast_dtype)

    def share(self, batch: int) -> int:
        """This rank's share of a global batch (all of it in one process)."""
        world = self.dist.world_size
        if batch % world:
            raise RealmixError(f"params: train.batch={batch} is not divisible by the {world} processes; use a "
                               f"multiple of {world}")
        return batch // world

    def rank_seed(self, purpose: np.random.SeedSequence, *key: int) -> np.random.SeedSequence:
        """This rank's seed of a per-rank purpose (`key`: a resume in another world size)."""
        return rank_seed(purpose, self.dist.rank, *key)

    def place_model(self, model: nn.Module) -> nn.Module:
        """`model` on the device, in the fast path's layout (resolved here, against the network): the weights'
        layout; models.to_input feeds NCHW and the convs follow the weights."""
        model = model.to(self.device)
        self.fast = pick_fast_path(self.params, self.device, model)
        if self.fast.channels_last:
            model.to(memory_format=torch.channels_last)
        return model

    def autocast(self) -> torch.autocast:
        """Forwards in bf16 where train.precision says so (backward, optimiser, decay and EMA stay float32)."""
        return torch.autocast(self.device.type, dtype=self.autocast_dtype or torch.bfloat16,
                              enabled=self.autocast_dtype is not None)
