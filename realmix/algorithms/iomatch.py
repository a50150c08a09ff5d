"""IOMatch (Li et al. 2023), as the reference code (`semilearn/algorithms/iomatch`).

FixMatch's weak/strong views and optimiser, plus two heads on a projection of the shared features (the
network's `OpenSetHeads`): a one-vs-all head, trained on the labelled images, and a (K+1)-way open head,
trained on the unlabelled ones. From the weak view: closed-set probabilities p, the outlier score
sum_k p_k r_k^out and the open targets q = [p_k r_k^in ..., outlier score] (`ops.open_targets`).
- closed set: soft cross-entropy of the strong view against p, only for predicted inliers (outlier score
  < 0.5) that are confident (max p >= threshold, the reference's p_cutoff);
- open set: soft cross-entropy of the open head on the strong view against q where max q >= q_cutoff, for
  every unlabelled image (off during the first `open_delay` of the run, as the reference's first epoch).
Its per-image outlier score at evaluation is the open head's out-of-class probability.
"""

from __future__ import annotations

import dataclasses
from typing import Any

import torch
from torch import nn
from torch.nn.functional import cross_entropy

from ..ops import one_vs_all_loss, open_targets, soft_cross_entropy
from .base import Batch, Needs, Progress, StepOut, mask_logs
from .fixmatch import FixMatch


class IOMatch(FixMatch):
    @classmethod
    def declare(cls, params: Any) -> Needs:
        return dataclasses.replace(super().declare(params), open_heads=params.proj_size)

    def run_length_dependence(self) -> str | None:
        d = self.params.open_delay
        return f"the open loss starts after {d} of the run (iomatch.open_delay)" if d > 0 else None

    def train_step(self, model: nn.Module, batch: Batch, progress: Progress) -> StepOut:
        p = self.params
        n = len(batch.x)
        weak, strong = batch.u
        logits, logits_ova, logits_open = model(torch.cat([batch.x, weak, strong]), heads=True)
        m = len(weak)
        logits_weak, logits_strong = logits[n:n + m], logits[n + m:]
        # supervised: closed-set cross-entropy + the one-vs-all loss
        loss_x = cross_entropy(logits[:n], batch.y)
        loss_mb = one_vs_all_loss(logits_ova[:n], batch.y)
        # targets from the weak view (no gradient)
        with torch.no_grad():
            probs = logits_weak.softmax(-1)
            q, outlier = open_targets(probs, logits_ova[n:n + m])
            selected = ((outlier < 0.5) & (probs.amax(-1) >= p.threshold)).float()
            q_mask = (q.amax(-1) >= p.q_cutoff).float()
        loss_u = (soft_cross_entropy(logits_strong, probs) * selected).mean()
        loss_op = (soft_cross_entropy(logits_open[n + m:], q) * q_mask).mean()
        w_op = p.lambda_op if progress.fraction >= p.open_delay else 0.0
        loss = loss_x + p.lambda_mb * loss_mb + p.lambda_u * loss_u + w_op * loss_op
        return StepOut(loss, {"loss_x": loss_x.detach(), "loss_mb": loss_mb.detach(), "loss_u": loss_u.detach(),
                              "loss_op": loss_op.detach(), "mask": selected.mean(), "q_mask": q_mask.mean(),
                              **mask_logs(selected, batch.u_ood)})
