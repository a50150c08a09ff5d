"""realmix.augment: per-image randomness, exact geometry, colour maths, random erasing, dtypes, layouts."""

from __future__ import annotations

import typing

import numpy as np
import pytest
import torch

from realmix import params
from realmix.augment import (
    AUGMENTS,
    augment_batch,
    color_jitter,
    flip_shift,
    hsv_to_rgb,
    random_erase,
    rgb_to_hsv,
)


def gen(seed: int = 0) -> torch.Generator:
    return torch.Generator().manual_seed(seed)


def nhwc_images(n: int, h: int = 16, w: int = 16, c: int = 3, seed: int = 0) -> np.ndarray:
    return np.random.default_rng(seed).integers(0, 256, (n, h, w, c), dtype=np.uint8)


def as_nchw(a: np.ndarray) -> torch.Tensor:
    """The preaugment layout: a non-contiguous NCHW view of NHWC memory."""
    return torch.from_numpy(a).permute(0, 3, 1, 2)


def to_np(x: torch.Tensor) -> np.ndarray:
    return x.permute(0, 2, 3, 1).numpy()


def candidates(img: np.ndarray, shift: int, flip: bool) -> dict[tuple[int, int, bool], np.ndarray]:
    """Reference: every (dy, dx, flipped) outcome of mirror + reflect-pad + crop, with numpy."""
    h, w = img.shape[:2]
    out = {}
    for flipped in (False, True) if flip else (False,):
        src = img[:, ::-1] if flipped else img
        padded = np.pad(src, ((shift, shift), (shift, shift), (0, 0)), mode="reflect")
        for oy in range(2 * shift + 1):
            for ox in range(2 * shift + 1):
                out[(oy - shift, ox - shift, flipped)] = padded[oy : oy + h, ox : ox + w]
    return out


def matches(out: np.ndarray, cands: dict) -> list:
    return [k for k, v in cands.items() if np.array_equal(out, v)]


# -- names and API ---------------------------------------------------------------------------------------
def test_augments_match_params():
    assert AUGMENTS == params.AUGMENTS
    hint = typing.get_type_hints(params.PreaugmentParams)["augment"]
    assert set(typing.get_args(hint)) == set(AUGMENTS)


def test_unknown_kind_lists_choices():
    with pytest.raises(ValueError, match="cifar10, svhn, stl10, color, cutout, none"):
        augment_batch(as_nchw(nhwc_images(2)), "mirror", gen())


def test_bad_inputs():
    with pytest.raises(ValueError):
        flip_shift(torch.zeros(3, 8, 8, dtype=torch.uint8), gen())
    with pytest.raises(ValueError):
        flip_shift(torch.zeros(1, 3, 8, 8, dtype=torch.int32), gen())


@pytest.mark.parametrize("kind", AUGMENTS)
@pytest.mark.parametrize("layout", ["nhwc-view", "nchw"])
def test_every_kind_runs_on_noncontiguous_and_contiguous_input(kind, layout):
    a = nhwc_images(32)
    x = as_nchw(a) if layout == "nhwc-view" else as_nchw(a).contiguous()
    y = augment_batch(x, kind, gen(), cutout_prob=0.5)
    assert y.shape == x.shape and y.dtype == torch.uint8
    assert np.array_equal(a, nhwc_images(32)), "the input must not be modified"
    if kind == "none":
        assert torch.equal(y, x)
    else:
        assert y.permute(0, 2, 3, 1).is_contiguous(), "output memory should be NHWC"
        assert not torch.equal(y, x)
    yf = augment_batch(x.float() / 255, kind, gen(), cutout_prob=0.5)
    assert yf.dtype == torch.float32 and 0 <= yf.min() and yf.max() <= 1


@pytest.mark.parametrize("kind", [k for k in AUGMENTS if k != "none"])
def test_deterministic_for_a_seed(kind):
    x = as_nchw(nhwc_images(64))
    a = augment_batch(x, kind, gen(3))
    assert torch.equal(a, augment_batch(x, kind, gen(3)))
    assert not torch.equal(a, augment_batch(x, kind, gen(4)))


@pytest.mark.parametrize("kind", [k for k in AUGMENTS if k != "none"])
def test_identical_images_get_different_draws(kind):
    x = as_nchw(np.repeat(nhwc_images(1), 128, axis=0))
    y = to_np(augment_batch(x, kind, gen(), cutout_prob=0.5))
    distinct = len({img.tobytes() for img in y})
    assert distinct > 30, f"{kind}: only {distinct} distinct outputs from 128 identical inputs"


