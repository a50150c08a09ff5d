"""Classifier networks and the one convention for feeding them images."""

from __future__ import annotations

import torch
from torch import Tensor, nn

from .wrn import WideResNet, default_scales

__all__ = ["WideResNet", "build_model", "default_scales", "to_input"]

ARCHS = ("wrn",)


def to_input(x: Tensor) -> Tensor:
    """uint8 images (0..255) -> float32 in [-1, 1], as the original's `x * 2/255 - 1`, in NCHW-contiguous memory.

    Our stores and augmentations hold NHWC memory (`x` is usually a channels-last view); a conv fed a
    channels-last input runs channels-last whatever its weights are, so the layout is chosen here, once, for
    every caller: NCHW, and channels-last only where train.channels_last puts the weights in that format (the
    convs then follow the weights). That keeps `channels_last: false` true to its word, and it avoids a oneDNN
    defect: with a channels-last input, one thread and an AVX2 CPU (no AVX-512), the backward of a 1x1 stride-2
    conv with fewer than 8 input channels (`brgconv_strided:avx2 backward_data`, e.g. mb4_ic4oc8_ih28oh14kh1sh2:
    WRN's shortcut at model.filters < 8) corrupts the heap (segfault / double free); see
    `realmix.hardware.channels_last_crash`.
    """
    if x.dtype != torch.uint8:
        raise ValueError(f"expected uint8 images, got {x.dtype}")
    return x.to(torch.float32, memory_format=torch.contiguous_format).mul_(2.0 / 255.0).sub_(1.0)


def build_model(arch: dict, num_classes: int, image_shape: list[int] | tuple[int, ...],
                generator: torch.Generator | None = None) -> nn.Module:
    """Build the network described by `arch` (the `model` params: arch, filters, repeat, scales (0 = from the
    image size), bn_momentum; and open_heads, the projection width of IOMatch's heads, where an algorithm
    asked for them)."""
    if arch["arch"] != "wrn":
        raise ValueError(f"unknown arch {arch['arch']!r}; choose one of: {', '.join(ARCHS)}")
    h, _, c = image_shape
    scales = arch["scales"] or default_scales(h)
    return WideResNet(num_classes, channels=c, filters=arch["filters"], repeat=arch["repeat"], scales=scales,
                      bn_momentum=arch.get("bn_momentum", 0.001), open_heads=arch.get("open_heads", 0),
                      generator=generator)
