"""The readers' contract: what every upstream reader returns (realmix/sources/__init__.py writes it as a store)."""

from __future__ import annotations

from collections.abc import Iterable
from dataclasses import dataclass, field
from typing import Any

import numpy as np

Chunks = Iterable[tuple[np.ndarray, np.ndarray]]


@dataclass
class RawDataset:
    class_names: list[str]
    subsets: dict[str, Chunks]  # e.g. train, test, unlabeled, extra
    meta: dict[str, Any] = field(default_factory=dict)
    extras: dict[str, Any] = field(default_factory=dict)  # extra JSON files written beside the arrays