# -- geometry --------------------------------------------------------------------------------------------
@pytest.mark.parametrize(("flip", "shift"), [(False, 4), (True, 4), (True, 2)])
def test_flip_shift_is_a_reflected_translation(flip, shift):
    a = nhwc_images(400, 12, 10)
    y = to_np(flip_shift(as_nchw(a), gen(), flip=flip, shift=shift))
    seen = []
    for img, out in zip(a, y, strict=True):
        found = matches(out, candidates(img, shift, flip))
        assert len(found) == 1, "output is not exactly one reflected translation of its own input"
        seen.append(found[0])
    dys, dxs, flips = zip(*seen, strict=True)
    # Per-image draws cover every offset on both axes (and both flip states).
    assert set(dys) == set(dxs) == set(range(-shift, shift + 1))
    assert set(flips) == ({False, True} if flip else {False})


def test_flip_only_mirrors_about_half():
    a = nhwc_images(1000, 8, 8)
    y = to_np(flip_shift(as_nchw(a), gen(), flip=True, shift=0))
    same = np.array([np.array_equal(o, i) for o, i in zip(y, a, strict=True)])
    mirrored = np.array([np.array_equal(o, i[:, ::-1]) for o, i in zip(y, a, strict=True)])
    assert np.all(same ^ mirrored)
    assert 0.4 < mirrored.mean() < 0.6


def test_shift_wider_than_the_image_keeps_reflecting():
    a = nhwc_images(50, 4, 4)
    y = to_np(flip_shift(as_nchw(a), gen(), flip=False, shift=6))  # torch/np "reflect" need pad < size
    for img, out in zip(a, y, strict=True):
        assert len(matches(out, candidates(img, 6, False))) >= 1


def test_flip_shift_uint8_and_float_agree():
    x = as_nchw(nhwc_images(64))
    yu = flip_shift(x, gen(5))
    yf = flip_shift(x.double() / 255, gen(5))
    assert yf.dtype == torch.float64
    assert torch.equal((yf * 255).round().to(torch.uint8), yu)


def test_single_channel_geometry():
    a = nhwc_images(20, c=1)
    y = to_np(augment_batch(as_nchw(a), "stl10", gen()))
    assert y.shape == a.shape


# -- colour ----------------------------------------------------------------------------------------------
def test_hsv_round_trip_and_red_to_cyan():
    rgb = torch.rand(4, 3, 8, 8, generator=gen())
    h, s, v = rgb_to_hsv(rgb)
    assert 0 <= h.min() and h.max() <= 1
    torch.testing.assert_close(hsv_to_rgb(h, s, v), rgb, atol=1e-5, rtol=0)
    red = torch.zeros(1, 3, 2, 2)
    red[:, 0] = 1
    h, s, v = rgb_to_hsv(red)
    assert torch.all(h == 0) and torch.all(s == 1) and torch.all(v == 1)
    cyan = hsv_to_rgb((h + 0.5) % 1, s, v)
    torch.testing.assert_close(cyan, torch.tensor([0.0, 1.0, 1.0]).view(1, 3, 1, 1).expand(1, 3, 2, 2))


def test_hue_shift_of_half_turns_red_cyan():
    red = torch.zeros(2, 3, 4, 4, dtype=torch.uint8)
    red[:, 0] = 255
    y = color_jitter(red, gen(), brightness=(0, 0), hue=(0.5, 0.5), saturation=(1, 1), contrast=(1, 1))
    assert torch.equal(y[:, 0], torch.zeros_like(y[:, 0]))
    assert torch.equal(y[:, 1:], torch.full_like(y[:, 1:], 255))


def test_color_stays_in_range_and_changes_images():
    a = nhwc_images(200)
    yu = color_jitter(as_nchw(a), gen(1))
    assert yu.dtype == torch.uint8 and yu.permute(0, 2, 3, 1).is_contiguous()
    changed = (to_np(yu) != a).reshape(len(a), -1).any(1)
    assert changed.mean() > 0.95
    yf = color_jitter(as_nchw(a).float() / 255 * 4 - 1.5, gen(1))  # even out-of-range input is clamped
    assert 0 <= yf.min() and yf.max() <= 1
    yf = color_jitter(as_nchw(a).float() / 255, gen(1))
    # uint8 and float paths compute the same thing (rounding apart).
    assert ((yf * 255).round() - yu.float()).abs().max() <= 1


def test_brightness_only():
    grey = torch.full((500, 3, 4, 4), 0.5)
    y = color_jitter(grey, gen(), hue=(0, 0), saturation=(1, 1), contrast=(1, 1))
    per_image = y.flatten(1)
    torch.testing.assert_close(per_image, per_image[:, :1].expand_as(per_image))  # shifted uniformly
    delta = per_image[:, 0] - 0.5
    assert delta.abs().max() <= 0.1 + 1e-6 and delta.min() < -0.08 and delta.max() > 0.08
    white = color_jitter(torch.ones(100, 3, 4, 4), gen(), hue=(0, 0), saturation=(1, 1), contrast=(1, 1))
    assert white.max() <= 1 and white.min() >= 0.9 - 1e-6  # clamped, not wrapped


