"""Baselines of the original repository that need no teacher model (method reference §E).

`supervised_mixup` (fully supervised, the original fs_mixup), `pi_model`, `pseudo_label`, `vat` and `mixup` (SSL
MixUp). As in the original,
only the labelled forward updates the BN running statistics; the unlabelled loss weight ramps up linearly over
the first `warmup_pos` of training; the labelled loss is plain cross-entropy (the original passed `smoothing`
to these models but never used it).
"""

from __future__ import annotations

from typing import Any

import torch
from torch import Tensor, nn

from ..ops import frozen_bn_stats, mix_reversed, soft_cross_entropy
from .base import Algorithm, Batch, Needs, Progress, StepOut
from .consistency import Consistency, ramp_dependence


class SupervisedMixUp(Algorithm):
    def train_step(self, model: nn.Module, batch: Batch, progress: Progress) -> StepOut:
        onehot = nn.functional.one_hot(batch.y, self.num_classes).float()
        x, targets = mix_reversed(batch.x, onehot, self.params.beta, self.rng)
        loss = soft_cross_entropy(model(x), targets).mean()
        return StepOut(loss, {"loss_x": loss.detach()})


class PiModel(Consistency):
    @classmethod
    def declare(cls, params: Any) -> Needs:
        return Needs(views=("weak", "weak"))

    def unsupervised(self, model: nn.Module, views: tuple[Tensor, ...]) -> tuple[Tensor, dict]:
        """Mean squared error between softmax(f(view 1)) (no gradient: the target) and softmax(f(view 2))."""
        with torch.no_grad():
            target = model(views[0]).softmax(-1)
        return (target - model(views[1]).softmax(-1)).square().mean(), {}


class PseudoLabel(Consistency):
    @classmethod
    def declare(cls, params: Any) -> Needs:
        return Needs(views=("weak",))

    def unsupervised(self, model: nn.Module, views: tuple[Tensor, ...]) -> tuple[Tensor, dict]:
        """CE against the argmax of the model's own prediction, for rows more confident than `threshold`,
        averaged over all unlabelled rows."""
        logits = model(views[0])
        confidence, pseudo = logits.detach().softmax(-1).max(-1)
        keep = (confidence > self.params.threshold).to(logits.dtype)
        ce = nn.functional.cross_entropy(logits, pseudo, reduction="none")
        return (ce * keep).mean(), {"pseudo_kept": keep.mean()}


def _kl(p_logits: Tensor, q_logits: Tensor) -> Tensor:
    """KL(p || q) per row, from logits."""
    p_log = p_logits.log_softmax(-1)
    return (p_log.exp() * (p_log - q_logits.log_softmax(-1))).sum(-1)


def _l_inf_l2_normalise(d: Tensor) -> Tensor:
    """Per example: divide by the max |d|, then by the L2 norm (the original vat_utils)."""
    flat = d.flatten(1)
    flat = flat / (1e-12 + flat.abs().amax(1, keepdim=True))
    flat = flat / (1e-6 + flat.square().sum(1, keepdim=True)).sqrt()
    return flat.view_as(d)


class VAT(Algorithm):
    """Virtual adversarial training (Miyato et al.) as the original vat.py, with the published KL direction."""

    @classmethod
    def declare(cls, params: Any) -> Needs:
        return Needs(views=("weak",))

    def run_length_dependence(self) -> str | None:
        return ramp_dependence(self)

    def adversarial_direction(self, model: nn.Module, u: Tensor, logits: Tensor) -> Tensor:
        """One power iteration: the unit direction r that most increases the KL divergence from p(u)."""
        gen = torch.Generator(u.device).manual_seed(int(self.rng.integers(2**62)))
        d = torch.randn(u.shape, generator=gen, device=u.device, dtype=torch.float32)
        d = (self.params.xi * _l_inf_l2_normalise(d)).requires_grad_(True)
        with torch.autocast(u.device.type, enabled=False), frozen_bn_stats(model):  # float32: xi is tiny
            kl = self.divergence(logits.detach().float(), model(u.float() + d)).mean()
        (grad,) = torch.autograd.grad(kl, d)
        return _l_inf_l2_normalise(grad)

    def divergence(self, clean_logits: Tensor, perturbed_logits: Tensor) -> Tensor:
        if self.params.kl == "published":  # KL(p(u) || p(u + r)): the clean prediction is the target
            return _kl(clean_logits, perturbed_logits)
        return _kl(perturbed_logits, clean_logits)  # the original code's direction

    def train_step(self, model: nn.Module, batch: Batch, progress: Progress) -> StepOut:
        p = self.params
        loss_x = nn.functional.cross_entropy(model(batch.x), batch.y)
        u = batch.u[0]
        with frozen_bn_stats(model):  # only the labelled forward updates BN running statistics
            logits_u = model(u)
            r_adv = p.eps * self.adversarial_direction(model, u, logits_u)
            loss_vat = self.divergence(logits_u.detach(), model(u + r_adv.to(u.dtype))).mean()
        log_p = logits_u.log_softmax(-1)
        entropy = -(log_p.exp() * log_p).sum(-1).mean()
        w = p.consistency * min(progress.fraction / p.warmup_pos, 1.0)
        loss = loss_x + w * loss_vat + p.entmin * entropy
        return StepOut(loss, {"loss_x": loss_x.detach(), "loss_u": loss_vat.detach(), "entropy": entropy.detach(),
                              "w_consistency": w})


class SSLMixUp(Algorithm):
    """The original mixup.py: MixUp of labelled images and of unlabelled images with their predicted labels."""

    @classmethod
    def declare(cls, params: Any) -> Needs:
        return Needs(views=("weak",))

    def train_step(self, model: nn.Module, batch: Batch, progress: Progress) -> StepOut:
        u = batch.u[0]
        with torch.no_grad(), frozen_bn_stats(model):
            guess = model(u).softmax(-1)
        onehot = nn.functional.one_hot(batch.y, self.num_classes).float()
        x, lx = mix_reversed(batch.x, onehot, self.params.beta, self.rng)
        mu, lu = mix_reversed(u, guess, self.params.beta, self.rng)
        loss_x = soft_cross_entropy(model(x), lx).mean()  # this forward updates BN running statistics
        with frozen_bn_stats(model):
            loss_u = soft_cross_entropy(model(mu), lu).mean()
        return StepOut(loss_x + loss_u, {"loss_x": loss_x.detach(), "loss_u": loss_u.detach()})
