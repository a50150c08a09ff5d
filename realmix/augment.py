"""Batched, seeded image augmentations, shared by offline pre-augmentation and on-device training.

Every op takes a logical N x C x H x W tensor -- uint8 (0..255) or floating point in [0, 1], on any device,
in any memory layout -- and an explicit draw source (below). It returns a new tensor of the same dtype whose
memory is N x H x W x C contiguous (channels-last), so `out.permute(0, 2, 3, 1).numpy()` is a free view.

Every image gets its own random draws (flip, offsets, jitter factors, erase box); all of them come from the
draw source, drawn on its device: a seeded `torch.Generator` (the training loop: a checkpointed stream) or a
`realmix.draws.HashDraws` (a pre-augmented pool: each draw a hash of (seed, item, draw index), so any item
comes out the same in any batch). The ops are the same code for both; the only difference is that a draw made
for some images only (random erasing's redraws) reads, in the hashed case, the values all images would get.

Fixes relative to the original TF code (reference §C.3, §C.6, §G.2-3): colour jitter runs on [0, 1] data and
is clamped after each step, and random erasing really draws per image (the original drew once at trace
time, so `cutout` was an identity or a crash).
"""

from __future__ import annotations

from contextlib import AbstractContextManager, nullcontext

import torch
from torch import Tensor

from .draws import DrawSource

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

AUGMENTS = ("cifar10", "svhn", "stl10", "color", "cutout", "none")  # the kinds `augment_batch` applies

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


def _uniform(gen: DrawSource, n: int, lo: float, hi: float, device: torch.device, rows: Tensor | None = None
             ) -> Tensor:
    """n draws of U(lo, hi), made on the draw source's device and moved to `device`; `rows`: the images of the
    batch they are for (hashed draws need them; a generator just draws n)."""
    if isinstance(gen, torch.Generator):
        u = torch.rand(n, generator=gen, device=gen.device)
    else:
        u = gen.unit(n, rows)
    return (u * (hi - lo) + lo).to(device)


def _randint(gen: DrawSource, lo: int, hi: int, n: int, device: torch.device, rows: Tensor | None = None
             ) -> Tensor:
    """n integers uniform in [lo, hi), made on the draw source's device and moved to `device` (`rows`: as
    `_uniform`)."""
    if isinstance(gen, torch.Generator):
        return torch.randint(lo, hi, (n,), generator=gen, device=gen.device).to(device)
    return gen.integers(lo, hi, n, rows).to(device)


def _reserve(gen: DrawSource, calls: int) -> AbstractContextManager[None]:
    """A block of at most `calls` draws whose count depends on the batch: hashed draws give it a fixed range of
    draw indices (so what follows does not depend on the batch); a generator stream needs nothing."""
    return nullcontext() if isinstance(gen, torch.Generator) else gen.reserve(calls)


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
def flip_shift(x: Tensor, generator: DrawSource, *, flip: bool = True, shift: int = 4) -> Tensor:
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
    generator: DrawSource,
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
    generator: DrawSource,
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
    apply = _uniform(generator, n, 0.0, 1.0, gdev) < p  # u * 1 + 0 == u: the generator's plain torch.rand
    top = torch.zeros(n, dtype=torch.long, device=gdev)
    left = torch.zeros_like(top)
    bh = torch.zeros_like(top)
    bw = torch.zeros_like(top)
    pending = apply.nonzero().squeeze(1)
    with _reserve(generator, 4 * max_tries):
        for _ in range(max_tries):
            m = len(pending)
            if m == 0:
                break
            s = _uniform(generator, m, area[0], area[1], gdev, pending) * (h * w)
            r = _uniform(generator, m, aspect, 1.0 / aspect, gdev, pending)
            ww = torch.sqrt(s / r).long()  # int() of a positive number: truncation
            hh = torch.sqrt(s * r).long()
            lf = _randint(generator, 0, w, m, gdev, pending)
            tp = _randint(generator, 0, h, m, gdev, pending)
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