def test_contrast_scales_around_channel_mean():
    x = torch.tensor([0.4, 0.6]).repeat(8).view(1, 1, 4, 4).expand(3, 3, 4, 4).clone()
    x[:, 1] += 0.2  # a different mean per channel
    y = color_jitter(x, gen(), brightness=(0, 0), hue=(0, 0), saturation=(1, 1), contrast=(2, 2))
    mean = x.mean(dim=(2, 3), keepdim=True)
    torch.testing.assert_close(y, (x - mean) * 2 + mean, atol=1e-5, rtol=0)
    y = color_jitter(x, gen(), brightness=(0, 0), hue=(0, 0), saturation=(1, 1), contrast=(10, 10))
    assert y.min() == 0 and y.max() == 1  # clamped after the step


def test_saturation_zero_gives_grey_and_grey_images_skip_hsv():
    x = torch.rand(10, 3, 6, 6, generator=gen())
    y = color_jitter(x, gen(), brightness=(0, 0), hue=(0, 0), saturation=(0, 0), contrast=(1, 1))
    torch.testing.assert_close(y[:, 0], y[:, 1])
    torch.testing.assert_close(y[:, 1], y[:, 2])
    g = color_jitter(torch.rand(10, 1, 6, 6, generator=gen()), gen())
    assert g.shape == (10, 1, 6, 6) and 0 <= g.min() and g.max() <= 1


# -- random erasing --------------------------------------------------------------------------------------
@pytest.mark.parametrize("dtype", [torch.uint8, torch.float32])
def test_random_erase_boxes(dtype):
    n, h, w, p = 4000, 32, 32, 0.3
    a = nhwc_images(n, h, w)
    x = as_nchw(a) if dtype == torch.uint8 else as_nchw(a).float() / 255
    y = random_erase(x, gen(), p=p)
    assert y.dtype == dtype and y.permute(0, 2, 3, 1).is_contiguous()
    changed = (y != x).any(1)  # N x H x W
    erased = changed.flatten(1).any(1)
    assert abs(erased.float().mean().item() - p) < 0.04  # 4000 draws: sd 0.007
    for i in torch.nonzero(erased).flatten()[:300].tolist():
        rows = torch.nonzero(changed[i].any(1)).flatten()
        cols = torch.nonzero(changed[i].any(0)).flatten()
        t, b, left, r = rows.min(), rows.max() + 1, cols.min(), cols.max() + 1
        assert changed[i, t:b, left:r].all(), "the erased region is not a filled rectangle"
        box = y[i, :, t:b, left:r]
        assert torch.all(box == box.flatten()[0]), "the box is not filled with one value over all channels"
        area = (b - t) * (r - left)
        assert 4 <= area <= 0.4 * h * w


def test_random_erase_extremes():
    x = as_nchw(nhwc_images(50))
    assert torch.equal(random_erase(x, gen(), p=0.0), x)
    assert (random_erase(x, gen(), p=1.0) != x).flatten(1).any(1).all()
    tall = torch.zeros(5, 3, 1, 200, dtype=torch.uint8)  # no box can ever fit: must terminate
    assert random_erase(tall, gen(), p=1.0, max_tries=5).shape == tall.shape


@pytest.mark.parametrize("channels", [1, 3])
def test_brightness_is_clamped_before_contrast(channels):
    x = torch.zeros(2, channels, 4, 4)
    x[..., :2] = 1.0  # half white, half black: mean 0.5
    y = color_jitter(x, gen(), brightness=(0.1, 0.1), hue=(0, 0), saturation=(1, 1), contrast=(0.5, 0.5))
    # Clamped brightness gives 1.0 / 0.1 (mean 0.55); unclamped would give 1.1 / 0.1 -> 0.85 / 0.35.
    torch.testing.assert_close(y[..., 0], torch.full_like(y[..., 0], 0.775))
    torch.testing.assert_close(y[..., 3], torch.full_like(y[..., 3], 0.325))


def test_output_does_not_depend_on_thread_count():
    x = as_nchw(nhwc_images(256))
    before = torch.get_num_threads()
    try:
        outs = []
        for threads in (1, 2):
            torch.set_num_threads(threads)
            outs.append([augment_batch(x, kind, gen(7)) for kind in AUGMENTS])
    finally:
        torch.set_num_threads(before)
    assert all(torch.equal(a, b) for a, b in zip(*outs, strict=True))
