"""realmix.draws: the counter-based hash is splitmix64 bit for bit, and its draws are random access."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from realmix import augment
from realmix.draws import GOLDEN, M1, M2, MASK64, STEP, HashDraws, derive_key, hash64


def splitmix64(key: int, item: int, draw: int) -> int:
    """The reference, in Python's unbounded integers reduced modulo 2**64."""
    x = (key + item * GOLDEN + draw * STEP) & MASK64
    x = ((x ^ (x >> 30)) * M1) & MASK64
    x = ((x ^ (x >> 27)) * M2) & MASK64
    return x ^ (x >> 31)


def test_hash_is_the_uint64_function_bit_for_bit():
    items = [0, 1, 2, 3, 12345, 2**31 - 1, 2**31, 2**40 + 7, 2**62 + 3]
    for key in (0, 1, 2**63 + 11, MASK64, derive_key(1, 1)):
        for draw in (0, 1, 7, 1000):
            got = hash64(key, torch.tensor(items), draw).numpy().view(np.uint64).tolist()
            assert got == [splitmix64(key, i, draw) for i in items]


def test_unit_draws_are_exact_float32_and_uniform():
    d = HashDraws(derive_key(1, 1), torch.arange(100_000))
    u = d.unit(100_000)
    assert u.dtype == torch.float32 and 0.0 <= float(u.min()) and float(u.max()) < 1.0
    assert torch.equal(u * 2**24, torch.floor(u * 2**24))  # multiples of 2**-24: the top 24 bits exactly
    assert abs(float(u.mean()) - 0.5) < 0.01 and abs(float((u < 0.25).float().mean()) - 0.25) < 0.01
    k = d.integers(-4, 5, 100_000)
    assert k.min() == -4 and k.max() == 4
    assert np.allclose(np.bincount((k + 4).numpy()) / 100_000, 1 / 9, atol=0.005)


def test_draws_are_a_function_of_item_and_draw_index_only():
    key = derive_key(7, 1)
    items = torch.tensor([5, 900, 3, 42, 17])
    perm = torch.tensor([3, 0, 4, 1, 2])
    a, b = HashDraws(key, items), HashDraws(key, items[perm])
    for _ in range(3):  # any batch order: the same values per item, call after call
        assert torch.equal(a.unit(5)[perm], b.unit(5))
    rows = torch.tensor([1, 3])
    full = HashDraws(key, items)
    part = HashDraws(key, items)
    assert torch.equal(full.integers(0, 1000, 5)[rows], part.integers(0, 1000, 2, rows))  # rows: drawn, selected
    assert not torch.equal(HashDraws(key, items).unit(5), HashDraws(derive_key(8, 1), items).unit(5))
    with pytest.raises(ValueError, match="3 draws"):
        HashDraws(key, items).unit(3)


def test_a_reserved_block_takes_a_fixed_range_of_draw_indices():
    items = torch.arange(4)
    short, long = HashDraws(1, items), HashDraws(1, items)
    with short.reserve(10):
        short.unit(4)
    with long.reserve(10):
        for _ in range(7):
            long.unit(4)
    assert torch.equal(short.unit(4), long.unit(4))  # what follows does not depend on the block's draws
    over = HashDraws(1, items)
    with pytest.raises(RuntimeError, match="reserved 1"), over.reserve(1):
        over.unit(4)
        over.unit(4)


@pytest.mark.parametrize("kind", ["cifar10", "color", "cutout"])
def test_ops_give_each_item_the_same_image_in_any_batch(kind):
    """The augmentation of an item depends on (key, item) only: alone, in a batch, in any order."""
    x = torch.randint(0, 256, (12, 3, 10, 10), dtype=torch.uint8)
    items = torch.arange(100, 112)
    whole = augment.augment_batch(x, kind, HashDraws(3, items), cutout_prob=0.6)
    perm = torch.randperm(12, generator=torch.Generator().manual_seed(0))
    shuffled = augment.augment_batch(x[perm], kind, HashDraws(3, items[perm]), cutout_prob=0.6)
    assert torch.equal(whole[perm], shuffled)
    for i in (0, 5, 11):
        alone = augment.augment_batch(x[i:i + 1], kind, HashDraws(3, items[i:i + 1]), cutout_prob=0.6)
        assert torch.equal(alone[0], whole[i])
    assert not torch.equal(whole, x)
