"""Batched, seeded image augmentations, shared by offline pre-augmentation and on-device training.

Every op takes a logical N x C x H x W tensor -- uint8 (0..255) or floating point in [0, 1], on any device,
in any memory layout -- and an explicit `torch.Generator`. It returns a new tensor of the same dtype whose
memory is N x H x W x C contiguous (channels-last), so `out.permute(0, 2, 3, 1).numpy()` is a free view.

Every image gets its own random draws (flip, offsets, jitter factors, erase box); all of them come from the
generator, drawn on the generator's device, so a seeded generator fixes the output.

Fixes relative to the original TF code (reference §C.3, §C.6, §G.2-3): colour jitter runs on [0, 1] data and
is clamped after each step, and random erasing really draws per image (the original drew once at trace
time, so `cutout` was an identity or a crash).
"""

from __future__ import annotations

import torch
from torch import Tensor

from .params import AUGMENTS

__all__ = [
    "AUGMENTS",
    "augment_batch",
    "color_jitter",
    "flip_shift",
    "hsv_to_rgb",
    "RANDAUGMENT_OPS",
    "rand_augment",
    "random_erase",
    "rgb_to_hsv",
]

# (mirror, shift) of the purely geometric augmentations; `color` adds jitter to cifar10's geometry.
_GEOMETRY = {"cifar10": (True, 4), "svhn": (False, 4), "stl10": (True, 12), "color": (True, 4)}


# -- helpers ---------------------------------------------------------------------------------------------
def _check(x: Tensor) -> None:
    if not isinstance(x, Tensor) or x.ndim != 4:
        raise ValueError(f"expected an N x C x H x W tensor, got {getattr(x, 'shape', type(x))}")
    if x.dtype != torch.uint8 and not x.is_floating_point():
        raise ValueError(f"expected uint8 (0..255) or floating point ([0, 1]) images, got {x.dtype}")


def _nhwc(x: Tensor) -> Tensor:
    return x.permute(0, 2, 3, 1)


def _nchw(x: Tensor) -> Tensor:
    return x.permute(0, 3, 1, 2)


def _uniform(gen: torch.Generator, n: int, lo: float, hi: float, device: torch.device) -> Tensor:
    """n draws of U(lo, hi), made on the generator's device and moved to `device`."""
    u = torch.rand(n, generator=gen, device=gen.device)
    return (u * (hi - lo) + lo).to(device)


def _randint(gen: torch.Generator, lo: int, hi: int, n: int, device: torch.device) -> Tensor:
    """n integers uniform in [lo, hi), made on the generator's device and moved to `device`."""
    return torch.randint(lo, hi, (n,), generator=gen, device=gen.device).to(device)


def _reflect(i: Tensor, size: int) -> Tensor:
    """Map indices of a reflect-padded axis (edge not repeated, as TF/torch "reflect") into 0..size-1.

    Reflection is periodic with period 2*(size-1), so pads wider than the image keep bouncing.
    """
    if size == 1:
        return torch.zeros_like(i)
    period = 2 * (size - 1)
    i = i.remainder(period)
    return torch.where(i < size, i, period - i)


def _work_dtype(dtype: torch.dtype) -> torch.dtype:
    # Half precision loses too much in the HSV round trip; uint8 needs a float type anyway.
    return dtype if dtype in (torch.float32, torch.float64) else torch.float32