# -- RandAugment ------------------------------------------------------------------------------------------
# FixMatch's RandAugmentMC pool (kekmodel/FixMatch-pytorch, fixmatch_augment_pool), in its order.
RANDAUGMENT_OPS = (
    "autocontrast", "brightness", "color", "contrast", "equalize", "identity", "posterize",
    "rotate", "sharpness", "shear_x", "shear_y", "solarize", "translate_x", "translate_y",
)  # fmt: skip
_OP = {name: i for i, name in enumerate(RANDAUGMENT_OPS)}
_BLEND = ("brightness", "color", "contrast", "sharpness")
_GEOMETRIC = ("rotate", "shear_x", "shear_y", "translate_x", "translate_y")
_CUTOUT_FILL = 127  # FixMatch-pytorch's grey; 127/255 for float images


def _tvf():
    # Imported lazily: torchvision costs ~1 s to import and only RandAugment needs it (realmix/__init__.py has
    # already installed its CPU-torch import fix, since this module is part of the package).
    import torchvision.transforms.v2.functional as tvf

    return tvf


def rand_augment(
    x: Tensor, generator: DrawSource, *, ops: int = 2, magnitude_max: int = 10, cutout: float = 0.5
) -> Tensor:
    """FixMatch's RandAugmentMC then Cutout, drawn independently per image.

    Per image and per round (`ops` rounds): an op is drawn uniformly from `RANDAUGMENT_OPS` (with
    replacement across rounds), applied with probability 0.5, at magnitude v uniform in
    {1, ..., magnitude_max - 1} (FixMatch-pytorch's np.random.randint(1, m)), with a random sign for the
    signed ops. Magnitudes (the reference's PIL semantics, see `_ra_round`): brightness / color / contrast /
    sharpness blend factor 0.09 v + 0.05; posterize to 4 + (4v // 10) bits; rotate by 3v degrees; shear
    0.03 v; translate trunc(0.03 v * size) pixels; solarize above 256 - (256v // 10). Then Cutout: a square
    of side int(cutout * min(H, W)) (16 px on 32 px images, as the reference's CutoutAbs(img, 16)) at a
    uniform random centre, clipped at the border, filled with grey 127 (127/255 for floats).

    uint8 data is rounded to 0..255 after every op, as PIL does; float data stays continuous in [0, 1].
    No tensor value is read on the host: every op is computed for every image and selected per image
    (boolean indexing by op would need the selected count on the host).
    """
    _check(x)
    if ops < 0:
        raise ValueError(f"ops must be >= 0, got {ops}")
    if not 2 <= magnitude_max <= 11:
        raise ValueError(f"magnitude_max must be in 2..11 (v is drawn in 1..magnitude_max-1), got {magnitude_max}")
    if not 0.0 <= cutout <= 1.0:
        raise ValueError(f"cutout must be in [0, 1], got {cutout}")
    n, c, h, w = x.shape
    if c not in (1, 3):
        raise ValueError(f"RandAugment needs 1 or 3 channels, got {c}")
    dev = x.device
    y, quantize = _ra_work(x)
    for _ in range(ops):
        op = _randint(generator, 0, len(RANDAUGMENT_OPS), n, dev)
        applied = _uniform(generator, n, 0.0, 1.0, dev) < 0.5
        v = _randint(generator, 1, magnitude_max, n, dev)
        negate = _uniform(generator, n, 0.0, 1.0, dev) < 0.5
        y = _ra_round(y, torch.where(applied, op, _OP["identity"]), v, negate, quantize)
    # Cutout (CutoutAbs): x0 = int(max(0, cx - s/2)), x1 = min(W, x0 + s); the same on the rows.
    side = int(cutout * min(h, w))
    cx = _uniform(generator, n, 0.0, float(w), dev)
    cy = _uniform(generator, n, 0.0, float(h), dev)
    x0 = (cx - side / 2).clamp_(min=0.0).long()
    y0 = (cy - side / 2).clamp_(min=0.0).long()
    in_x = (torch.arange(w, device=dev) >= x0[:, None]) & (torch.arange(w, device=dev) < (x0 + side)[:, None])
    in_y = (torch.arange(h, device=dev) >= y0[:, None]) & (torch.arange(h, device=dev) < (y0 + side)[:, None])
    box = (in_y[:, :, None] & in_x[:, None, :])[:, None]  # N x 1 x H x W
    y = torch.where(box, _CUTOUT_FILL / 255.0, y)
    return _ra_out(y, x.dtype)


