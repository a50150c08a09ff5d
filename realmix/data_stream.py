"""Training-time data: endless seeded index streams and image banks gathered on the training device."""

from __future__ import annotations

import numpy as np
import torch
from torch import Tensor

from .hardware import to_device
from .store import ShardedArray, VirtualPool

DEVICE_BYTES = 2 << 30  # image sets up to this size live on the training device; larger ones are gathered per step


class IndexStream:
    """Endless shuffled passes over range(n), one fresh permutation per pass.

    The state is the generator state at the start of the current pass plus the position in it, so a restored
    stream regenerates the same permutation and continues mid-pass.
    """

    def __init__(self, n: int, rng: np.random.Generator):
        if n < 1:
            raise ValueError("cannot sample from an empty set")
        self.n = n
        self.rng = rng
        self._new_pass()

    def _new_pass(self) -> None:
        self._pass_state = self.rng.bit_generator.state
        self.perm = self.rng.permutation(self.n)
        self.pos = 0

    def next(self, k: int) -> np.ndarray:
        out = []
        while k > 0:
            if self.pos == self.n:
                self._new_pass()
            take = min(k, self.n - self.pos)
            out.append(self.perm[self.pos:self.pos + take])
            self.pos += take
            k -= take
        return np.concatenate(out)

    def state_dict(self) -> dict:
        return {"pass_state": self._pass_state, "pos": self.pos, "n": self.n}

    def load_state_dict(self, state: dict) -> None:
        if state["n"] != self.n:
            raise ValueError(f"index stream over {state['n']} items cannot resume over {self.n}")
        self.rng.bit_generator.state = state["pass_state"]
        self._new_pass()
        self.pos = int(state["pos"])


class ImageBank:
    """uint8 images of one subset, gathered by index into an N x C x H x W tensor (channels-last memory).

    Sets up to `device_bytes` are copied once onto the training device; larger ones stay memory-mapped on the
    host and each batch is copied per step (through pinned memory with `pin`).
    """

    def __init__(self, images: ShardedArray | np.ndarray, device: torch.device, device_bytes: int = DEVICE_BYTES,
                 *, pin: bool = False):
        self.device = device
        nbytes = int(np.prod(images.shape))
        self.on_device = nbytes <= device_bytes
        if self.on_device:
            self.images = torch.from_numpy(np.array(images[:])).to(device)
        else:
            self.host = images
        self._pin = pin

    def __len__(self) -> int:
        return len(self.images) if self.on_device else len(self.host)

    def gather(self, index: np.ndarray | None, device_index: Tensor | None = None) -> Tensor:
        """The images at `index`; `device_index` (the same indices already on the device) saves a copy (and
        then `index` may be None when the images are on the device)."""
        if self.on_device:
            idx = device_index if device_index is not None else to_device(index, self.device, pin=self._pin)
            batch = self.images[idx]
        else:
            batch = to_device(np.asarray(self.host[index]), self.device, pin=self._pin)
        return batch.permute(0, 3, 1, 2)  # NHWC memory seen as NCHW: channels-last


class PoolBank:
    """A virtual pre-augmented pool (realmix/store/virtual.py) gathered like an `ImageBank`: its source images are
    banked (on the device when they fit) with the pool's position -> item order, and each batch of pool images
    is computed from its source images on the training device. Bit for bit the materialized pool's images."""

    def __init__(self, pool: VirtualPool, device: torch.device, device_bytes: int = DEVICE_BYTES, *,
                 pin: bool = False):
        self.pool, self.device, self._pin = pool, device, pin
        self.source = ImageBank(pool.source_images, device, device_bytes, pin=pin)
        self.order = torch.from_numpy(pool.order).to(device) if self.source.on_device else None

    def __len__(self) -> int:
        return len(self.pool)

    def gather(self, index: np.ndarray, device_index: Tensor | None = None) -> Tensor:
        """The pool images at positions `index` (N x C x H x W uint8, channels-last memory)."""
        n = self.pool.n
        if self.order is not None:  # all on the device: no host work per batch
            idx = device_index if device_index is not None else to_device(index, self.device, pin=self._pin)
            items = self.order[idx].long()
            x = self.source.gather(None, items % n)
        else:
            host_items = self.pool.order[index].astype(np.int64)
            x = self.source.gather(host_items % n)
            items = to_device(host_items, self.device, pin=self._pin)
        return self.pool.gather(x, items)


def image_bank(images: ShardedArray | np.ndarray | VirtualPool, device: torch.device,
               device_bytes: int = DEVICE_BYTES, *, pin: bool = False) -> ImageBank | PoolBank:
    """The bank for a subset's images, stored or virtual: one interface for the training loop."""
    if isinstance(images, VirtualPool):
        return PoolBank(images, device, device_bytes, pin=pin)
    return ImageBank(images, device, device_bytes, pin=pin)