# -- geometry --------------------------------------------------------------------------------------------
def flip_shift(x: Tensor, generator: torch.Generator, *, flip: bool = True, shift: int = 4) -> Tensor:
    """Per image: horizontal flip with p=0.5 (if `flip`), then reflect-pad by `shift` and crop back.

    The crop offset is uniform in [-shift, shift] on each axis, i.e. a translation with reflected borders.
    Both steps are one gather through per-image row/column index maps: no padded copy, any dtype.
    """
    _check(x)
    if shift < 0:
        raise ValueError(f"shift must be >= 0, got {shift}")
    n, _, h, w = x.shape
    dev = x.device
    flipped = _uniform(generator, n, 0.0, 1.0, dev) < 0.5 if flip else None
    dy = _randint(generator, -shift, shift + 1, n, dev)
    dx = _randint(generator, -shift, shift + 1, n, dev)
    rows = _reflect(torch.arange(h, device=dev) + dy[:, None], h)  # N x H source rows
    cols = _reflect(torch.arange(w, device=dev) + dx[:, None], w)  # N x W source columns
    if flipped is not None:
        # Mirroring first and then shifting reads the mirrored column of the shifted position.
        cols = torch.where(flipped[:, None], (w - 1) - cols, cols)
    batch = torch.arange(n, device=dev)[:, None, None]
    # Indexing the NHWC view with broadcast (N,1,1), (N,H,1), (N,1,W) indices copies whole pixels (all
    # channels) and yields a contiguous NHWC result.
    return _nchw(_nhwc(x)[batch, rows[:, :, None], cols[:, None, :]])


# -- colour ----------------------------------------------------------------------------------------------
def rgb_to_hsv(rgb: Tensor) -> tuple[Tensor, Tensor, Tensor]:
    """RGB in [0, 1] with channels at dim -3 (..., 3, H, W) -> hue in [0, 1], saturation, value (..., H, W).

    Elementwise max/min over the three planes: much faster than a reduction over a length-3 dim.
    """
    r, g, b = rgb.unbind(-3)
    v = torch.maximum(torch.maximum(r, g), b)
    delta = v - torch.minimum(torch.minimum(r, g), b)
    s = delta / torch.where(v > 0, v, 1.0)
    d = torch.where(delta > 0, delta, 1.0)  # grey pixels: hue 0, since then g - b = 0
    h = torch.where(v == r, (g - b) / d, torch.where(v == g, (b - r) / d + 2.0, (r - g) / d + 4.0))
    h = h.div_(6.0)
    # h/6 lies in [-1/6, 5/6]: one wrap suffices (a tiny negative h may round up to 1.0, the same hue as 0)
    return torch.where(h < 0, h + 1.0, h), s, v


def hsv_to_rgb(h: Tensor, s: Tensor, v: Tensor) -> Tensor:
    """Inverse of `rgb_to_hsv`: (..., H, W) planes -> (..., 3, H, W).

    Branch-free form: channel_k = v - v*s*clamp(min(t, 4 - t), 0, 1) with t = (k + 6h) mod 6, k = 5, 3, 1.
    Hue must lie in [0, 1).
    """
    h6 = h * 6.0
    vs = v * s
    out = []
    for k in (5.0, 3.0, 1.0):
        t = h6 + k
        t = torch.where(t >= 6.0, t - 6.0, t)  # t < 12: one wrap is the mod (remainder is much slower)
        out.append(v - vs * torch.minimum(t, 4.0 - t).clamp_(0.0, 1.0))
    return torch.stack(out, dim=-3)


