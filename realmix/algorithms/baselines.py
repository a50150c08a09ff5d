"""Baselines of the original repository that need no teacher model (method reference §E).

`supervised_mixup` (fully supervised, the original fs_mixup), `pi_model` and `pseudo_label`. As in the original,
only the labelled forward updates the BN running statistics; the unlabelled loss weight ramps up linearly over
the first `warmup_pos` of training; the labelled loss is plain cross-entropy (the original passed `smoothing`
to these models but never used it).
"""

from __future__ import annotations

import torch
from torch import Tensor, nn

from ..ops import frozen_bn_stats, mix_reversed
from .base import Algorithm, Batch, Progress, StepOut
from .supervised import soft_cross_entropy


class SupervisedMixUp(Algorithm):
    name = "supervised_mixup"
    views = 0

    def train_step(self, model: nn.Module, batch: Batch, progress: Progress) -> StepOut:
        onehot = nn.functional.one_hot(batch.y, self.num_classes).float()
        x, targets = mix_reversed(batch.x, onehot, self.params.beta, self.rng)
        loss = soft_cross_entropy(model(x), targets).mean()
        return StepOut(loss, {"loss_x": loss.detach()})


class _Consistency(Algorithm):
    """Cross-entropy on the labelled batch + ramped weight x an unlabelled loss computed by `unsupervised`."""

    def train_step(self, model: nn.Module, batch: Batch, progress: Progress) -> StepOut:
        loss_x = nn.functional.cross_entropy(model(batch.x), batch.y)
        with frozen_bn_stats(model):  # only the labelled forward updates BN running statistics
            loss_u, logs = self.unsupervised(model, batch.u)
        w = self.params.consistency * min(progress.fraction / self.params.warmup_pos, 1.0)
        loss = loss_x + w * loss_u
        return StepOut(loss, {"loss_x": loss_x.detach(), "loss_u": loss_u.detach(), "w_consistency": w, **logs})

    def unsupervised(self, model: nn.Module, views: tuple[Tensor, ...]) -> tuple[Tensor, dict]:
        raise NotImplementedError


class PiModel(_Consistency):
    name = "pi_model"
    views = 2

    def unsupervised(self, model: nn.Module, views: tuple[Tensor, ...]) -> tuple[Tensor, dict]:
        """Mean squared error between softmax(f(view 1)) (no gradient: the target) and softmax(f(view 2))."""
        with torch.no_grad():
            target = model(views[0]).softmax(-1)
        return (target - model(views[1]).softmax(-1)).square().mean(), {}


class PseudoLabel(_Consistency):
    name = "pseudo_label"
    views = 1

    def unsupervised(self, model: nn.Module, views: tuple[Tensor, ...]) -> tuple[Tensor, dict]:
        """CE against the argmax of the model's own prediction, for rows more confident than `threshold`,
        averaged over all unlabelled rows."""
        logits = model(views[0])
        confidence, pseudo = logits.detach().softmax(-1).max(-1)
        keep = (confidence > self.params.threshold).to(logits.dtype)
        ce = nn.functional.cross_entropy(logits, pseudo, reduction="none")
        return (ce * keep).mean(), {"pseudo_kept": keep.mean()}
