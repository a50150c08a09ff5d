"""Counter-based random draws: every draw of every item a pure function of (key, item, draw index).

The training loop draws its augmentations from a checkpointed `torch.Generator`: a stream, so a draw depends on
every draw before it. A pre-augmented pool needs random access instead -- item j of the pool must come out the
same whether it is computed alone, in any batch, in any order, on CPU or CUDA -- so its draws are hashes:

    h = splitmix64_finaliser(key + item * GOLDEN + draw * STEP)

computed with int64 tensor arithmetic (torch has no uint64 arithmetic on every version). Multiplication and
addition wrap modulo 2**64 in two's complement, which is what uint64 arithmetic gives bit for bit; right shifts
of int64 are arithmetic, so every logical shift masks off the copied sign bits. A uniform float takes the top 24
bits of h, so its float32 value is exact; an integer in [lo, hi) is lo + (top 53 bits of h) mod (hi - lo).

`HashDraws(key, items)` hands out one such value per item and per call; the ops of realmix/augment.py take
either a generator or a `HashDraws` (`DrawSource`), so there is one piece of code per augmentation.
"""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager

import numpy as np
import torch
from torch import Tensor

MASK64 = (1 << 64) - 1
GOLDEN = 0x9E3779B97F4A7C15  # splitmix64's increment: spreads consecutive items
STEP = 0xD6E8FEB86659FD93  # an odd constant that spreads consecutive draw indices
M1 = 0xBF58476D1CE4E5B9  # splitmix64's finaliser multipliers
M2 = 0x94D049BB133111EB
VERSION = "splitmix64/1"  # recorded with every pool: changing the hash changes every pre-augmented image


def _i64(c: int) -> int:
    """A 64-bit constant as the int64 with the same bits."""
    c &= MASK64
    return c - (1 << 64) if c >= 1 << 63 else c


def _srl(x: Tensor, s: int) -> Tensor:
    """Logical right shift of int64 bits (>> on int64 copies the sign bit; the mask clears the copies)."""
    return (x >> s) & ((1 << (64 - s)) - 1)


def mix64(x: Tensor) -> Tensor:
    """splitmix64's finaliser on int64 tensors (bit for bit the uint64 function)."""
    x = (x ^ _srl(x, 30)) * _i64(M1)
    x = (x ^ _srl(x, 27)) * _i64(M2)
    return x ^ _srl(x, 31)


def hash64(key: int, items: Tensor, draw: int) -> Tensor:
    """The 64 random bits (as int64) of draw index `draw` for each item (int64 tensor) under `key`."""
    return mix64(items.to(torch.int64) * _i64(GOLDEN) + _i64(key + draw * STEP))


def derive_key(seed: int, *spawn: int) -> int:
    """A 64-bit key for `seed` (and a stream number), through numpy's SeedSequence: distinct seeds, distinct keys."""
    return int(np.random.SeedSequence(seed, spawn_key=spawn).generate_state(1, np.uint64)[0])


class HashDraws:
    """Per-item draws for a batch of pool items: call k of `unit`/`integers` gives item j hash64(key, j, k).

    The ops call it in a fixed sequence, so draw index k names the same draw (say, the flip) for every item of
    every batch. `rows` restricts a call to some items of the batch (a draw conditional on another one): the
    values are those every item would get, selected. `reserve` makes a loop whose number of calls depends on
    the batch (random erasing redraws boxes that do not fit) take a fixed range of draw indices.
    """

    def __init__(self, key: int, items: Tensor):
        self.key = int(key) & MASK64
        self.items = items.to(torch.int64)
        self.draw = 0

    @property
    def device(self) -> torch.device:
        return self.items.device

    def _bits(self, n: int, rows: Tensor | None) -> Tensor:
        items = self.items if rows is None else self.items[rows]
        if len(items) != n:
            raise ValueError(f"{n} draws asked of a batch of {len(items)} items")
        h = hash64(self.key, items, self.draw)
        self.draw += 1
        return h

    def unit(self, n: int, rows: Tensor | None = None) -> Tensor:
        """n float32 draws in [0, 1): the top 24 bits of each hash, exact in float32."""
        return _srl(self._bits(n, rows), 40).to(torch.float32) * (1.0 / (1 << 24))

    def integers(self, lo: int, hi: int, n: int, rows: Tensor | None = None) -> Tensor:
        """n int64 draws uniform in [lo, hi) (bias below 2**-40 for the small ranges used here)."""
        return _srl(self._bits(n, rows), 11) % (hi - lo) + lo

    @contextmanager
    def reserve(self, calls: int) -> Iterator[None]:
        """Give the block draw indices k .. k+calls-1 whatever number it uses; what follows starts at k+calls."""
        end = self.draw + calls
        yield
        if self.draw > end:
            raise RuntimeError(f"a block reserved {calls} draws and used {self.draw - (end - calls)}")
        self.draw = end


DrawSource = torch.Generator | HashDraws