def color_jitter(
    x: Tensor,
    generator: torch.Generator,
    *,
    brightness: tuple[float, float] = (-0.1, 0.1),
    hue: tuple[float, float] = (-0.5, 0.5),
    saturation: tuple[float, float] = (0.1, 3.0),
    contrast: tuple[float, float] = (0.5, 1.5),
) -> Tensor:
    """Per-image colour jitter in TF's order, on [0, 1] data, clamped to [0, 1] after every step.

    Each argument is the (low, high) range of a uniform per-image draw. brightness: delta added; hue:
    rotation as a fraction of the hue circle; saturation: factor (result clipped to [0, 1]); contrast:
    factor around the per-image, per-channel mean (TF adjust_contrast). The defaults are TF's
    random_brightness(0.1), random_hue(0.5), random_saturation(0.1, 3), random_contrast(0.5, 1.5).
    Single-channel images skip hue and saturation. uint8 input is converted to [0, 1] and rounded back.
    """
    _check(x)
    n, c = x.shape[:2]
    if c not in (1, 3):
        raise ValueError(f"colour jitter needs 1 or 3 channels, got {c}")
    dev = x.device
    # Always draw all four so the generator advances the same way for grey and colour images.
    db = _uniform(generator, n, brightness[0], brightness[1], dev)
    dh = _uniform(generator, n, hue[0], hue[1], dev)
    fs = _uniform(generator, n, saturation[0], saturation[1], dev)
    fc = _uniform(generator, n, contrast[0], contrast[1], dev)

    # Planar (NCHW-contiguous) float copy: the HSV maths then runs on contiguous colour planes.
    dt = _work_dtype(x.dtype)
    y = x.to(dt, copy=True, memory_format=torch.contiguous_format)
    if x.dtype == torch.uint8:
        y.div_(255.0)
    y = y.add_(db.to(dt).view(-1, 1, 1, 1)).clamp_(0.0, 1.0)
    if c == 3:
        # Hue then saturation in ONE HSV round trip: the hue step's RGB output already lies in [0, 1], so
        # TF's two separate round trips give the same result up to float rounding.
        h, s, v = rgb_to_hsv(y)
        h = h.add_(dh.to(dt).view(-1, 1, 1))
        h = h - h.floor()  # wrap onto the circle [0, 1)
        s = s.mul_(fs.to(dt).view(-1, 1, 1)).clamp_(0.0, 1.0)
        y = hsv_to_rgb(h, s, v).clamp_(0.0, 1.0)
    mean = _plane_mean(y)
    y = y.sub_(mean).mul_(fc.to(dt).view(-1, 1, 1, 1)).add_(mean).clamp_(0.0, 1.0)
    if x.dtype == torch.uint8:
        y = y.mul_(255.0).round_()
    return y.to(x.dtype, memory_format=torch.channels_last)


def _plane_mean(y: Tensor) -> Tensor:
    """Mean over H and W (N x C x 1 x 1) by pairwise folding: elementwise adds in a fixed order.

    torch's reductions sum in an order that depends on the SIMD width and thread count, so a uint8 result
    rounded from them could differ between machines; this order is fixed (and pairwise-accurate).
    """
    n, c, h, w = y.shape
    s = y.reshape(n, c, h * w)
    length = h * w
    while length > 1:
        half = length // 2
        t = s[..., :half] + s[..., half : 2 * half]
        if length % 2:
            t[..., :1] += s[..., 2 * half :]
        s, length = t, half
    return s.view(n, c, 1, 1) / (h * w)


