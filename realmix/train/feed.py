"""The training feed: this rank's labelled and unlabelled images of every step, sampled and augmented on the
training device.

Data parallel (realmix/distributed.py): `train.batch` is the global labelled batch. Every rank draws the same
global index streams and takes its own slice of each global batch (batch / world size labelled images and mu
times as many unlabelled ones), and augments them with its own generator. Indices reach the device through
pinned memory on CUDA, so sampling needs no host synchronisation.
"""

from __future__ import annotations

from typing import Any

import numpy as np
import torch
from torch import Tensor

from ..algorithms.base import Algorithm, Batch
from ..augment import augment_batch, rand_augment
from ..data_stream import DEVICE_BYTES, ImageBank, IndexStream, image_bank
from ..errors import RealmixError
from ..hardware import to_device
from ..models import to_input
from ..openset import ood_flags
from ..params import TrainParams
from ..store import Store
from .runtime import Runtime, derive_seed


class TrainingFeed:
    """Image banks, index streams and the augmentation generator of one run; `next_batch` gives a step's inputs."""

    def __init__(self, store: Store, algo: Algorithm, t: TrainParams, runtime: Runtime, *, algorithm: str,
                 device_bytes: int = DEVICE_BYTES):
        self.rt, self.params, self.algo = runtime, t, algo
        self.batch = t.batch  # global: all ranks together
        self.local_batch = runtime.share(self.batch)
        device, pin = runtime.device, runtime.fast.pin_memory
        label = store.subset("label")
        if label.count == 0:
            raise RealmixError(f"{store.path}: the labelled subset is empty; nothing to train on")
        labels = label.labels
        if labels.min() < 0 or labels.max() >= store.num_classes:
            raise RealmixError(f"{store.path}: labelled images must have known classes 0..{store.num_classes - 1}")
        self.label_bank = ImageBank(label.images, device, device_bytes, pin=pin)
        self.label_y = torch.from_numpy(labels).to(device)
        self.label_stream = IndexStream(label.count, np.random.default_rng(runtime.seeds.label))
        self.unlabel_bank = self.unlabel_stream = self.unlabel_ood = None
        if algo.needs.views:
            unlabel = store.subset("unlabel")
            if unlabel.count == 0:
                raise RealmixError(f"{store.path}: {algorithm} needs unlabelled images but the split has none")
            # a pre-augmented pool stored virtually is computed here, per batch, on the training device
            self.unlabel_bank = image_bank(unlabel.images, device, device_bytes, pin=pin)
            self.unlabel_stream = IndexStream(unlabel.count, np.random.default_rng(runtime.seeds.unlabel))
            ood = ood_flags(store, "unlabel")  # class-mismatch splits: log how much out-of-class data masks admit
            self.unlabel_ood = None if ood is None else torch.from_numpy(ood).to(device)
        self.aug_gen = torch.Generator(device).manual_seed(derive_seed(runtime.rank_seed(runtime.seeds.augment)))

    def augment(self, images: Tensor, kinds: tuple[str, ...] = ("weak",)) -> tuple[Tensor, ...]:
        """Network inputs for `images` (uint8), one per entry of `kinds`: "weak" = train.augment, "strong" =
        train.augment then RandAugment + Cutout (the algorithm's `strong` settings). All views are drawn in one
        batched call per augmentation, every image of every view with its own draws."""
        t = self.params
        n = len(images)
        base = augment_batch(images.repeat(len(kinds), 1, 1, 1) if len(kinds) > 1 else images, t.augment,
                             self.aug_gen, cutout_prob=t.cutout_prob)
        if "strong" in kinds:
            strong = [i for i, k in enumerate(kinds) if k == "strong"]
            heavy = rand_augment(torch.cat([base[i * n:(i + 1) * n] for i in strong]), self.aug_gen,
                                 **self.algo.strong).split(n)
            views = list(base.split(n))
            for i, v in zip(strong, heavy, strict=True):
                views[i] = v
            return tuple(to_input(v) for v in views)
        return to_input(base).split(n)

    def _local(self, stream: IndexStream, ratio: int = 1) -> np.ndarray:
        """This rank's slice of the next global batch (ratio x train.batch indices) of a stream (every rank draws
        the same global batch)."""
        size = self.local_batch * ratio
        start = self.rt.dist.rank * size
        return stream.next(self.batch * ratio)[start:start + size]

    def next_batch(self) -> Batch:
        """Sample and augment this rank's share of one batch on the training device."""
        device, pin = self.rt.device, self.rt.fast.pin_memory
        idx = self._local(self.label_stream)
        idx_d = to_device(idx, device, pin=pin)
        (x,) = self.augment(self.label_bank.gather(idx, idx_d))
        y = self.label_y[idx_d]
        views: tuple[Tensor, ...] = ()
        ood = None
        if self.algo.needs.views:
            uidx = self._local(self.unlabel_stream, self.algo.needs.mu)
            uidx_d = to_device(uidx, device, pin=pin)
            views = self.augment(self.unlabel_bank.gather(uidx, uidx_d), self.algo.needs.views)
            if self.unlabel_ood is not None:
                ood = self.unlabel_ood[uidx_d]
        return Batch(x, y, views, ood)

    def state_dict(self) -> dict[str, Any]:
        """The global streams' positions (the same on every rank, so they resume in any world size)."""
        return {"label": self.label_stream.state_dict(),
                "unlabel": self.unlabel_stream.state_dict() if self.unlabel_stream else None}

    def load_state_dict(self, state: dict[str, Any]) -> None:
        self.label_stream.load_state_dict(state["label"])
        if self.unlabel_stream is not None:
            self.unlabel_stream.load_state_dict(state["unlabel"])
