"""The WRN of the original `libml/models.py` (method reference §B.1) and the input convention."""

from __future__ import annotations

import math

import pytest
import torch
from torch import nn

from realmix.models import build_model, default_scales, to_input
from tests.helpers import TINY_ARCH

WRN28_2 = {"arch": "wrn", "filters": 32, "repeat": 4, "scales": 0, "bn_momentum": 0.001}


@pytest.fixture(scope="module")
def wrn28_2() -> nn.Module:
    return build_model(WRN28_2, 10, (32, 32, 3), generator=torch.Generator().manual_seed(0))


def test_wrn28_2_parameter_count(wrn28_2):
    # the original's trainable variable count (conv biases and BN gamma/beta included)
    assert sum(p.numel() for p in wrn28_2.parameters()) == 1_469_642
    assert sum(p.numel() for p in wrn28_2.parameters() if p.requires_grad) == 1_469_642


def test_wrn28_2_layout(wrn28_2):
    convs = [m for m in wrn28_2.modules() if isinstance(m, nn.Conv2d)]
    # stem + 12 blocks x 2 convs + 3 shortcut 1x1 (16->32, 32->64, 64->128)
    assert len(convs) == 1 + 24 + 3
    assert convs[0].out_channels == 16 and convs[0].kernel_size == (3, 3)
    shortcuts = [m for m in convs if m.kernel_size == (1, 1)]
    assert [(m.in_channels, m.out_channels, m.stride) for m in shortcuts] == [
        (16, 32, (1, 1)), (32, 64, (2, 2)), (64, 128, (2, 2))]
    assert wrn28_2.fc.in_features == 128 and wrn28_2.fc.out_features == 10


def test_default_scales_small_powers_of_two():
    assert default_scales(32) == 3
    assert default_scales(16) == 2
    assert default_scales(64) == 4
    assert default_scales(8) == 1


def test_default_scales_non_power_of_two_rounds_up_like_the_original_ilog2():
    # libml/utils.py: ilog2(x) = int(np.ceil(np.log2(x))); scales = ilog2(width) - 2
    assert default_scales(96) == 5
    assert default_scales(48) == 4


@pytest.mark.parametrize("momentum", [0.001, 0.1])
def test_batch_norm_eps_and_momentum(momentum):
    model = build_model({**TINY_ARCH, "bn_momentum": momentum}, 3, (8, 8, 3))
    bns = [m for m in model.modules() if isinstance(m, nn.modules.batchnorm._BatchNorm)]
    assert len(bns) == 3
    for m in bns:
        assert m.eps == 1e-3
        assert m.momentum == momentum
        assert torch.equal(m.weight, torch.ones_like(m.weight)) and torch.equal(m.bias, torch.zeros_like(m.bias))
        assert torch.equal(m.running_mean, torch.zeros_like(m.running_mean))
        assert torch.equal(m.running_var, torch.ones_like(m.running_var))


def test_leaky_relu_slope_is_0_1(monkeypatch):
    slopes = []
    original = nn.functional.leaky_relu

    def spy(x, negative_slope=0.01, inplace=False):
        slopes.append(negative_slope)
        return original(x, negative_slope, inplace)

    monkeypatch.setattr(nn.functional, "leaky_relu", spy)
    model = build_model({**TINY_ARCH, "repeat": 2}, 3, (8, 8, 3))
    model(torch.randn(2, 3, 8, 8))
    assert slopes == [0.1] * (2 * 2 + 1)  # two per residual block, one in the head


def test_leaky_relu_slope_numerically():
    """The head on a known input (stem and blocks bypassed): eval-mode BN at init is x / sqrt(1 + eps)."""
    model = build_model(TINY_ARCH, 2, (8, 8, 3)).eval()
    model.stem, model.blocks = nn.Identity(), nn.Identity()
    h = torch.tensor([-2.0, 3.0, -1.0, 0.5]).view(1, 4, 1, 1)
    with torch.no_grad():
        model.fc.weight.copy_(torch.eye(2, 4))
        out = model(h)
    z = torch.tensor([[-2.0, 3.0]]) / math.sqrt(1 + 1e-3)
    torch.testing.assert_close(out, torch.tensor([[0.1 * z[0, 0].item(), z[0, 1].item()]]))


def test_conv_biases_zero_and_he_fan_out_init(wrn28_2):
    for m in wrn28_2.modules():
        if isinstance(m, nn.Conv2d):
            assert m.bias is not None and torch.equal(m.bias, torch.zeros_like(m.bias))
    big = wrn28_2.blocks[-1].conv2  # 128 -> 128, 3x3: 147,456 weights
    assert big.weight.shape == (128, 128, 3, 3)
    expected = math.sqrt(2.0 / (3 * 3 * 128))
    assert big.weight.std().item() == pytest.approx(expected, rel=0.02)
    assert abs(big.weight.mean().item()) < 0.05 * expected
    shortcut = wrn28_2.blocks[8].shortcut  # 64 -> 128, 1x1: fan-out 128
    assert shortcut.weight.std().item() == pytest.approx(math.sqrt(2.0 / 128), rel=0.1)
    assert torch.equal(wrn28_2.fc.bias, torch.zeros(10))
    # dense: TF1 glorot_normal, truncated at two of its stds
    std = math.sqrt(2.0 / (128 + 10)) / 0.87962566103423978
    assert wrn28_2.fc.weight.abs().max().item() <= 2 * std + 1e-6


def test_generator_seed_determines_weights():
    def weights(seed):
        return build_model(TINY_ARCH, 3, (8, 8, 3), generator=torch.Generator().manual_seed(seed)).state_dict()

    a, b, c = weights(1), weights(1), weights(2)
    assert all(torch.equal(a[k], b[k]) for k in a)
    assert not torch.equal(a["stem.weight"], c["stem.weight"])
    assert not torch.equal(a["fc.weight"], c["fc.weight"])


def test_output_shape_and_scales_from_image_size():
    model = build_model({**TINY_ARCH, "scales": 0}, 5, (16, 16, 1))
    assert len(model.blocks) == default_scales(16) * 1
    assert model(torch.randn(4, 1, 16, 16)).shape == (4, 5)
    assert build_model(TINY_ARCH, 3, (8, 8, 3))(torch.randn(7, 3, 8, 8)).shape == (7, 3)


def test_unknown_arch_raises():
    with pytest.raises(ValueError, match="arch"):
        build_model({**TINY_ARCH, "arch": "convnet"}, 3, (8, 8, 3))


def test_to_input():
    x = torch.tensor([0, 255, 51, 204], dtype=torch.uint8)
    out = to_input(x)
    assert out.dtype == torch.float32
    torch.testing.assert_close(out, torch.tensor([-1.0, 1.0, 51 * 2 / 255 - 1, 204 * 2 / 255 - 1]))
    assert out[0].item() == -1.0 and out[1].item() == 1.0
    assert x.tolist() == [0, 255, 51, 204]  # input untouched
    for dtype in (torch.float32, torch.int64):
        with pytest.raises(ValueError, match="uint8"):
            to_input(x.to(dtype))