# -- random erasing --------------------------------------------------------------------------------------
def random_erase(
    x: Tensor,
    generator: torch.Generator,
    *,
    p: float = 0.3,
    area: tuple[float, float] = (0.02, 0.4),
    aspect: float = 0.3,
    max_tries: int = 100,
) -> Tensor:
    """Random erasing (yu4u's eraser, the one `cutout` meant), drawn independently per image.

    With probability p: area s ~ U(*area)*H*W, aspect r ~ U(aspect, 1/aspect), box w = int(sqrt(s/r)),
    h = int(sqrt(s*r)), top-left uniform over the image; redraw until the box fits. The box (all channels)
    is filled with one value ~ U{0..255} for uint8, U(0, 1) for floats. The redraws are batched over the
    images still pending; an image whose box never fits in `max_tries` rounds (only possible for extreme
    aspect ratios, where the original loops forever) is left unerased.
    """
    _check(x)
    n, _, h, w = x.shape
    dev, gdev = x.device, generator.device
    apply = torch.rand(n, generator=generator, device=gdev) < p
    top = torch.zeros(n, dtype=torch.long, device=gdev)
    left = torch.zeros_like(top)
    bh = torch.zeros_like(top)
    bw = torch.zeros_like(top)
    pending = apply.nonzero().squeeze(1)
    for _ in range(max_tries):
        m = len(pending)
        if m == 0:
            break
        s = _uniform(generator, m, area[0], area[1], gdev) * (h * w)
        r = _uniform(generator, m, aspect, 1.0 / aspect, gdev)
        ww = torch.sqrt(s / r).long()  # int() of a positive number: truncation
        hh = torch.sqrt(s * r).long()
        lf = _randint(generator, 0, w, m, gdev)
        tp = _randint(generator, 0, h, m, gdev)
        ok = (lf + ww <= w) & (tp + hh <= h)
        done = pending[ok]
        top[done], left[done], bh[done], bw[done] = tp[ok], lf[ok], hh[ok], ww[ok]
        pending = pending[~ok]
    if x.dtype == torch.uint8:
        fill = _randint(generator, 0, 256, n, dev).to(torch.uint8)
    else:
        fill = _uniform(generator, n, 0.0, 1.0, dev).to(x.dtype)
    top, left, bh, bw = (t.to(dev) for t in (top, left, bh, bw))
    ys = torch.arange(h, device=dev)
    xs = torch.arange(w, device=dev)
    in_y = (ys >= top[:, None]) & (ys < (top + bh)[:, None])  # N x H
    in_x = (xs >= left[:, None]) & (xs < (left + bw)[:, None])  # N x W
    mask = (in_y[:, :, None] & in_x[:, None, :])[..., None]  # N x H x W x 1 (images not erased: empty)
    out = torch.where(mask, fill.view(-1, 1, 1, 1), _nhwc(x))
    return _nchw(out.contiguous())


# -- RandAugment (FixMatch's strong augmentation) ---------------------------------------------------------
# FixMatch's RandAugmentMC pool. Magnitudes v ~ U{1..9} per image and op, scaled as in FixMatch's PyTorch code:
# enhance factors 0.05 + 0.09 v, rotate 3 v degrees, shear 0.03 v, translate 0.03 v of the side (random sign),
# posterize 4 + floor(0.4 v) bits, solarize at 256 - floor(25.6 v).
RANDAUGMENT_OPS = ("identity", "autocontrast", "equalize", "brightness", "color", "contrast", "sharpness",
                   "posterize", "solarize", "rotate", "shear_x", "shear_y", "translate_x", "translate_y")
_GRAY_FILL = 0.5  # geometric borders and the cutout square (FixMatch fills cutout with gray 127)


def _gray(y: Tensor) -> Tensor:
    """Luma (ITU-R 601-2, as PIL's convert("L")) as N x 1 x H x W; a 1-channel image is its own luma."""
    if y.shape[1] == 1:
        return y
    w = torch.tensor([0.299, 0.587, 0.114], dtype=y.dtype, device=y.device).view(1, 3, 1, 1)
    return (y * w).sum(1, keepdim=True)


def _blend(y: Tensor, other: Tensor, factor: Tensor) -> Tensor:
    """PIL's ImageEnhance: other + factor * (y - other), clamped; factor per image."""
    return (other + factor.view(-1, 1, 1, 1) * (y - other)).clamp(0, 1)


def _smoothed(y: Tensor) -> Tensor:
    """PIL's SMOOTH filter (3x3, centre weight 5, total 13) with the border pixels kept, as ImageEnhance.Sharpness."""
    c = y.shape[1]
    k = torch.ones(3, 3, dtype=y.dtype, device=y.device)
    k[1, 1] = 5
    k = (k / 13).expand(c, 1, 3, 3)
    inner = torch.nn.functional.conv2d(y, k, groups=c)
    out = y.clone()
    out[:, :, 1:-1, 1:-1] = inner
    return out


