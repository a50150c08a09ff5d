"""Exponential moving average of a model's parameters; buffers (BN running statistics) are copied.

As the original (tf.train.ExponentialMovingAverage over trainable variables, BN statistics read from the raw
model). The constant decay 0.999 assumes ~10^6 steps; `warmup` uses min(decay, (1 + t) / (10 + t)) at update t
so that short runs are not dominated by the random initialisation.

The copied statistics belong to the raw weights, not to the averaged ones: when the raw weights move fast (early
training, or a loss spike the raw model recovers from while the average still holds the old weights), the EMA
model is evaluated with statistics of another network and can fall far below it. `with_own_bn_stats` gives the
evaluated EMA model statistics of its own weights (train.ema_bn: recompute).
"""

from __future__ import annotations

import contextlib
import copy
from typing import Any

import numpy as np
import torch
from torch import nn

from .models import to_input

EMA_BN = ("validated", "recompute", "copy")  # train.ema_bn: how the evaluated EMA model gets its BN statistics


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


@torch.no_grad()
def with_own_bn_stats(model: nn.Module, images: Any, *, batch: int, device: torch.device,
                      autocast_dtype: torch.dtype | None = None) -> nn.Module:
    """A copy of `model` (eval mode) whose BN running statistics are re-estimated for its own weights.

    The statistics are the plain average of the per-batch means and variances over `images` (uint8 N x H x W x C,
    clean, in the given order, `batch` at a time): no randomness is drawn and the weights are untouched.
    """
    out = copy.deepcopy(model)
    bns = [m for m in out.modules() if isinstance(m, nn.modules.batchnorm._BatchNorm) and m.track_running_stats]
    momenta = [m.momentum for m in bns]
    for m in bns:
        m.reset_running_stats()
        m.momentum = None  # cumulative average over the batches
    out.train()
    amp = (torch.autocast(device.type, dtype=autocast_dtype) if autocast_dtype is not None
           else contextlib.nullcontext())
    for i in range(0, len(images), batch):
        x = torch.from_numpy(np.array(images[i:i + batch])).to(device).permute(0, 3, 1, 2)
        with amp:
            out(to_input(x))
    for m, momentum in zip(bns, momenta, strict=True):
        m.momentum = momentum
    return out.eval()


def pick_bn_stats(probs: dict[str, np.ndarray], labels: np.ndarray) -> str:
    """The BN-statistics rule (a key of `probs`: class probabilities per rule on the same labelled images) whose
    predictions fit `labels` best: the highest accuracy, then the lowest cross-entropy; the first key on a tie."""
    def fit(p: np.ndarray) -> tuple[float, float]:
        p = np.asarray(p, np.float64)
        acc = float((p.argmax(1) == labels).mean()) if len(labels) else 0.0
        nll = float(-np.log(np.clip(p[np.arange(len(labels)), labels], 1e-12, None)).mean()) if len(labels) else 0.0
        return acc, -nll

    return max(probs, key=lambda k: fit(probs[k]))  # max keeps the first of equal keys