def _ra_work(x: Tensor) -> tuple[Tensor, bool]:
    """The planar float working copy in [0, 1], and whether to round to 1/255 steps after every op."""
    y = x.to(_work_dtype(x.dtype), copy=True, memory_format=torch.contiguous_format)
    if x.dtype == torch.uint8:
        return y.div_(255.0), True
    return y, False


def _ra_out(y: Tensor, dtype: torch.dtype) -> Tensor:
    if dtype == torch.uint8:
        y = y.mul(255.0).round_()
    return y.to(dtype, memory_format=torch.channels_last)


def _randaugment_op(x: Tensor, op: int | str | Tensor, v: int | Tensor, negate: bool | Tensor = False) -> Tensor:
    """Apply one RandAugment op (name or index, or a per-image index tensor) at magnitude v to every image.

    Deterministic: for tests and inspection. Same input/output conventions as `rand_augment`.
    """
    _check(x)
    n, dev = x.shape[0], x.device
    if isinstance(op, str):
        op = _OP[op]
    op, v, negate = (torch.as_tensor(t, device=dev).expand(n) for t in (op, v, negate))
    y, quantize = _ra_work(x)
    return _ra_out(_ra_round(y, op.long(), v.long(), negate.bool(), quantize), x.dtype)


def _ra_round(y: Tensor, op: Tensor, v: Tensor, negate: Tensor, quantize: bool) -> Tensor:
    """One RandAugment round on the planar working batch y (N x C x H x W in [0, 1]): image i gets op[i]
    at magnitude v[i] (N longs), sign -1 where negate[i].

    Every op is computed for the whole batch and chosen with torch.where. torchvision (v2.functional)
    supplies the pieces that are per image without parameters: `equalize` (per image and channel
    histograms, PIL's LUT), the Sharpness degenerate (`adjust_sharpness(y, 0)`: PIL's 3x3 smoothing, border
    kept) and `rgb_to_grayscale`. What it cannot do is take one factor, angle or threshold per image in a
    batched call (each takes a Python number, and its argument checks would read a tensor on the host), so
    the blends, posterize, solarize, autocontrast (its bool-mask assignment syncs on CUDA) and the affine
    warps are written here, the warps as one nearest-neighbour gather through per-image PIL-style matrices.
    """
    tvf = _tvf()
    n, c, h, w = y.shape
    dt = y.dtype
    is_op = {name: (op == i).view(-1, 1, 1, 1) for name, i in _OP.items()}

    def q(t: Tensor) -> Tensor:  # PIL works on uint8: round every intermediate image
        return t.mul(255.0).round_().div_(255.0) if quantize else t

    out = y
    # Blends (PIL ImageEnhance): degenerate + f * (image - degenerate), f = 0.09 v + 0.05.
    gray = q(tvf.rgb_to_grayscale(y)) if c == 3 else y
    degenerate = torch.where(is_op["brightness"], 0.0, gray.expand_as(y))  # color: grey; brightness: black
    mean = q(_plane_mean(gray))  # contrast: mean of the grey image, one value per image
    degenerate = torch.where(is_op["contrast"], mean, degenerate)
    degenerate = torch.where(is_op["sharpness"], q(tvf.adjust_sharpness(y, 0.0)), degenerate)
    factor = (v.to(dt) * 0.09 + 0.05).view(-1, 1, 1, 1)
    blended = q(degenerate + factor * (y - degenerate)).clamp_(0.0, 1.0)
    is_blend = torch.stack([is_op[k] for k in _BLEND]).any(0)
    out = torch.where(is_blend, blended, out)

    # AutoContrast: per image and channel, stretch [min, max] to [0, 1]; flat channels are left alone.
    lo = y.amin(dim=(2, 3), keepdim=True)
    hi = y.amax(dim=(2, 3), keepdim=True)
    flat = hi <= lo
    stretched = ((y - lo) / torch.where(flat, 1.0, hi - lo)).clamp_(0.0, 1.0)
    out = torch.where(is_op["autocontrast"] & ~flat, q(stretched), out)
    out = torch.where(is_op["equalize"], tvf.equalize(y), out)

    # Posterize / Solarize on the 0..255 scale (exact bit masks for uint8 data).
    y255 = y * 255.0
    if quantize:
        y255 = y255.round_()
    step = torch.pow(2.0, 4 - (v * 4) // 10).to(dt).view(-1, 1, 1, 1)  # 2 ** (8 - bits), bits = 4 + 4v//10
    out = torch.where(is_op["posterize"], torch.floor(y255 / step) * step / 255.0, out)
    threshold = (256 - (v * 256) // 10).to(dt).view(-1, 1, 1, 1)
    out = torch.where(is_op["solarize"] & (y255 >= threshold), 1.0 - y, out)

    # Geometry: output pixel centre p -> source M p (PIL's inverse affine maps), nearest = floor, fill 0.
    sign = torch.where(negate, -1.0, 1.0).to(dt)
    rot = torch.deg2rad((v * 3).to(dt)) * sign  # PIL rotate(deg): counter-clockwise about (W/2, H/2)
    cos, sin = torch.cos(rot), torch.sin(rot)
    shear = v.to(dt) * 0.03 * sign
    tx = torch.where(negate, -1, 1) * ((v * 3 * w) // 100)  # int(0.03 v * W), truncated before the sign
    ty = torch.where(negate, -1, 1) * ((v * 3 * h) // 100)
    r, sx, sy = (op == _OP[k] for k in ("rotate", "shear_x", "shear_y"))
    one, zero = torch.ones_like(cos), torch.zeros_like(cos)
    a = torch.where(r, cos, one)
    b = torch.where(r, -sin, torch.where(sx, shear, zero))
    d = torch.where(r, sin, torch.where(sy, shear, zero))
    e = a
    cx, cy = w / 2, h / 2
    c0 = torch.where(r, cx - a * cx - b * cy, torch.where(op == _OP["translate_x"], tx.to(dt), zero))
    f0 = torch.where(r, cy - d * cx - e * cy, torch.where(op == _OP["translate_y"], ty.to(dt), zero))
    px = (torch.arange(w, device=y.device, dtype=dt) + 0.5).view(1, 1, w)
    py = (torch.arange(h, device=y.device, dtype=dt) + 0.5).view(1, h, 1)
    col = lambda t: t.view(-1, 1, 1)  # noqa: E731
    src_x = torch.floor(col(a) * px + col(b) * py + col(c0)).long()  # N x H x W
    src_y = torch.floor(col(d) * px + col(e) * py + col(f0)).long()
    inside = (src_x >= 0) & (src_x < w) & (src_y >= 0) & (src_y < h)
    index = (src_y.clamp(0, h - 1) * w + src_x.clamp(0, w - 1)).view(n, 1, h * w).expand(n, c, h * w)
    warped = y.reshape(n, c, h * w).gather(2, index).view(n, c, h, w)
    warped = torch.where(inside[:, None], warped, 0.0)
    is_geo = torch.stack([is_op[k] for k in _GEOMETRIC]).any(0)
    return torch.where(is_geo, warped, out)


# -- named augmentations ---------------------------------------------------------------------------------
def augment_batch(x: Tensor, kind: str, generator: DrawSource, *, cutout_prob: float = 0.3) -> Tensor:
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