def _affine(y: Tensor, lin: Tensor, shift: Tensor) -> Tensor:
    """Per-image affine warp about the image centre, nearest sampling, gray outside.

    lin (N x 2 x 2) maps output to source pixel offsets from the centre; shift (N x 2) is added in pixels (x, y).
    """
    n, _, h, w = y.shape
    to_norm = torch.tensor([2.0 / w, 2.0 / h], dtype=y.dtype, device=y.device)
    theta = torch.empty(n, 2, 3, dtype=y.dtype, device=y.device)
    # normalised coordinates: theta = D lin D^-1 with D = diag(2/W, 2/H)
    theta[:, :, :2] = to_norm.view(1, 2, 1) * lin / to_norm.view(1, 1, 2)
    theta[:, :, 2] = shift * to_norm
    grid = torch.nn.functional.affine_grid(theta, [n, 1, h, w], align_corners=False)
    inside = torch.ones_like(y[:, :1])
    ys = torch.nn.functional.grid_sample(torch.cat([y, inside], 1), grid, mode="nearest", padding_mode="zeros",
                                         align_corners=False)
    return ys[:, :-1] + _GRAY_FILL * (1 - ys[:, -1:])


def randaugment_op(y: Tensor, op: str, v: Tensor, sign: Tensor) -> Tensor:
    """One RandAugment op on float N x C x H x W images in [0, 1] with per-image magnitude v (1..9, float) and
    sign (+-1, for the symmetric geometric ops)."""
    n, _, h, w = y.shape
    f = 0.05 + 0.09 * v  # enhance factor
    if op == "identity":
        return y
    if op == "autocontrast":  # per channel: stretch min..max to 0..1 (constant planes unchanged)
        lo = y.amin((2, 3), keepdim=True)
        hi = y.amax((2, 3), keepdim=True)
        span = hi - lo
        return torch.where(span > 0, (y - lo) / span.clamp_min(1e-12), y)
    if op == "equalize":  # torchvision's equalize treats every image and channel of a batch on its own
        from torchvision.transforms.v2 import functional as tvf

        return tvf.equalize((y * 255).round().to(torch.uint8)).to(y.dtype) / 255
    if op == "brightness":
        return _blend(y, torch.zeros_like(y), f)
    if op == "color":
        return _blend(y, _gray(y).expand_as(y), f)
    if op == "contrast":
        mean = _gray(y).mean((1, 2, 3), keepdim=True)
        return _blend(y, mean.expand_as(y), f)
    if op == "sharpness":
        return _blend(y, _smoothed(y), f)
    if op in ("posterize", "solarize"):
        q = (y * 255).round()
        if op == "posterize":
            step = torch.pow(2.0, 8 - (4 + torch.floor(0.4 * v))).view(-1, 1, 1, 1)  # keep 4..7 bits
            return torch.floor(q / step) * step / 255
        threshold = (256 - torch.floor(25.6 * v)).view(-1, 1, 1, 1)
        return torch.where(q >= threshold, 255 - q, q) / 255
    lin = torch.eye(2, dtype=y.dtype, device=y.device).repeat(n, 1, 1)
    shift = torch.zeros(n, 2, dtype=y.dtype, device=y.device)
    if op == "rotate":
        a = torch.deg2rad(3.0 * v * sign)
        cos, sin = torch.cos(a), torch.sin(a)
        lin = torch.stack([torch.stack([cos, -sin], -1), torch.stack([sin, cos], -1)], -2)
    elif op == "shear_x":
        lin[:, 0, 1] = 0.03 * v * sign
    elif op == "shear_y":
        lin[:, 1, 0] = 0.03 * v * sign
    elif op == "translate_x":
        shift[:, 0] = torch.round(0.03 * v * w) * sign
    elif op == "translate_y":
        shift[:, 1] = torch.round(0.03 * v * h) * sign
    else:
        raise ValueError(f"unknown RandAugment op {op!r}; choose one of: {', '.join(RANDAUGMENT_OPS)}")
    return _affine(y, lin.to(y.dtype), shift)


