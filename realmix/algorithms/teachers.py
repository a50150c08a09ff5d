"""Baselines with an EMA teacher (method reference §E): Mean Teacher and ICT.

The teacher is the loop's EMA of the model (`Algorithm.teacher`, set by the loop as both declare
`Needs(teacher=True)`), run as in the original: in training mode (batch statistics), without gradient, and
without touching any running statistics.
"""

from __future__ import annotations

import contextlib
from collections.abc import Iterator
from typing import Any

import torch
from torch import Tensor, nn

from ..ops import frozen_bn_stats, mix_reversed
from .base import Needs
from .consistency import Consistency


@contextlib.contextmanager
def teacher_mode(teacher: nn.Module | None) -> Iterator[nn.Module]:
    """The EMA teacher in train mode (batch statistics), no gradient, running statistics untouched."""
    if teacher is None:
        raise RuntimeError("this algorithm needs an EMA teacher: set `algorithm.teacher` (the loop does where "
                           "`needs.teacher`)")
    was_training = teacher.training
    teacher.train()
    try:
        with torch.no_grad(), frozen_bn_stats(teacher):
            yield teacher
    finally:
        teacher.train(was_training)


class MeanTeacher(Consistency):
    @classmethod
    def declare(cls, params: Any) -> Needs:
        return Needs(views=("weak", "weak"), teacher=True)

    def unsupervised(self, model: nn.Module, views: tuple[Tensor, ...]) -> tuple[Tensor, dict]:
        """MSE between the teacher's softmax on view 1 and the model's softmax on view 2."""
        with teacher_mode(self.teacher) as teacher:
            target = teacher(views[0]).softmax(-1)
        return (target - model(views[1]).softmax(-1)).square().mean(), {}


class ICT(Consistency):
    @classmethod
    def declare(cls, params: Any) -> Needs:
        return Needs(views=("weak",), teacher=True)

    def unsupervised(self, model: nn.Module, views: tuple[Tensor, ...]) -> tuple[Tensor, dict]:
        """MSE between the model on mix(u, reversed u) and the same mix of the teacher's softmax on u."""
        u = views[0]
        with teacher_mode(self.teacher) as teacher:
            target = teacher(u).softmax(-1)
        mixed_u, mixed_target = mix_reversed(u, target, self.params.beta, self.rng)
        return (mixed_target - model(mixed_u).softmax(-1)).square().mean(), {}
