"""Pure tensor ops of the MixMatch family (method reference §A): each one small and unit-tested.

Randomness is passed in explicitly (a `numpy.random.Generator` for MixUp's lambdas and partners), so a
seeded run is reproducible and its generator state can be checkpointed.
"""

from __future__ import annotations

import contextlib
import math
from collections.abc import Iterator, Sequence

import numpy as np
import torch
from torch import Tensor, nn

from .hardware import to_device

__all__ = ["MIXMODES", "TSA", "frozen_bn_stats", "interleave", "interleave_offsets", "masked_mean", "mix_pair",
           "mix_reversed", "mixmode", "mixup_lambdas", "one_vs_all_loss", "ood_percentile_mask", "ood_threshold_mask",
           "open_targets", "sharpen", "smooth_labels", "soft_cross_entropy", "tsa_mask", "tsa_threshold"]

TSA = ("none", "linear_schedule", "exp_schedule", "log_schedule")  # `none` or a schedule of `tsa_threshold`
MIXMODES = ("xxy.yxy", ".", "xx.", ".yy", "xx.yy", "xxy.", ".yxy", "xx.yxy", "xx.yx")  # what `mixmode` mixes


# -- label guessing --------------------------------------------------------------------------------------
def sharpen(p: Tensor, T: float) -> Tensor:
    """p^(1/T) renormalised over the last dim (T = 0.5: p^2 / sum p^2)."""
    q = p.pow(1.0 / T)
    return q / q.sum(-1, keepdim=True)


def smooth_labels(labels: Tensor, num_classes: int, smoothing: float) -> Tensor:
    """One-hot with label smoothing: (1 - s) * onehot + s / K (the original `l - s * (l - 1/K)`)."""
    onehot = nn.functional.one_hot(labels, num_classes).float()
    return onehot - smoothing * (onehot - 1.0 / num_classes)


def soft_cross_entropy(logits: Tensor, targets: Tensor) -> Tensor:
    """Per-row cross-entropy against soft targets (MixUp-ed or smoothed labels, guessed distributions)."""
    return -(targets * logits.log_softmax(-1)).sum(-1)


def _to_device(a: np.ndarray, device: torch.device) -> Tensor:
    """A small host array on `device` without making the host wait (page-locked copies on CUDA)."""
    return to_device(a, device, pin=device.type == "cuda")


# -- MixUp -----------------------------------------------------------------------------------------------
def mixup_lambdas(n: int, beta: float, rng: np.random.Generator) -> np.ndarray:
    """Per-example lambda ~ Beta(beta, beta), replaced by max(lambda, 1 - lambda)."""
    lam = rng.beta(beta, beta, size=n) if beta > 0 else np.ones(n)
    return np.maximum(lam, 1.0 - lam).astype(np.float32)


def mix_pair(x0: Tensor, l0: Tensor, x1: Tensor, l1: Tensor, beta: float,
             rng: np.random.Generator) -> tuple[Tensor, Tensor]:
    """The original `augment_pair`: row i of x0 mixed with row perm(i) of x1, per-example lambda >= 0.5.

    A random permutation of len(x0) rows picks the partners, so a row may be paired with itself when x1 is x0.
    """
    n = len(x0)
    lam = _to_device(mixup_lambdas(n, beta, rng), x0.device)
    perm = _to_device(rng.permutation(n), x0.device)
    lx = lam.view(-1, *([1] * (x0.ndim - 1)))
    ll = lam.view(-1, 1)
    return torch.lerp(x1[perm], x0, lx), torch.lerp(l1[perm], l0, ll)


def mix_reversed(x: Tensor, labels: Tensor, beta: float, rng: np.random.Generator) -> tuple[Tensor, Tensor]:
    """MixUp with the reversed batch as partner (the original fs_mixup / ICT / SSL MixUp): row i mixed with row
    n-1-i, per-example lambda ~ Beta(beta, beta) replaced by max(lambda, 1 - lambda)."""
    lam = _to_device(mixup_lambdas(len(x), beta, rng), x.device)
    lx = lam.view(-1, *([1] * (x.ndim - 1)))
    return torch.lerp(x.flip(0), x, lx), torch.lerp(labels.flip(0), labels, lam.view(-1, 1))