def cutout_square(y: Tensor, generator: torch.Generator, side: int) -> Tensor:
    """FixMatch's CutoutAbs: a side x side gray square (clipped at the borders) at a uniform random centre."""
    n, _, h, w = y.shape
    cy = _randint(generator, 0, h, n, y.device)
    cx = _randint(generator, 0, w, n, y.device)
    top, left = (cy - side // 2).clamp_min(0), (cx - side // 2).clamp_min(0)
    bottom, right = (cy - side // 2 + side).clamp_max(h), (cx - side // 2 + side).clamp_max(w)
    rows = torch.arange(h, device=y.device)
    cols = torch.arange(w, device=y.device)
    in_y = (rows >= top[:, None]) & (rows < bottom[:, None])
    in_x = (cols >= left[:, None]) & (cols < right[:, None])
    mask = (in_y[:, :, None] & in_x[:, None, :])[:, None]
    return torch.where(mask, torch.full_like(y, _GRAY_FILL), y)


def rand_augment(x: Tensor, generator: torch.Generator, *, ops: int = 2, cutout: float = 0.5) -> Tensor:
    """FixMatch's strong augmentation (RandAugmentMC), drawn per image: `ops` ops from the 14-op pool, each with
    its own magnitude and applied with probability 0.5, then a gray cutout square of side `cutout` x the image side.

    torchvision's RandAugment draws one op and magnitude per call (one set for a whole batch), so the draws here
    are tensors over the batch and every op is computed for the batch and selected per image; torchvision's
    functional `equalize` does the one op that is per image already. No host reads: it stays sync-free on CUDA.
    """
    _check(x)
    n = x.shape[0]
    dev = x.device
    y = x.to(_work_dtype(x.dtype))
    if x.dtype == torch.uint8:
        y = y / 255
    for _ in range(ops):
        choice = _randint(generator, 0, len(RANDAUGMENT_OPS), n, dev)
        v = _randint(generator, 1, 10, n, dev).to(y.dtype)
        sign = torch.where(_uniform(generator, n, 0.0, 1.0, dev) < 0.5, -1.0, 1.0).to(y.dtype)
        apply = _uniform(generator, n, 0.0, 1.0, dev) < 0.5
        for j, name in enumerate(RANDAUGMENT_OPS[1:], start=1):
            picked = ((choice == j) & apply).view(-1, 1, 1, 1)
            y = torch.where(picked, randaugment_op(y, name, v, sign), y)
    side = int(cutout * min(x.shape[2], x.shape[3]))
    if side > 0:
        y = cutout_square(y, generator, side)
    if x.dtype == torch.uint8:
        y = (y * 255).round().clamp(0, 255).to(torch.uint8)
    else:
        y = y.clamp(0, 1).to(x.dtype)
    return _nchw(_nhwc(y).contiguous())


# -- named augmentations ---------------------------------------------------------------------------------
def augment_batch(x: Tensor, kind: str, generator: torch.Generator, *, cutout_prob: float = 0.3) -> Tensor:
    """Apply the named augmentation (one of `AUGMENTS`) to a batch, independently per image.

    cifar10 = mirror + shift(4); svhn = shift(4); stl10 = mirror + shift(12); color = mirror + colour
    jitter + shift(4); cutout = random erasing with probability `cutout_prob`; none = the input itself.
    """
    if kind not in AUGMENTS:
        raise ValueError(f"unknown augment {kind!r}; choose one of: {', '.join(AUGMENTS)}")
    _check(x)
    if kind == "none":
        return x
    if kind == "cutout":
        return random_erase(x, generator, p=cutout_prob)
    flip, shift = _GEOMETRY[kind]
    if kind == "color":
        # Jitter is per pixel except for the contrast mean, which a mirror leaves unchanged, so jittering
        # before mirror+shift equals the original mirror -> jitter -> shift and needs only one gather.
        x = color_jitter(x, generator)
    return flip_shift(x, generator, flip=flip, shift=shift)
