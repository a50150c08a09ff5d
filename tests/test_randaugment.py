"""Batched per-image RandAugment (FixMatch's strong augmentation): each op on hand-checkable cases, per-image
draws, reproducibility, dtypes and layouts."""

import pytest
import torch

from realmix.augment import RANDAUGMENT_OPS, cutout_square, rand_augment, randaugment_op


def _gen(seed: int = 0) -> torch.Generator:
    return torch.Generator().manual_seed(seed)


def _images(n: int = 8, c: int = 3, size: int = 12, seed: int = 1) -> torch.Tensor:
    return torch.randint(0, 256, (n, c, size, size), generator=_gen(seed), dtype=torch.uint8)


def _op(y, name, v=5.0, sign=1.0):
    n = y.shape[0]
    return randaugment_op(y, name, torch.full((n,), v), torch.full((n,), sign))


@pytest.mark.parametrize("c", [1, 3])
@pytest.mark.parametrize("dtype", [torch.uint8, torch.float32])
def test_shape_dtype_layout_range(c, dtype):
    x = _images(c=c)
    if dtype != torch.uint8:
        x = x.float() / 255
    out = rand_augment(x, _gen())
    assert out.shape == x.shape and out.dtype == dtype
    assert out.permute(0, 2, 3, 1).is_contiguous()  # channels-last memory like every other op
    if dtype != torch.uint8:
        assert out.min() >= 0 and out.max() <= 1


def test_same_seed_same_output_other_seed_differs():
    x = _images()
    assert torch.equal(rand_augment(x, _gen(3)), rand_augment(x, _gen(3)))
    assert not torch.equal(rand_augment(x, _gen(3)), rand_augment(x, _gen(4)))


def test_draws_differ_across_the_batch():
    x = _images(n=1).repeat(32, 1, 1, 1)  # 32 copies of one image
    out = rand_augment(x, _gen(5))
    distinct = {bytes(o.numpy().tobytes()) for o in out}
    assert len(distinct) >= 24


def test_every_op_is_reachable_and_changes_images():
    # low contrast, so equalize and autocontrast have work to do; 32 px because equalize, as PIL's, leaves an
    # image of fewer than 256 pixels unchanged
    y = (_images(n=4, size=32) // 4 + 32).float() / 255
    for name in RANDAUGMENT_OPS:
        out = _op(y, name, v=9.0)  # the strongest magnitude (solarize at 256 - 230)
        assert out.shape == y.shape
        if name != "identity":
            assert not torch.equal(out, y), name


def test_solarize_inverts_at_and_above_the_threshold():
    y = torch.tensor([0, 100, 127, 128, 200, 255], dtype=torch.float32).view(1, 1, 1, 6) / 255
    out = _op(y, "solarize", v=5.0) * 255  # threshold 256 - floor(128.0) = 128
    assert out.round().flatten().tolist() == [0, 100, 127, 127, 55, 0]


def test_posterize_keeps_the_top_bits():
    y = torch.tensor([255, 17, 128, 15], dtype=torch.float32).view(1, 1, 1, 4) / 255
    out = (_op(y, "posterize", v=2.0) * 255).round()  # 4 + floor(0.8) = 4 bits: steps of 16
    assert out.flatten().tolist() == [240, 16, 128, 0]


def test_autocontrast_stretches_each_channel():
    y = torch.tensor([[0.2, 0.4], [0.6, 0.3]]).view(1, 1, 2, 2)
    out = _op(y, "autocontrast")
    assert torch.allclose(out.flatten(), torch.tensor([0.0, 0.5, 1.0, 0.25]))


def test_brightness_scales_and_translate_shifts_by_whole_pixels():
    y = torch.rand(2, 1, 10, 10, generator=_gen(2))
    assert torch.allclose(_op(y, "brightness", v=5.0), (y * 0.5).clamp(0, 1))  # factor 0.05 + 0.45
    moved = _op(y, "translate_x", v=7.0, sign=1.0)  # round(0.21 * 10) = 2 px
    # output pixel x reads source x + 2 (content moves left); the last 2 columns are outside: gray
    assert torch.equal(moved[..., :8], y[..., 2:])
    assert torch.all(moved[..., 8:] == 0.5)


def test_rotate_signs_are_mirror_images():
    y = torch.rand(1, 1, 9, 9, generator=_gen(4))
    left, right = _op(y, "rotate", v=9.0, sign=-1.0), _op(y, "rotate", v=9.0, sign=1.0)
    assert not torch.equal(left, right)
    # rotating a horizontally mirrored image by -a equals mirroring the image rotated by +a
    assert torch.allclose(_op(y.flip(-1), "rotate", v=9.0, sign=-1.0), right.flip(-1))


def test_cutout_leaves_a_gray_square():
    y = torch.zeros(3, 1, 16, 16)
    out = cutout_square(y, _gen(7), 8)
    for img in out:
        gray = img[0] == 0.5
        rows, cols = gray.any(1).nonzero().flatten(), gray.any(0).nonzero().flatten()
        assert 1 <= len(rows) <= 8 and 1 <= len(cols) <= 8  # clipped at the border
        assert gray[rows.min():rows.max() + 1, cols.min():cols.max() + 1].all()  # one full rectangle


def test_no_host_reads(monkeypatch):
    def refuse(*_a, **_k):
        raise AssertionError("host read of a tensor value")

    x = _images()
    for name in ("item", "tolist", "__bool__", "__float__", "__int__"):
        monkeypatch.setattr(torch.Tensor, name, refuse)
    rand_augment(x, _gen())
