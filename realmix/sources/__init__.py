"""Readers of upstream datasets, one module per upstream format, all producing the same store.

Every reader returns a `RawDataset`: class names plus, per subset, an iterable of (images, labels) chunks
(uint8 N x H x W x C, int64 with -1 for unknown). `build_dataset` streams those chunks into a store, so a
reader of a multi-GB archive never has to hold it in memory at once.
"""

from __future__ import annotations

import importlib
from collections.abc import Callable
from pathlib import Path

from ..params import DatasetParams
from ..store import Store, StoreWriter
from .raw import Chunks, RawDataset  # the readers' contract (readers import it from there)

# source name -> "module:function" taking DatasetParams and returning a RawDataset
READERS: dict[str, str] = {
    "digits": "realmix.sources.digits:load",
    "cifar10": "realmix.sources.cifar:load_cifar10",
    "cifar100": "realmix.sources.cifar:load_cifar100",
    "svhn": "realmix.sources.svhn:load",
    "stl10": "realmix.sources.stl10:load",
    "fashion_mnist": "realmix.sources.fashion_mnist:load",
    "folder": "realmix.sources.folder:load",
}


def reader(source: str) -> Callable[[DatasetParams], RawDataset]:
    module, func = READERS[source].split(":")
    return getattr(importlib.import_module(module), func)


def build_dataset(p: DatasetParams, out: str | Path) -> Store:
    """Read the configured source and write it as a store at `out` (atomically)."""
    raw = reader(p.source)(p)
    meta = {"source": p.source, **raw.meta}
    with StoreWriter(out, raw.class_names, name=p.name, meta=meta) as w:
        for subset, chunks in raw.subsets.items():
            for images, labels in chunks:
                w.add(subset, images, labels)
        for filename, obj in raw.extras.items():
            w.write_json(filename, obj)
    return Store.open(out)


__all__ = ["READERS", "Chunks", "RawDataset", "build_dataset", "reader"]
