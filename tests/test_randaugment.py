"""realmix.augment.rand_augment: FixMatch's RandAugmentMC + Cutout, batched, seeded, per image, host-read free."""

from __future__ import annotations

import numpy as np
import PIL.Image
import PIL.ImageEnhance
import PIL.ImageOps
import pytest
import torch

from realmix.augment import RANDAUGMENT_OPS, _randaugment_op, rand_augment


def gen(seed: int = 0) -> torch.Generator:
    return torch.Generator().manual_seed(seed)


def images(n: int = 4, c: int = 3, h: int = 16, w: int = 16, seed: int = 0) -> torch.Tensor:
    """uint8 N x C x H x W, stored NHWC (the preaugment layout)."""
    a = np.random.default_rng(seed).integers(0, 256, (n, h, w, c), dtype=np.uint8)
    return torch.from_numpy(a).permute(0, 3, 1, 2)


def nhwc(x: torch.Tensor) -> np.ndarray:
    return x.permute(0, 2, 3, 1).numpy()


def pil(img: np.ndarray) -> PIL.Image.Image:
    return PIL.Image.fromarray(img[..., 0] if img.shape[-1] == 1 else img)


def from_pil(im: PIL.Image.Image) -> np.ndarray:
    a = np.asarray(im)
    return a[..., None] if a.ndim == 2 else a


# -- conventions ---------------------------------------------------------------------------------------------
@pytest.mark.parametrize("c", [1, 3])
@pytest.mark.parametrize("dtype", [torch.uint8, torch.float32, torch.float64])
def test_shape_dtype_layout_range(c, dtype):
    x = images(6, c, 28, 28)
    if dtype != torch.uint8:
        x = (x.to(dtype) / 255).contiguous()  # planar NCHW input too
    out = rand_augment(x, gen())
    assert out.shape == x.shape and out.dtype == dtype
    assert out.permute(0, 2, 3, 1).is_contiguous()
    hi = 255 if dtype == torch.uint8 else 1.0
    assert out.min() >= 0 and out.max() <= hi
    assert not torch.equal(out, x)


def test_seeded_reproducible_and_per_image():
    x = images(8)
    a, b = rand_augment(x, gen(1)), rand_augment(x, gen(1))
    assert torch.equal(a, b)
    assert not torch.equal(a, rand_augment(x, gen(2)))
    # the same layout-independent answer for any memory layout of the same logical input
    assert torch.equal(a, rand_augment(x.contiguous(), gen(1)))
    # 64 copies of one image: every image draws its own ops, magnitudes, signs and cutout centre
    same = images(1, 3, 32, 32).expand(64, -1, -1, -1)
    out = rand_augment(same, gen(3)).reshape(64, -1)
    assert len(torch.unique(out, dim=0)) >= 60


def test_uint8_and_float_agree_on_exact_ops():
    """Ops that are exact on 1/255 steps give the same answer for uint8 and its float copy."""
    x = images(4)
    for name in ("identity", "posterize", "solarize", "translate_x", "translate_y", "equalize", "rotate"):
        u = _randaugment_op(x, name, 7, True)
        f = _randaugment_op(x.float() / 255, name, 7, True)
        torch.testing.assert_close((f * 255).round().to(torch.uint8), u, atol=0, rtol=0, msg=name)


def test_bad_arguments():
    x = images(2)
    with pytest.raises(ValueError, match="magnitude_max"):
        rand_augment(x, gen(), magnitude_max=1)
    with pytest.raises(ValueError, match="cutout"):
        rand_augment(x, gen(), cutout=1.5)
    with pytest.raises(ValueError, match="ops"):
        rand_augment(x, gen(), ops=-1)
    with pytest.raises(ValueError, match="channels"):
        rand_augment(images(2, 4), gen())


# -- each op against its definition / PIL (the reference implementation's library) ----------------------------
def test_op_pool_is_fixmatchs():
    assert len(RANDAUGMENT_OPS) == 14 and len(set(RANDAUGMENT_OPS)) == 14


