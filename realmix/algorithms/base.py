"""The algorithm contract: a batch in, a loss and logs out."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any, ClassVar

import numpy as np
from torch import Tensor, nn


@dataclass
class Batch:
    """One step's inputs, already augmented and on the training device (float images in [-1, 1])."""

    x: Tensor  # labelled images, B x C x H x W
    y: Tensor  # their labels (int64), B
    u: tuple[Tensor, ...] = ()  # `views` augmentations of the same B unlabelled images


@dataclass(frozen=True)
class Progress:
    """The step clock, in images (the original's global step): every schedule reads it."""

    images: int  # labelled images seen before this step
    total: int  # images of the whole run

    @property
    def fraction(self) -> float:
        return min(self.images / self.total, 1.0)

    def ramp(self, kimg: float) -> float:
        """Linear ramp 0 -> 1 over the first `kimg` (1 from the start when kimg is 0)."""
        return 1.0 if kimg <= 0 else min(self.images / (kimg * 1024), 1.0)


@dataclass
class StepOut:
    loss: Tensor  # scalar to backward
    logs: dict[str, Tensor | float] = field(default_factory=dict)  # read by the loop only at report time


class Algorithm:
    """Base class: subclasses set `name`, `views` and implement `train_step`."""

    name: ClassVar[str]
    views: ClassVar[int] = 0

    def __init__(self, params: Any, *, num_classes: int, rng: np.random.Generator, tsa: str = "none"):
        self.params = params
        self.num_classes = num_classes
        self.rng = rng  # MixUp lambdas and partners; its state is checkpointed by the loop
        self.tsa = tsa
        # the EMA of the model's weights (BN buffers copied from the model), set by the loop; teacher methods read it
        self.teacher: nn.Module | None = None

    def check_batch(self, batch_size: int) -> None:
        """Raise ValueError when the batch size cannot work with this algorithm."""

    def train_step(self, model: nn.Module, batch: Batch, progress: Progress) -> StepOut:
        raise NotImplementedError
