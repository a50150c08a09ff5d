"""Wide ResNet as in the original `libml/models.py` `resnet` (WRN-28-2 at filters=32, repeat=4, scales=3).

Pre-activation residual blocks with leaky ReLU 0.1, batch norm with TF's momentum 0.999 (PyTorch 0.001) and
eps 1e-3, conv biases initialised to zero, He fan-out normal kernels, a Glorot-normal (truncated) dense head.
With K = 10 and 32 px input it has 1,469,642 trainable parameters, as the original.
"""

from __future__ import annotations

import math

import torch
from torch import Tensor, nn

BN_MOMENTUM = 0.001  # TF momentum (decay) 0.999
BN_EPS = 1e-3
LEAK = 0.1


def default_scales(image_size: int) -> int:
    """The original `scales = ilog2(width) - 2` with ilog2 = ceil(log2) (3 for 32 px, 2 for 16 px, 5 for 96 px)."""
    return max(1, math.ceil(math.log2(image_size)) - 2)


def _bn(c: int, momentum: float) -> nn.BatchNorm2d:
    return nn.BatchNorm2d(c, momentum=momentum, eps=BN_EPS)


def _conv(cin: int, cout: int, k: int, stride: int = 1) -> nn.Conv2d:
    return nn.Conv2d(cin, cout, k, stride=stride, padding=k // 2, bias=True)


class Residual(nn.Module):
    """h = LReLU(BN(x)); [x = h if activate_before_residual]; conv-BN-LReLU-conv; shortcut conv 1x1 if needed."""

    def __init__(self, cin: int, cout: int, stride: int, activate_before_residual: bool,
                 bn_momentum: float = BN_MOMENTUM):
        super().__init__()
        self.abr = activate_before_residual
        self.bn1 = _bn(cin, bn_momentum)
        self.conv1 = _conv(cin, cout, 3, stride)
        self.bn2 = _bn(cout, bn_momentum)
        self.conv2 = _conv(cout, cout, 3)
        self.shortcut = _conv(cin, cout, 1, stride) if cin != cout else None

    def forward(self, x: Tensor) -> Tensor:
        h = nn.functional.leaky_relu(self.bn1(x), LEAK)
        if self.abr:
            x = h
        h = self.conv1(h)
        h = self.conv2(nn.functional.leaky_relu(self.bn2(h), LEAK))
        if self.shortcut is not None:
            x = self.shortcut(x)
        return x + h


class OpenSetHeads(nn.Module):
    """IOMatch's heads on the pooled features: an MLP projection (features -> features -> proj_size), a one-vs-all
    head (2K logits, read as K pairs (outlier, inlier) after `.view(N, 2, K)`) and a (K+1)-way open head whose
    last class is "out-of-class". Initialised as the reference (Xavier-normal heads, zero open bias, PyTorch's
    default for the projection), from the model's generator."""

    def __init__(self, features: int, num_classes: int, proj_size: int = 128):
        super().__init__()
        self.proj = nn.Sequential(nn.Linear(features, features), nn.ReLU(), nn.Linear(features, proj_size))
        self.one_vs_all = nn.Linear(proj_size, 2 * num_classes, bias=False)
        self.open = nn.Linear(proj_size, num_classes + 1)

    @torch.no_grad()
    def reset_parameters(self, generator: torch.Generator | None = None) -> None:
        for m in self.proj:
            if isinstance(m, nn.Linear):  # nn.Linear's own default: U(+-1/sqrt(fan_in)) for weight and bias
                bound = 1.0 / math.sqrt(m.in_features)
                nn.init.uniform_(m.weight, -bound, bound, generator=generator)
                nn.init.uniform_(m.bias, -bound, bound, generator=generator)
        for m in (self.one_vs_all, self.open):
            std = math.sqrt(2.0 / (m.in_features + m.out_features))  # xavier_normal_
            nn.init.normal_(m.weight, 0.0, std, generator=generator)
        nn.init.zeros_(self.open.bias)

    def forward(self, features: Tensor) -> tuple[Tensor, Tensor]:
        z = self.proj(features)
        return self.one_vs_all(z).float(), self.open(z).float()


class WideResNet(nn.Module):
    """WRN: stem conv 16, `scales` stages of `repeat` blocks with `filters << s` channels, BN-LReLU-GAP-dense.

    `bn_momentum` is PyTorch's (TF decay 0.999 = 0.001): short runs need a larger one, or the running
    statistics used at evaluation still remember their initial values.
    Input: float images N x C x H x W in [-1, 1] (see `realmix.models.to_input`). Output: float32 logits N x K
    (also under bf16 autocast, so every loss is computed in float32). With `open_heads` (IOMatch) the network
    also has `OpenSetHeads`; `model(x, heads=True)` returns (closed logits, one-vs-all logits, open logits),
    while `model(x)` stays the closed-set classifier every other caller uses.
    """

    def __init__(self, num_classes: int, *, channels: int = 3, filters: int = 32, repeat: int = 4, scales: int = 3,
                 bn_momentum: float = BN_MOMENTUM, open_heads: int = 0, generator: torch.Generator | None = None):
        super().__init__()
        self.stem = _conv(channels, 16, 3)
        blocks: list[nn.Module] = []
        cin = 16
        for s in range(scales):
            cout = filters << s
            for i in range(repeat):
                stride = 2 if (i == 0 and s > 0) else 1
                blocks.append(Residual(cin, cout, stride, (i == 0 and s == 0), bn_momentum))
                cin = cout
        self.blocks = nn.Sequential(*blocks)
        self.bn = _bn(cin, bn_momentum)
        self.fc = nn.Linear(cin, num_classes)
        # registered after fc, so a network without heads draws its initial weights exactly as before
        self.heads = OpenSetHeads(cin, num_classes, open_heads) if open_heads else None
        self.reset_parameters(generator)

    @torch.no_grad()
    def reset_parameters(self, generator: torch.Generator | None = None) -> None:
        for m in self.modules():
            if isinstance(m, nn.Conv2d):
                # He normal, fan-out (the original's tf.random_normal_initializer(stddev=sqrt(2/(k*k*f_out))))
                k = m.kernel_size[0] * m.kernel_size[1]
                nn.init.normal_(m.weight, 0.0, math.sqrt(2.0 / (k * m.out_channels)), generator=generator)
                nn.init.zeros_(m.bias)
            elif isinstance(m, nn.BatchNorm2d):
                m.reset_parameters()
            elif isinstance(m, nn.Linear):
                # TF1 glorot_normal: truncated normal (+-2 std) with std = sqrt(2/(fan_in+fan_out)) / .8796
                fan_in, fan_out = m.in_features, m.out_features
                std = math.sqrt(2.0 / (fan_in + fan_out)) / 0.87962566103423978
                nn.init.trunc_normal_(m.weight, 0.0, std, -2 * std, 2 * std, generator=generator)
                nn.init.zeros_(m.bias)
                if m is self.fc:
                    break  # the heads' layers come after fc and have their own initialisation
        if self.heads is not None:
            self.heads.reset_parameters(generator)

    def embed(self, x: Tensor) -> Tensor:
        """The pooled features the classifier reads (N x channels of the last stage)."""
        h = self.blocks(self.stem(x))
        h = nn.functional.leaky_relu(self.bn(h), LEAK)
        return h.mean((2, 3))

    def forward(self, x: Tensor, heads: bool = False) -> Tensor | tuple[Tensor, Tensor, Tensor]:
        features = self.embed(x)
        logits = self.fc(features).float()
        if not heads:
            return logits
        if self.heads is None:
            raise ValueError("this network has no open-set heads (model.open_heads is 0)")
        return (logits, *self.heads(features))