@pytest.mark.parametrize("c", [1, 3])
def test_identity_and_pointwise_ops(c):
    x = images(3, c)
    assert torch.equal(_randaugment_op(x, "identity", 5), x)
    xf = x.float() / 255
    assert torch.equal(_randaugment_op(xf, "identity", 5), xf)
    # Solarize v=5: threshold 256 - 128 = 128, values >= 128 inverted
    assert torch.equal(_randaugment_op(x, "solarize", 5), torch.where(x >= 128, 255 - x, x))
    # Posterize v=1 -> 4 bits, v=5 -> 6 bits, v=9 -> 7 bits
    for v, mask in ((1, 0xF0), (5, 0xFC), (9, 0xFE)):
        assert torch.equal(_randaugment_op(x, "posterize", v), x & mask)
    # Brightness v=5: factor 0.5 (up to the rounding of a half level)
    half = (x.double() * 0.5).round()
    assert (_randaugment_op(x, "brightness", 5).double() - half).abs().max() <= 1


def test_translate_by_a_known_amount():
    x = images(2, 3, 20, 20)
    t = 5 * 3 * 20 // 100  # int(0.03 * 5 * 20) = 3 pixels
    out = _randaugment_op(x, "translate_x", 5)  # PIL (1, 0, t, 0, 1, 0): out[x] = in[x + t]
    assert torch.equal(out[..., : 20 - t], x[..., t:]) and (out[..., 20 - t :] == 0).all()
    out = _randaugment_op(x, "translate_x", 5, True)
    assert torch.equal(out[..., t:], x[..., : 20 - t]) and (out[..., :t] == 0).all()
    out = _randaugment_op(x, "translate_y", 5, True)
    assert torch.equal(out[:, :, t:], x[:, :, : 20 - t]) and (out[:, :, :t] == 0).all()


def test_autocontrast_stretches_each_channel():
    x = torch.zeros(1, 3, 4, 4, dtype=torch.uint8)
    x[0, 0] = torch.arange(50, 66).view(4, 4)
    x[0, 1] = 77  # flat channel: unchanged
    x[0, 2, 0, 0] = 9
    out = _randaugment_op(x, "autocontrast", 5)
    assert out[0, 0].min() == 0 and out[0, 0].max() == 255
    assert torch.equal(out[0, 0], ((x[0, 0].double() - 50) * 255 / 15).round().to(torch.uint8))
    assert (out[0, 1] == 77).all()
    assert out[0, 2, 0, 0] == 255 and (out[0, 2].flatten()[1:] == 0).all()


def pil_reference(img: np.ndarray, name: str, v: int, neg: bool) -> np.ndarray:
    """FixMatch-pytorch's semantics, written from PIL's documented operations."""
    im = pil(img)
    f = v * 0.9 / 10 + 0.05
    s = -1 if neg else 1
    if name == "autocontrast":
        return from_pil(PIL.ImageOps.autocontrast(im))
    if name == "equalize":
        return from_pil(PIL.ImageOps.equalize(im))
    if name in ("brightness", "color", "contrast", "sharpness"):
        enhancer = {"brightness": PIL.ImageEnhance.Brightness, "color": PIL.ImageEnhance.Color,
                    "contrast": PIL.ImageEnhance.Contrast, "sharpness": PIL.ImageEnhance.Sharpness}[name]
        return from_pil(enhancer(im).enhance(f))
    if name == "rotate":
        return from_pil(im.rotate(s * (v * 3)))
    if name == "shear_x":
        return from_pil(im.transform(im.size, PIL.Image.AFFINE, (1, s * v * 0.03, 0, 0, 1, 0)))
    if name == "shear_y":
        return from_pil(im.transform(im.size, PIL.Image.AFFINE, (1, 0, 0, s * v * 0.03, 1, 0)))
    raise AssertionError(name)


@pytest.mark.parametrize("c", [1, 3])
@pytest.mark.parametrize("name", ["autocontrast", "equalize", "brightness", "color", "contrast", "sharpness",
                                  "rotate", "shear_x", "shear_y"])
