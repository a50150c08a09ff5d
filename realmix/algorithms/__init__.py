"""Training algorithms behind one small interface.

The loop owns the mechanics (sampling, augmentation, backward, Adam, weight decay, EMA, evaluation,
checkpoints, logging); an algorithm owns the loss of one step:

    algo = build_algorithm("realmix", params.realmix, num_classes=10, rng=np.random.default_rng(0), tsa="none")
    out = algo.train_step(model, batch, progress)   # out.loss (a tensor to backward), out.logs (tensors)

`views` says how many augmented views of each unlabelled image the loop must supply (0: none needed).
"""

from __future__ import annotations

from typing import Any

import numpy as np

from .base import Algorithm, Batch, Progress, StepOut
from .baselines import VAT, PiModel, PseudoLabel, SSLMixUp, SupervisedMixUp
from .fixmatch import FixMatch
from .iomatch import IOMatch
from .mixmatch import MixMatch
from .realmix import RealMix
from .supervised import Supervised
from .teachers import ICT, MeanTeacher

ALGORITHMS: dict[str, type[Algorithm]] = {
    cls.name: cls for cls in (Supervised, SupervisedMixUp, PiModel, PseudoLabel, MeanTeacher, ICT, VAT, SSLMixUp,
                              MixMatch, RealMix, FixMatch, IOMatch)}

__all__ = ["ALGORITHMS", "Algorithm", "Batch", "Progress", "StepOut", "build_algorithm"]


def build_algorithm(name: str, params: Any, *, num_classes: int, rng: np.random.Generator, tsa: str = "none"
                    ) -> Algorithm:
    if name not in ALGORITHMS:
        raise ValueError(f"unknown algorithm {name!r}; choose one of: {', '.join(ALGORITHMS)}")
    return ALGORITHMS[name](params, num_classes=num_classes, rng=rng, tsa=tsa)