def mixmode(xs: Sequence[Tensor], ls: Sequence[Tensor], beta: float, mode: str,
            rng: np.random.Generator) -> tuple[list[Tensor], list[Tensor]]:
    """MixUp of [X, U_0, ..., U_{nu-1}] (images and soft labels) as the original `MixMode(mode)`.

    Before the dot: how the labelled batch X is mixed (xx: within X, xxy: with the whole pool); after it:
    how the unlabelled batches are mixed (yy: within U, yxy: with the pool, yx: each U_k with X).
    """
    if mode not in MIXMODES:
        raise ValueError(f"unknown mixmode {mode!r}; choose one of: {', '.join(MIXMODES)}")
    xs, ls = list(xs), list(ls)
    sizes = [len(x) for x in xs]
    if mode == ".":
        return xs, ls
    if mode == "xx.":
        mx, ml = mix_pair(xs[0], ls[0], xs[0], ls[0], beta, rng)
        return [mx, *xs[1:]], [ml, *ls[1:]]
    if mode in (".yy", "xx.yy"):
        if mode == "xx.yy":
            xs[0], ls[0] = mix_pair(xs[0], ls[0], xs[0], ls[0], beta, rng)
        ux, ul = torch.cat(xs[1:]), torch.cat(ls[1:])
        mx, ml = mix_pair(ux, ul, ux, ul, beta, rng)
        return [xs[0], *mx.split(sizes[1:])], [ls[0], *ml.split(sizes[1:])]
    if mode in ("xxy.", ".yxy", "xxy.yxy", "xx.yxy"):
        mx0 = ml0 = None
        if mode == "xx.yxy":
            mx0, ml0 = mix_pair(xs[0], ls[0], xs[0], ls[0], beta, rng)
        px, pl = torch.cat(xs), torch.cat(ls)
        mx, ml = (t.split(sizes) for t in mix_pair(px, pl, px, pl, beta, rng))
        if mode == "xxy.":
            return [mx[0], *xs[1:]], [ml[0], *ls[1:]]
        if mode == ".yxy":
            return [xs[0], *mx[1:]], [ls[0], *ml[1:]]
        if mode == "xx.yxy":
            return [mx0, *mx[1:]], [ml0, *ml[1:]]
        return list(mx), list(ml)
    # xx.yx
    mx0, ml0 = mix_pair(xs[0], ls[0], xs[0], ls[0], beta, rng)
    out = [mix_pair(xs[i], ls[i], xs[0], ls[0], beta, rng) for i in range(1, len(xs))]
    return [mx0, *(o[0] for o in out)], [ml0, *(o[1] for o in out)]


