"""Dataset stores, the one on-disk format every stage reads and writes.

- base.py: the format (`Store`, `Subset`, `ShardedArray`, file names, hashes) and the opener table `Store.open`
  reads;
- writer.py: `StoreWriter`, which writes a store atomically;
- virtual.py: the virtual pre-augmented pool (a split stored as its recipe), which adds its opener to the table;
- filtered.py: the filtered split (a split whose pool is the kept positions of its source's), likewise.

Importing the package imports every format, so `Store.open` opens each.
"""

from __future__ import annotations

from .base import (
    CLASS_MAPPING,
    FORMAT,
    MANIFEST,
    NAMES,
    OPENERS,
    UNKNOWN,
    UNKNOWN_NAME,
    ShardedArray,
    Store,
    Subset,
    recipe_identity,
    sha256_array,
    write_json,
)
from .filtered import FILTERED_FORMAT, KEPT, FilteredStore, IndexedArray, write_filtered
from .virtual import (
    CHUNK,
    POOL,
    STORAGES,
    VIRTUAL_FORMAT,
    VirtualPool,
    VirtualStore,
    VirtualSubset,
    augment_items,
    item_order,
    original_positions,
)
from .writer import StoreWriter

__all__ = ["CHUNK", "CLASS_MAPPING", "FILTERED_FORMAT", "FORMAT", "KEPT", "FilteredStore", "IndexedArray",
           "write_filtered", "MANIFEST", "NAMES", "OPENERS", "POOL", "STORAGES", "UNKNOWN",
           "UNKNOWN_NAME", "VIRTUAL_FORMAT", "ShardedArray", "Store", "StoreWriter", "Subset", "VirtualPool",
           "VirtualStore", "VirtualSubset", "augment_items", "item_order", "original_positions", "recipe_identity",
           "sha256_array", "write_json"]
