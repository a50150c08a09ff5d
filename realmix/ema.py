"""Exponential moving average of a model's parameters; buffers (BN running statistics) are copied.

As the original (tf.train.ExponentialMovingAverage over trainable variables, BN statistics read from the raw
model). The constant decay 0.999 assumes ~10^6 steps; `warmup` uses min(decay, (1 + t) / (10 + t)) at update t
so that short runs are not dominated by the random initialisation.
"""

from __future__ import annotations

import copy

import torch
from torch import nn


class EMA:
    def __init__(self, model: nn.Module, decay: float, *, warmup: bool = True):
        self.decay = decay
        self.warmup = warmup
        self.updates = 0
        self.model = copy.deepcopy(model).eval()
        for p in self.model.parameters():
            p.requires_grad_(False)
        self._src_params = list(model.parameters())
        self._src_buffers = list(model.buffers())
        self._params = list(self.model.parameters())
        self._buffers = list(self.model.buffers())

    def current_decay(self) -> float:
        if self.warmup:
            return min(self.decay, (1.0 + self.updates) / (10.0 + self.updates))
        return self.decay

    @torch.no_grad()
    def update(self) -> None:
        """ema <- d * ema + (1 - d) * param for every parameter; buffers copied."""
        weight = 1.0 - self.current_decay()
        torch._foreach_lerp_(self._params, [p.detach() for p in self._src_params], weight)
        torch._foreach_copy_(self._buffers, self._src_buffers)
        self.updates += 1

    def state_dict(self) -> dict:
        return {"model": self.model.state_dict(), "updates": self.updates}

    def load_state_dict(self, state: dict) -> None:
        self.model.load_state_dict(state["model"])
        self.updates = int(state["updates"])