# -- interleaving (batch-norm statistics over labelled and unlabelled rows) --------------------------------
def interleave_offsets(batch: int, nu: int) -> list[int]:
    """Cut points of `batch` rows into nu + 1 groups; the remainder goes to the last groups (64, 2 -> 0 21 42 64)."""
    groups = [batch // (nu + 1)] * (nu + 1)
    for x in range(batch - sum(groups)):
        groups[-x - 1] += 1
    offsets = [0]
    for g in groups:
        offsets.append(offsets[-1] + g)
    return offsets


def interleave(xy: Sequence[Tensor], batch: int) -> list[Tensor]:
    """Swap chunk i of tensor 0 with chunk i of tensor i (i = 1..nu), so every forward batch mixes X and U rows.

    Its own inverse: applying it to the logits restores the original order.
    """
    nu = len(xy) - 1
    offsets = interleave_offsets(batch, nu)
    parts = [[v[offsets[p]:offsets[p + 1]] for p in range(nu + 1)] for v in xy]
    for i in range(1, nu + 1):
        parts[0][i], parts[i][i] = parts[i][i], parts[0][i]
    return [torch.cat(p) for p in parts]


# -- training signal annealing -----------------------------------------------------------------------------
def tsa_threshold(schedule: str, progress: float, num_classes: int) -> float:
    """eta(r) = alpha(r) (1 - 1/K) + 1/K for r = images seen / total images (UDA's get_tsa_threshold)."""
    r = min(max(progress, 0.0), 1.0)
    if schedule == "linear_schedule":
        alpha = r
    elif schedule == "exp_schedule":
        alpha = math.exp((r - 1.0) * 5.0)
    elif schedule == "log_schedule":
        alpha = 1.0 - math.exp(-r * 5.0)
    else:
        raise ValueError(f"unknown tsa schedule {schedule!r}; choose one of: {', '.join(TSA[1:])}")
    return alpha * (1.0 - 1.0 / num_classes) + 1.0 / num_classes


def tsa_mask(logits: Tensor, labels: Tensor, eta: float, *, compat: bool = False) -> Tensor:
    """Which rows keep their supervised loss under TSA with soft (MixUp) labels; a float 0/1 vector.

    Intended RealMix rule: each class c with label weight w_c > 0 is a ground-truth class with threshold
    w_c * eta; a row is kept while at least one of them has p_c < w_c * eta (dropped once all are met).
    `compat=True` reproduces the original code, which compared against logits * eta instead (§A.7).
    Both use the original's scoring: K+1 per unmet entry, -1 otherwise, keep if the mean is > 0.
    """
    k = logits.shape[-1]
    p = logits.detach().softmax(-1)
    gt = (labels > 0).to(p.dtype)
    thr = (logits.detach() if compat else labels) * eta
    score = torch.where(gt * p < thr, float(k + 1), -1.0)
    return (score.mean(-1) > 0).to(p.dtype)


def masked_mean(values: Tensor, mask: Tensor) -> Tensor:
    """sum(mask * values) / max(sum(mask), 1): the mean over kept rows (0 when none is kept)."""
    return (values * mask).sum() / mask.sum().clamp_min(1.0)


# -- out-of-distribution mask ------------------------------------------------------------------------------
def ood_percentile_mask(confidence: Tensor, fraction: float) -> tuple[Tensor, Tensor]:
    """The original percentile mask: keep rows whose confidence is strictly above the (k+1)-th smallest,
    k = floor(N * fraction). Returns (float 0/1 mask, threshold). Without ties it keeps N - k - 1 rows.
    """
    if not 0.0 < fraction < 1.0:
        raise ValueError(f"percent_mask must be in (0, 1), got {fraction}")
    n = confidence.numel()
    k = int(n * fraction)
    tau = confidence.detach().sort().values[k]
    return (confidence.detach() > tau).to(confidence.dtype), tau


def ood_threshold_mask(confidence: Tensor, threshold: float) -> Tensor:
    """Keep rows whose confidence is strictly above a fixed threshold (the original's unused variant)."""
    return (confidence.detach() > threshold).to(confidence.dtype)


# -- batch norm ------------------------------------------------------------------------------------------
@contextlib.contextmanager
def frozen_bn_stats(model: nn.Module) -> Iterator[None]:
    """Forward in train mode (batch statistics) without updating BN running statistics.

    Momentum 0 leaves running_mean/var exactly unchanged ((1 - 0) * r + 0 * batch); the counter is restored.
    """
    saved = []
    for m in model.modules():
        if isinstance(m, nn.modules.batchnorm._BatchNorm) and m.track_running_stats:
            saved.append((m, m.momentum, m.num_batches_tracked.clone()))
            m.momentum = 0.0
    try:
        yield
    finally:
        for m, momentum, count in saved:
            m.momentum = momentum
            m.num_batches_tracked.copy_(count)


# -- open-set heads (IOMatch) ------------------------------------------------------------------------------
def one_vs_all_loss(logits_ova: Tensor, labels: Tensor) -> Tensor:
    """The one-vs-all supervised loss (OpenMatch's, used by IOMatch): logits N x 2K read as K binary pairs
    (outlier, inlier) via `.view(N, 2, K)`; mean over rows of -log p_inlier(label) + max over the other classes
    of -log p_outlier(class) (the hardest negative)."""
    n = logits_ova.shape[0]
    p = logits_ova.view(n, 2, -1).softmax(1)
    own = nn.functional.one_hot(labels, p.shape[2]).bool()
    pos = -(p[:, 1].gather(1, labels[:, None])[:, 0] + 1e-8).log()  # gather, not a boolean index: no host sync
    neg = torch.where(own, 0.0, -(p[:, 0] + 1e-8).log()).amax(1)
    return pos.mean() + neg.mean()


def open_targets(probs: Tensor, logits_ova: Tensor) -> tuple[Tensor, Tensor]:
    """IOMatch's open targets from closed-set probabilities p (N x K) and one-vs-all logits (N x 2K).

    With r_k = the binary head's (outlier, inlier) softmax for class k: the outlier score is sum_k p_k r_k^out,
    and the (K+1)-way target is q = [p_1 r_1^in, ..., p_K r_K^in, outlier score] (it sums to 1).
    Returns (q, outlier score).
    """
    n = probs.shape[0]
    r = logits_ova.view(n, 2, -1).softmax(1)
    outlier = (probs * r[:, 0]).sum(1)
    return torch.cat([probs * r[:, 1], outlier[:, None]], 1), outlier
