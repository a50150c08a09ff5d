"""The optimiser step: the algorithm's optimiser at the scheduled learning rate, decoupled weight decay, then
the EMA update (the order the original left unspecified, §A.11)."""

from __future__ import annotations

import math
from typing import Any

import torch
from torch import nn

from ..ema import EMA


class OptimizerStep:
    """Optimiser, learning-rate schedule, decoupled decay and the EMA of one run's network.

    adam (the original): Adam, then W <- W (1 - wd lr_t) on the decayed weights after every step.
    sgd (FixMatch): SGD with (Nesterov) momentum and coupled L2 decay: wd W added to the decayed weights'
    gradients before the momentum, as the reference's wd * l2_loss(kernels) term in the loss.
    `fused` selects the fused kernel for either optimiser (train.fused_adam).
    """

    def __init__(self, model: nn.Module, ema: EMA, section: Any, *, lr: float, weight_decay: float, total: int,
                 fused: bool):
        self.model, self.ema = model, ema
        self.lr, self.schedule, self.total, self.fused = lr, section.lr_schedule, total, fused
        self.grad_params = [p for p in model.parameters() if p.requires_grad]
        # weight decay on conv/dense weights (the original's and FixMatch's "kernel" variables), not biases or BN
        self.decay_params = [p for p in model.parameters() if p.ndim > 1]
        impl = {"foreach": not fused, "fused": fused}
        if section.optimizer == "sgd":
            decayed = {id(p) for p in self.decay_params}
            groups = [{"params": self.decay_params, "weight_decay": weight_decay},
                      {"params": [p for p in model.parameters() if id(p) not in decayed], "weight_decay": 0.0}]
            self.optimizer: torch.optim.Optimizer = torch.optim.SGD(
                groups, lr=lr, momentum=section.momentum, nesterov=section.nesterov and section.momentum > 0,
                **impl)
            self.decoupled_wd = 0.0
        else:
            self.optimizer = torch.optim.Adam(model.parameters(), lr=lr, betas=(0.9, 0.999), eps=1e-8, **impl)
            self.decoupled_wd = weight_decay

    def lr_at(self, images: int) -> float:
        """The learning rate at `images` into the run: constant, or FixMatch's cosine lr cos(7 pi t / 16)."""
        if self.schedule == "cosine":
            return self.lr * math.cos(7.0 * math.pi * min(images / self.total, 1.0) / 16.0)
        return self.lr

    def step(self, images: int) -> None:
        """The update after a backward at `images` into the run: optimiser and decay, then EMA."""
        self.apply(images)
        self.ema.update()

    def apply(self, images: int) -> None:
        """Optimiser step at the scheduled lr, then decoupled weight decay (Adam)."""
        lr = self.lr_at(images)
        if self.schedule != "constant":
            for group in self.optimizer.param_groups:
                group["lr"] = lr
        self.optimizer.step()
        if self.decoupled_wd:
            with torch.no_grad():
                torch._foreach_mul_(self.decay_params, 1.0 - self.decoupled_wd * lr)

    def load_state_dict(self, optimizer: dict[str, Any]) -> None:
        """A checkpoint's optimiser state, with this run's implementation (the fused flag also places the step
        counters), not the saved one's."""
        optimizer = dict(optimizer)
        optimizer["param_groups"] = [{**g, "fused": self.fused, "foreach": not self.fused}
                                     for g in optimizer["param_groups"]]
        self.optimizer.load_state_dict(optimizer)
