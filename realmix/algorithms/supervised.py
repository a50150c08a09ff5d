"""Fully supervised baseline: cross-entropy with label smoothing on the labelled batch (the original fs_baseline)."""

from __future__ import annotations

from torch import nn

from ..ops import smooth_labels, soft_cross_entropy
from .base import Algorithm, Batch, Progress, StepOut


class Supervised(Algorithm):
    def train_step(self, model: nn.Module, batch: Batch, progress: Progress) -> StepOut:
        targets = smooth_labels(batch.y, self.num_classes, self.params.smoothing)
        loss = soft_cross_entropy(model(batch.x), targets).mean()
        return StepOut(loss, {"loss_x": loss.detach()})
