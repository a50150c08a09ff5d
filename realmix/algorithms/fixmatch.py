"""FixMatch (Sohn et al. 2020), as the official code's `fixmatch.py`.

One forward over [labelled; weak views; strong views] (batch-norm statistics of the whole batch, as the
reference); the weak view's argmax becomes the pseudo-label of the strong view where the weak view's max
probability reaches `threshold`; the unlabelled cross-entropy is averaged over all mu*B rows.
"""

from __future__ import annotations

from typing import Any

import torch
from torch import nn
from torch.nn.functional import cross_entropy

from .base import Algorithm, Batch, Needs, Progress, StepOut, mask_logs


class FixMatch(Algorithm):
    @classmethod
    def declare(cls, params: Any) -> Needs:
        return Needs(views=("weak", "strong"), mu=params.mu)

    @property
    def strong(self) -> dict:  # type: ignore[override]
        p = self.params
        return {"ops": p.ra_ops, "magnitude_max": p.ra_magnitude, "cutout": p.cutout}

    def train_step(self, model: nn.Module, batch: Batch, progress: Progress) -> StepOut:
        p = self.params
        n = len(batch.x)
        weak, strong = batch.u
        logits = model(torch.cat([batch.x, weak, strong]))
        logits_x = logits[:n]
        logits_weak, logits_strong = logits[n:].chunk(2)
        loss_x = cross_entropy(logits_x, batch.y)
        # pseudo-labels: the weak view's argmax where its confidence reaches the threshold (no gradient)
        confidence, pseudo = logits_weak.detach().softmax(-1).max(-1)
        mask = (confidence >= p.threshold).float()
        loss_u = (cross_entropy(logits_strong, pseudo, reduction="none") * mask).mean()
        loss = loss_x + p.lambda_u * loss_u
        return StepOut(loss, {"loss_x": loss_x.detach(), "loss_u": loss_u.detach(), "mask": mask.mean(),
                              **mask_logs(mask, batch.u_ood)})
