"""Training algorithms behind one small interface, and their registry: the one list of algorithm names.

The loop owns the mechanics (sampling, augmentation, backward, optimiser, weight decay, EMA, evaluation,
checkpoints, logging); an algorithm owns the loss of one step and declares what it needs from the loop
(`base.Needs`: its unlabelled views, mu, open heads, the EMA teacher, the top-level params it reads):

    algo = build_algorithm("realmix", params.realmix, num_classes=10, rng=np.random.default_rng(0),
                           **params.scalars())   # RealMix takes the top-level `tsa` it declares
    out = algo.train_step(model, batch, progress)   # out.loss (a tensor to backward), out.logs (tensors)

Each registry entry ties a name to its params.yaml section (a dataclass of `sections.py`, parsed by
`realmix.params`) and its Algorithm class. The params sections, `train.*algorithms` checks, the pipeline's and
CLI's lists and the docs' checks all derive from `ALGORITHMS`. To add an algorithm: its section dataclass in
`sections.py`, its class (with `declare`) in a module here, one entry below, its section in params.yaml and a row
in docs/training.md's table.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import numpy as np

from . import sections
from .base import Algorithm
from .baselines import VAT, PiModel, PseudoLabel, SSLMixUp, SupervisedMixUp
from .fixmatch import FixMatch
from .iomatch import IOMatch
from .mixmatch import MixMatch
from .realmix import RealMix
from .supervised import Supervised
from .teachers import ICT, MeanTeacher


@dataclass(frozen=True)
class Entry:
    """A registered algorithm: its params section's dataclass and its class."""

    params: type[sections.AlgorithmParams]
    algorithm: type[Algorithm]


# name -> entry, in params.yaml's order (the order of the sections, the CLI's help and the test sweeps)
ALGORITHMS: dict[str, Entry] = {
    "supervised": Entry(sections.SupervisedParams, Supervised),
    "supervised_mixup": Entry(sections.SupervisedMixUpParams, SupervisedMixUp),
    "pi_model": Entry(sections.PiModelParams, PiModel),
    "pseudo_label": Entry(sections.PseudoLabelParams, PseudoLabel),
    "mean_teacher": Entry(sections.MeanTeacherParams, MeanTeacher),
    "ict": Entry(sections.ICTParams, ICT),
    "vat": Entry(sections.VATParams, VAT),
    "mixup": Entry(sections.SSLMixUpParams, SSLMixUp),
    "mixmatch": Entry(sections.MixMatchParams, MixMatch),
    "realmix": Entry(sections.RealMixParams, RealMix),
    "fixmatch": Entry(sections.FixMatchParams, FixMatch),
    "iomatch": Entry(sections.IOMatchParams, IOMatch),
}

__all__ = ["ALGORITHMS", "Entry", "build_algorithm"]


def build_algorithm(name: str, params: Any, *, num_classes: int, rng: np.random.Generator, **top_level: Any
                    ) -> Algorithm:
    """The algorithm `name` with its section `params`. `top_level`: the top-level params on offer (e.g.
    `Params.scalars()`); the algorithm gets exactly those its `declare` lists in `Needs.reads`, the others keep
    their defaults."""
    if name not in ALGORITHMS:
        raise ValueError(f"unknown algorithm {name!r}; choose one of: {', '.join(ALGORITHMS)}")
    cls = ALGORITHMS[name].algorithm
    reads = {k: top_level[k] for k in cls.declare(params).reads if k in top_level}
    return cls(params, name=name, num_classes=num_classes, rng=rng, **reads)