def test_ops_match_pil(name, c):
    """Colour ops: within 1 level (PIL truncates its blends and LUTs, we round). Geometry: nearest sampling of
    the same inverse maps, equal but for the rare pixel whose source coordinate rounds the other way."""
    x = images(3, c, 16, 16, seed=4)
    x[1] = (x[1] // 3 + 60)  # a low-contrast image, where autocontrast and equalize do something
    for v, neg in ((2, False), (7, True), (9, False)):
        out = nhwc(_randaugment_op(x, name, v, neg)).astype(int)
        ref = np.stack([pil_reference(img, name, v, neg) for img in nhwc(x)]).astype(int)
        if name in ("rotate", "shear_x", "shear_y"):
            assert (out != ref).mean() < 0.01, (name, v, neg)
        elif name == "equalize":
            assert np.array_equal(out, ref)
        else:
            assert np.abs(out - ref).max() <= 1, (name, v, neg)


def test_signed_geometry_really_uses_the_sign():
    x = images(1, 3, 16, 16)
    for name in ("rotate", "shear_x", "shear_y", "translate_x", "translate_y"):
        assert not torch.equal(_randaugment_op(x, name, 6, False), _randaugment_op(x, name, 6, True)), name


def test_per_image_op_tensor():
    """One call, a different op per image: each image gets exactly its own op."""
    x = images(len(RANDAUGMENT_OPS), 3, 12, 12)
    ops = torch.arange(len(RANDAUGMENT_OPS))
    v = torch.arange(len(RANDAUGMENT_OPS)) % 9 + 1
    neg = ops % 2 == 1
    out = _randaugment_op(x, ops, v, neg)
    for i, name in enumerate(RANDAUGMENT_OPS):
        assert torch.equal(out[i : i + 1], _randaugment_op(x[i : i + 1], name, int(v[i]), bool(neg[i]))), name


# -- cutout ------------------------------------------------------------------------------------------------------
@pytest.mark.parametrize("dtype", [torch.uint8, torch.float32])
def test_cutout_is_one_grey_square_per_image(dtype):
    n, size = 200, 20
    x = torch.zeros(n, 3, size, size, dtype=dtype)
    out = rand_augment(x, gen(5), ops=0, cutout=0.5)  # side int(0.5 * 20) = 10
    fill = 127 if dtype == torch.uint8 else 127 / 255
    grey = out == torch.tensor(fill, dtype=dtype)
    assert torch.equal(grey | (out == 0), torch.ones_like(grey))
    assert torch.equal(grey, grey[:, :1].expand_as(grey))  # all channels
    mask = grey[:, 0]
    rows, cols = mask.any(2), mask.any(1)
    assert torch.equal(mask, rows[:, :, None] & cols[:, None, :])  # a rectangle
    hs, ws = rows.sum(1), cols.sum(1)
    assert (hs >= 1).all() and (hs <= 10).all() and (ws <= 10).all()
    assert ((hs == 10) & (ws == 10)).float().mean() > 0.3  # most boxes are whole; only bottom/right ones clip
    assert rows[:, 0].any() and rows[:, -1].any() and cols[:, 0].any() and cols[:, -1].any()
    assert torch.equal(rand_augment(x, gen(5), ops=0, cutout=0.0), x)


# -- host reads -----------------------------------------------------------------------------------------
def test_the_host_read_probe_catches_reads(forbid_host_reads):
    t = torch.ones(2)
    forbid_host_reads("in the probe's self-test")
    for read in (lambda: t[0].item(), lambda: bool(t[0]), lambda: float(t[0]), lambda: t.tolist()):
        with pytest.raises(AssertionError, match="self-test"):
            read()


@pytest.mark.parametrize("c", [1, 3])
def test_reads_no_tensor_value_on_the_host(forbid_host_reads, c):
    x = images(8, c, 28, 28)
    rand_augment(x, gen())  # import torchvision outside the probe

    forbid_host_reads("inside rand_augment")
    rand_augment(x, gen())
    rand_augment(x.float() / 255, gen())


@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA GPU")
@pytest.mark.parametrize("dtype", [torch.uint8, torch.float32])
def test_cuda_matches_shape_and_has_no_host_sync(dtype):
    x = images(64, 3, 32, 32).cuda()
    if dtype != torch.uint8:
        x = x.to(dtype) / 255
    g = torch.Generator(device="cuda").manual_seed(0)
    rand_augment(x, g)
    torch.cuda.synchronize()
    torch.cuda.set_sync_debug_mode("error")
    try:
        out = rand_augment(x, g)
    finally:
        torch.cuda.set_sync_debug_mode("default")
    assert out.shape == x.shape and out.dtype == dtype and out.permute(0, 2, 3, 1).is_contiguous()
    # a CPU generator drives a CUDA batch too (draws made on the CPU, then moved)
    assert rand_augment(x, gen(1)).device == x.device
