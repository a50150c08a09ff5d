"""MixMatch (Berthelot et al. 2019) as in the original libml `mixmatch.py` (method reference §A.3-A.8)."""

from __future__ import annotations

from typing import Any

import torch
from torch import Tensor, nn

from ..ops import frozen_bn_stats, interleave, interleave_offsets, mixmode, sharpen, soft_cross_entropy
from .base import Algorithm, Batch, Needs, Progress, StepOut, mask_logs


class MixMatch(Algorithm):
    @classmethod
    def declare(cls, params: Any) -> Needs:
        return Needs(views=("weak",) * params.nu)

    def check_batch(self, batch_size: int) -> None:
        groups = self.params.nu + 1
        if batch_size < groups:
            raise ValueError(f"the batch ({batch_size}) is smaller than the nu + 1 = {groups} interleave groups")

    def train_step(self, model: nn.Module, batch: Batch, progress: Progress) -> StepOut:
        p = self.params
        n = len(batch.x)
        # 1. Guess labels: the raw model on each view separately (its own BN batch statistics, running
        #    statistics untouched), average over views, sharpen. No gradient.
        with torch.no_grad(), frozen_bn_stats(model):
            probs = [model(u).softmax(-1) for u in batch.u]
            guess = sharpen(torch.stack(probs).mean(0), p.T)
        # 2. MixUp over the pool [X; U_0; ...; U_{nu-1}] with per-example lambda >= 0.5.
        onehot = nn.functional.one_hot(batch.y, self.num_classes).to(guess.dtype)
        xs, ls = mixmode([batch.x, *batch.u], [onehot, *[guess] * len(batch.u)], p.beta, p.mixmode, self.rng)
        # 3. Interleaved forwards: each holds labelled and unlabelled rows; only the first updates BN stats.
        logits = self.interleaved_forward(model, xs, n)
        # 4. Losses.
        loss_x, logs = self.supervised_loss(logits[0], ls[0], progress)
        loss_u, logs_u, keep = self.unsupervised_loss(torch.cat(logits[1:]), torch.cat(ls[1:]), torch.cat(probs))
        w = p.w_match * progress.ramp(p.warmup_kimg)
        loss = loss_x + w * loss_u
        admitted = {}
        if batch.u_ood is not None:  # mixed row i of view v is mostly (lambda >= 0.5) unlabelled image i
            ood = batch.u_ood.repeat(len(batch.u))
            admitted = mask_logs(torch.ones(len(ood), device=loss.device) if keep is None else keep, ood)
        return StepOut(loss, {"loss_x": loss_x.detach(), "loss_u": loss_u.detach(), "w_match": w, **logs, **logs_u,
                              **admitted})

    @staticmethod
    def interleaved_forward(model: nn.Module, xs: list[Tensor], batch: int) -> list[Tensor]:
        if len(xs) > 1 and interleave_offsets(batch, len(xs) - 1)[1] == 0:
            raise ValueError(f"the batch ({batch}) is smaller than the {len(xs)} interleave groups")
        parts = interleave(xs, batch)
        out = [model(parts[0])]
        with frozen_bn_stats(model):
            out += [model(t) for t in parts[1:]]
        return interleave(out, batch)

    def supervised_loss(self, logits: Tensor, labels: Tensor, progress: Progress) -> tuple[Tensor, dict]:
        return soft_cross_entropy(logits, labels).mean(), {}

    def unsupervised_loss(self, logits: Tensor, targets: Tensor, clean_probs: Tensor
                          ) -> tuple[Tensor, dict, Tensor | None]:
        """Mean squared error between the (mixed) guessed targets and the predictions, over rows and classes.
        Returns (loss, logs, the 0/1 mask of the rows the loss kept: None = all)."""
        return (targets - logits.softmax(-1)).square().mean(), {}, None
