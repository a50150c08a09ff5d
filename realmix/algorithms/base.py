"""The algorithm contract: a batch in, a loss and logs out."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

import numpy as np
from torch import Tensor, nn


@dataclass
class Batch:
    """One step's inputs, already augmented and on the training device (float images in [-1, 1])."""

    x: Tensor  # labelled images, B x C x H x W
    y: Tensor  # their labels (int64), B
    u: tuple[Tensor, ...] = ()  # one tensor per entry of the algorithm's `needs.views`, each of the same mu*B images
    # per unlabelled image: True where it is out-of-class (class-mismatch splits, where the pool's classes are
    # known); None elsewhere. Only read for the logs of how much out-of-class data a mask lets in.
    u_ood: Tensor | None = None


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


def mask_logs(mask: Tensor, ood: Tensor | None) -> dict[str, Tensor]:
    """Counts of the unlabelled images a mask admitted into the unlabelled loss, split by out-of-class flag
    (none without flags). The loop turns their window sums into shares (train/ood_admitted, train/in_admitted)."""
    if ood is None:
        return {}
    keep = mask.detach() > 0
    ood = ood.to(keep.device)
    return {"admit_ood": (keep & ood).sum().float(), "n_ood": ood.sum().float(),
            "admit_in": (keep & ~ood).sum().float(), "n_in": (~ood).sum().float()}


@dataclass(frozen=True)
class Needs:
    """What an algorithm asks of the loop, declared once per algorithm (`Algorithm.declare`)."""

    # the augmented views of each unlabelled image, one kind per view ("weak": train.augment; "strong":
    # train.augment then RandAugment + Cutout, the algorithm's `strong` settings); (): no unlabelled images
    views: tuple[str, ...] = ()
    mu: int = 1  # unlabelled images per labelled one
    open_heads: int = 0  # projection width of IOMatch's extra heads (part of the network); 0: none
    teacher: bool = False  # reads the loop's EMA model as its teacher (`Algorithm.teacher`)
    # top-level params it reads (its constructor's keywords); the loop passes them and adds them to the run's
    # identity, so a change of one is another run
    reads: tuple[str, ...] = ()


class Algorithm:
    """Base class: subclasses implement `train_step` and, where they need more than labelled images, `declare`.

    `name` is the registry's name of the algorithm (its params section); `needs` what it declared for `params`.
    """

    strong = {"ops": 2, "magnitude_max": 10, "cutout": 0.5}  # RandAugment settings of "strong" views

    @classmethod
    def declare(cls, params: Any) -> Needs:
        """What this algorithm needs from the loop when run with the section `params` (here: labelled images only).
        A classmethod: `build_algorithm` reads `reads` before it builds the algorithm."""
        return Needs()

    def __init__(self, params: Any, *, name: str, num_classes: int, rng: np.random.Generator):
        self.params = params
        self.name = name
        self.num_classes = num_classes
        self.rng = rng  # MixUp lambdas and partners; its state is checkpointed by the loop
        self.needs = self.declare(params)
        # the EMA of the model's weights (BN buffers copied from the model), set by the loop where `needs.teacher`
        self.teacher: nn.Module | None = None

    def run_length_dependence(self) -> str | None:
        """What of this algorithm's step depends on the run's total length (so a longer run is another run from
        its first step), or None. Ramps in kimg do not; schedules over the run's fraction do."""
        return None

    def check_batch(self, batch_size: int) -> None:
        """Raise ValueError when the batch size cannot work with this algorithm."""

    def train_step(self, model: nn.Module, batch: Batch, progress: Progress) -> StepOut:
        raise NotImplementedError
