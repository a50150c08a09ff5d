"""Pure tensor ops of the MixMatch family (method reference §A.4-A.9), on hand-worked cases."""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch

from realmix.models import build_model
from realmix.ops import (
    MIXMODES,
    frozen_bn_stats,
    interleave,
    interleave_offsets,
    masked_mean,
    mix_pair,
    mixmode,
    mixup_lambdas,
    ood_percentile_mask,
    ood_threshold_mask,
    sharpen,
    smooth_labels,
    tsa_mask,
    tsa_threshold,
)
from tests.helpers import TINY_ARCH, bn_buffers


def t64(values) -> torch.Tensor:
    return torch.tensor(values, dtype=torch.float64)


# -- sharpen / smoothing ---------------------------------------------------------------------------------
def test_sharpen_hand_worked():
    out = sharpen(t64([[0.6, 0.4], [0.5, 0.5], [0.9, 0.1]]), 0.5)
    expected = t64([[0.36 / 0.52, 0.16 / 0.52], [0.5, 0.5], [0.81 / 0.82, 0.01 / 0.82]])
    torch.testing.assert_close(out, expected, rtol=0, atol=1e-12)


def test_sharpen_temperature_one_is_identity_and_rows_sum_to_one():
    p = torch.softmax(torch.randn(5, 7, generator=torch.Generator().manual_seed(0), dtype=torch.float64), -1)
    torch.testing.assert_close(sharpen(p, 1.0), p, rtol=0, atol=1e-12)
    for T in (0.25, 0.5, 0.9):
        q = sharpen(p, T)
        torch.testing.assert_close(q.sum(-1), torch.ones(5, dtype=torch.float64))
        # sharpening never lowers the arg-max probability
        assert (q.max(-1).values >= p.max(-1).values - 1e-12).all()
        assert torch.equal(q.argmax(-1), p.argmax(-1))


def test_smooth_labels_exact_values():
    out = smooth_labels(torch.tensor([0, 2]), 4, 0.2)
    # (1 - 0.2) * onehot + 0.2 / 4 = 0.85 on the true class, 0.05 elsewhere
    expected = torch.tensor([[0.85, 0.05, 0.05, 0.05], [0.05, 0.05, 0.85, 0.05]])
    torch.testing.assert_close(out, expected, rtol=0, atol=1e-7)
    assert torch.equal(smooth_labels(torch.tensor([1]), 3, 0.0), torch.tensor([[0.0, 1.0, 0.0]]))


# -- MixUp -----------------------------------------------------------------------------------------------
def test_mixup_lambdas_range_zero_beta_and_seed():
    lam = mixup_lambdas(1000, 0.75, np.random.default_rng(0))
    assert lam.shape == (1000,) and lam.dtype == np.float32
    assert (lam >= 0.5).all() and (lam <= 1.0).all()
    assert lam.std() > 0.05  # really random, not constant
    raw = np.random.default_rng(0).beta(0.75, 0.75, size=1000)
    np.testing.assert_allclose(lam, np.maximum(raw, 1 - raw), rtol=1e-6)
    assert (mixup_lambdas(7, 0.0, np.random.default_rng(0)) == 1.0).all()
    np.testing.assert_array_equal(mixup_lambdas(50, 0.5, np.random.default_rng(3)),
                                  mixup_lambdas(50, 0.5, np.random.default_rng(3)))
    assert not np.array_equal(mixup_lambdas(50, 0.5, np.random.default_rng(3)),
                              mixup_lambdas(50, 0.5, np.random.default_rng(4)))


def test_mix_pair_matches_hand_recomputation():
    g = torch.Generator().manual_seed(0)
    x0, x1 = torch.randn(8, 3, 2, 2, generator=g), torch.randn(8, 3, 2, 2, generator=g)
    l0 = torch.softmax(torch.randn(8, 5, generator=g), -1)
    l1 = torch.softmax(torch.randn(8, 5, generator=g), -1)
    mx, ml = mix_pair(x0, l0, x1, l1, 0.75, np.random.default_rng(11))

    rng = np.random.default_rng(11)  # same draws, same order: lambdas first, then the permutation
    lam = rng.beta(0.75, 0.75, size=8)
    lam = np.maximum(lam, 1 - lam)
    perm = rng.permutation(8)
    exp_x = np.stack([lam[i] * x0[i].numpy() + (1 - lam[i]) * x1[perm[i]].numpy() for i in range(8)])
    exp_l = np.stack([lam[i] * l0[i].numpy() + (1 - lam[i]) * l1[perm[i]].numpy() for i in range(8)])
    np.testing.assert_allclose(mx.numpy(), exp_x, rtol=0, atol=1e-5)
    np.testing.assert_allclose(ml.numpy(), exp_l, rtol=0, atol=1e-6)
    torch.testing.assert_close(ml.sum(-1), torch.ones(8))


def test_mix_pair_rows_stay_closer_to_their_own_input():
    x0 = torch.eye(16)  # row i is e_i: a mixed row lambda e_i + (1 - lambda) e_perm(i) has its weight at i
    l0 = torch.eye(16)
    mx, ml = mix_pair(x0, l0, x0, l0, 0.75, np.random.default_rng(5))
    for m in (mx, ml):
        own = m.diagonal()
        assert (own >= 0.5).all()  # lambda >= 0.5
        assert (m <= own.unsqueeze(1) + 1e-6).all()  # the own row never gets less weight than the partner
        assert (own < 1).any()  # something was mixed
    torch.testing.assert_close(mx.sum(1), torch.ones(16))


def _pool(b=8, seed=0):
    """X in [0, 1), U0 in [10, 11), U1 in [20, 21): the source of a mixed value is readable from its range."""
    g = torch.Generator().manual_seed(seed)
    xs = [torch.rand(b, 3, generator=g) + off for off in (0.0, 10.0, 20.0)]
    lx = torch.nn.functional.one_hot(torch.randint(0, 4, (b,), generator=g), 4).float()
    guess = torch.softmax(torch.randn(b, 4, generator=g), -1)
    return xs, [lx, guess, guess]


# which of [X, U0, U1] a mode mixes
MODE_CHANGES = {
    ".": (False, False), "xx.": (True, False), ".yy": (False, True), "xx.yy": (True, True),
    "xxy.": (True, False), ".yxy": (False, True), "xxy.yxy": (True, True), "xx.yxy": (True, True),
    "xx.yx": (True, True),
}


def test_every_mixmode_is_covered():
    assert set(MODE_CHANGES) == set(MIXMODES)


@pytest.mark.parametrize("mode", MIXMODES)
def test_mixmode_changes_only_its_parts(mode):
    xs, ls = _pool()
    mx, ml = mixmode(xs, ls, 0.75, mode, np.random.default_rng(1))
    assert len(mx) == len(ml) == 3
    assert [t.shape for t in mx] == [t.shape for t in xs]
    assert [t.shape for t in ml] == [t.shape for t in ls]
    for lab in ml:
        torch.testing.assert_close(lab.sum(-1), torch.ones(len(lab)))
    changes_x, changes_u = MODE_CHANGES[mode]
    assert torch.equal(mx[0], xs[0]) != changes_x
    assert torch.equal(ml[0], ls[0]) != changes_x
    for k in (1, 2):
        assert torch.equal(mx[k], xs[k]) != changes_u, k
        assert torch.equal(ml[k], ls[k]) != changes_u, k
    # where the partners come from (value ranges: X < 1, U0 in [10, 11), U1 in [20, 21))
    if mode in ("xx.", "xx.yy", "xx.yxy", "xx.yx"):
        assert mx[0].max() < 1.0  # X mixed within X only
    if mode in (".yy", "xx.yy"):
        assert mx[1].min() >= 5.0 and mx[2].min() >= 10.0  # U within U (lambda >= 0.5 keeps U0 >= 5)
    if mode == "xx.yx":
        assert mx[1].max() < 11.0 and mx[2].max() < 21.0  # U_k partners are X rows (smaller values)
        assert mx[1].min() >= 5.0 and mx[2].min() >= 10.0
    if mode in ("xxy.", "xxy.yxy"):
        assert mx[0].max() >= 1.0  # some X rows got a U partner from the pool (24 rows, 16 of them U)


def test_mixmode_default_matches_hand_recomputation_over_the_pool():
    xs, ls = _pool(b=6)
    mx, ml = mixmode(xs, ls, 0.75, "xxy.yxy", np.random.default_rng(9))
    rng = np.random.default_rng(9)
    lam = rng.beta(0.75, 0.75, size=18)
    lam = np.maximum(lam, 1 - lam)
    perm = rng.permutation(18)
    px, pl = torch.cat(xs).numpy(), torch.cat(ls).numpy()
    ex = lam[:, None] * px + (1 - lam[:, None]) * px[perm]
    el = lam[:, None] * pl + (1 - lam[:, None]) * pl[perm]
    np.testing.assert_allclose(torch.cat(mx).numpy(), ex, rtol=0, atol=1e-5)
    np.testing.assert_allclose(torch.cat(ml).numpy(), el, rtol=0, atol=1e-6)


def test_mixmode_identity_returns_inputs_and_unknown_raises():
    xs, ls = _pool()
    mx, ml = mixmode(xs, ls, 0.75, ".", np.random.default_rng(0))
    assert all(a is b for a, b in zip(mx, xs, strict=True)) and all(a is b for a, b in zip(ml, ls, strict=True))
    for bad in ("xy.", "", "xxy.yxy "):
        with pytest.raises(ValueError, match="mixmode"):
            mixmode(xs, ls, 0.75, bad, np.random.default_rng(0))


# -- interleave --------------------------------------------------------------------------------------------
def test_interleave_offsets():
    assert interleave_offsets(64, 2) == [0, 21, 42, 64]
    assert interleave_offsets(10, 2) == [0, 3, 6, 10]
    assert interleave_offsets(65, 2) == [0, 21, 43, 65]  # remainder 2 to the last two groups: 21, 22, 22
    assert interleave_offsets(6, 2) == [0, 2, 4, 6]
    assert interleave_offsets(64, 1) == [0, 32, 64]
    assert interleave_offsets(11, 3) == [0, 2, 5, 8, 11]  # 2, 3, 3, 3


def test_interleave_hand_worked_batch_6():
    # value = 100 * tensor id + row
    x, y0, y1 = (torch.arange(6) + 100 * i for i in range(3))
    b0, b1, b2 = interleave([x, y0, y1], 6)
    assert b0.tolist() == [0, 1, 102, 103, 204, 205]  # [x[0:2], y0[2:4], y1[4:6]]
    assert b1.tolist() == [100, 101, 2, 3, 104, 105]  # [y0[0:2], x[2:4], y0[4:6]]
    assert b2.tolist() == [200, 201, 202, 203, 4, 5]  # [y1[0:2], y1[2:4], x[4:6]]


@pytest.mark.parametrize("nu", [1, 2, 3])
def test_interleave_is_its_own_inverse(nu):
    g = torch.Generator().manual_seed(nu)
    v = [torch.randn(64, 3, 2, 2, generator=g) for _ in range(nu + 1)]
    once = interleave(v, 64)
    assert [t.shape for t in once] == [t.shape for t in v]
    assert not torch.equal(once[0], v[0])
    back = interleave(once, 64)
    assert all(torch.equal(a, b) for a, b in zip(back, v, strict=True))
    # every group of the first forward batch comes from a different tensor
    off = interleave_offsets(64, nu)
    for i in range(nu + 1):
        assert torch.equal(once[0][off[i]:off[i + 1]], v[i][off[i]:off[i + 1]])


# -- TSA -------------------------------------------------------------------------------------------------
@pytest.mark.parametrize("schedule,start,end", [
    ("linear_schedule", 0.1, 1.0),
    ("exp_schedule", math.exp(-5) * 0.9 + 0.1, 1.0),
    ("log_schedule", 0.1, (1 - math.exp(-5)) * 0.9 + 0.1),
])
def test_tsa_threshold_endpoints_and_clamping(schedule, start, end):
    assert tsa_threshold(schedule, 0.0, 10) == pytest.approx(start, abs=1e-12)
    assert tsa_threshold(schedule, 1.0, 10) == pytest.approx(end, abs=1e-12)
    assert tsa_threshold(schedule, -3.0, 10) == pytest.approx(start, abs=1e-12)
    assert tsa_threshold(schedule, 7.0, 10) == pytest.approx(end, abs=1e-12)
    assert start < tsa_threshold(schedule, 0.5, 10) < end


def test_tsa_threshold_midpoint_and_unknown():
    assert tsa_threshold("linear_schedule", 0.5, 4) == pytest.approx(0.5 * 0.75 + 0.25)
    assert tsa_threshold("exp_schedule", 0.5, 10) == pytest.approx(math.exp(-2.5) * 0.9 + 0.1)
    assert tsa_threshold("log_schedule", 0.5, 10) == pytest.approx((1 - math.exp(-2.5)) * 0.9 + 0.1)
    for bad in ("cosine_schedule", "none", ""):
        with pytest.raises(ValueError):
            tsa_threshold(bad, 0.5, 10)


def test_tsa_mask_intended_rule():
    eta = 0.5
    probs = t64([
        [0.4, 0.3, 0.3],     # one-hot GT 0, p0 = 0.4 < 0.5 -> kept
        [0.8, 0.1, 0.1],     # one-hot GT 0, p0 = 0.8 > 0.5 -> dropped
        [0.5, 0.1, 0.4],     # soft GT {0: 0.6, 1: 0.4}: thr 0.3, 0.2; p1 = 0.1 < 0.2 unmet -> kept
        [0.5, 0.45, 0.05],   # soft GT {0: 0.6, 1: 0.4}: 0.5 >= 0.3 and 0.45 >= 0.2, all met -> dropped
        [0.6, 0.32, 0.08],   # all classes GT (0.5, 0.3, 0.2): thr 0.25, 0.15, 0.1; p2 = 0.08 unmet -> kept
        [0.6, 0.25, 0.15],   # all classes GT (0.5, 0.3, 0.2): all met -> dropped
    ])
    labels = t64([[1, 0, 0], [1, 0, 0], [0.6, 0.4, 0], [0.6, 0.4, 0], [0.5, 0.3, 0.2], [0.5, 0.3, 0.2]])
    keep = tsa_mask(probs.log(), labels, eta)
    assert keep.tolist() == [1.0, 0.0, 1.0, 0.0, 1.0, 0.0]
    # at eta = 1 every row with any mass off its label is kept
    assert tsa_mask(probs.log(), labels, 1.0).tolist() == [1.0] * 6


def test_tsa_mask_compat_reproduces_the_logits_bug():
    eta = 0.5
    labels = t64([[1, 0, 0], [1, 0, 0], [1, 0, 0]])
    logits = t64([
        [math.log(0.4), math.log(0.3), math.log(0.3)],  # all logits <= 0, unconfident (p0 = 0.4)
        [-5.0, -0.1, -0.2],                             # all logits <= 0, very unconfident
        [6.0, 1.0, -1.0],                               # confident (p0 ~ 0.99), non-GT logit 1 > 0
    ])
    assert tsa_mask(logits, labels, eta).tolist() == [1.0, 1.0, 0.0]  # intended: by confidence
    assert tsa_mask(logits, labels, eta, compat=True).tolist() == [0.0, 0.0, 1.0]  # bug: by logit sign


def test_masked_mean():
    v = torch.tensor([1.0, 2.0, 3.0, 4.0])
    assert masked_mean(v, torch.zeros(4)).item() == 0.0
    assert masked_mean(v, torch.tensor([1.0, 0.0, 1.0, 0.0])).item() == pytest.approx(2.0)
    assert masked_mean(v, torch.ones(4)).item() == pytest.approx(2.5)
    assert masked_mean(v, torch.tensor([0.0, 0.0, 0.0, 1.0])).item() == pytest.approx(4.0)


# -- OOD masks ---------------------------------------------------------------------------------------------
@pytest.mark.parametrize("fraction,kept", [(0.25, 95), (0.5, 63), (0.75, 31)])
def test_ood_percentile_mask_keeps_n_minus_k_minus_1(fraction, kept):
    n = 128
    values = (np.arange(n) + 1) / (n + 1)  # distinct: the j-th smallest is j / 129
    conf = torch.from_numpy(np.random.default_rng(0).permutation(values)).float()
    mask, tau = ood_percentile_mask(conf, fraction)
    k = int(n * fraction)
    assert k == n - kept - 1
    assert mask.sum().item() == kept
    assert tau.item() == pytest.approx((k + 1) / (n + 1))  # the (k+1)-th smallest
    assert torch.equal(mask.bool(), conf > (k + 1.5) / (n + 1))


@pytest.mark.parametrize("fraction", [1.0, 1.5, 0.0, -0.25])
def test_ood_percentile_mask_rejects_fractions_outside_0_1(fraction):
    with pytest.raises(ValueError):
        ood_percentile_mask(torch.rand(16), fraction)


def test_ood_threshold_mask_is_strict():
    conf = torch.tensor([0.5, 0.8, 0.8001, 0.95, 0.79999])
    assert ood_threshold_mask(conf, 0.8).tolist() == [0.0, 0.0, 1.0, 1.0, 0.0]


# -- frozen BN statistics ----------------------------------------------------------------------------------
def test_frozen_bn_stats_leaves_running_stats_bit_identical():
    torch.manual_seed(0)
    model = build_model(TINY_ARCH, 3, (8, 8, 3)).train()
    x = torch.randn(6, 3, 8, 8) * 3 + 1
    before = bn_buffers(model)
    assert len(before) == 3 * 3  # 3 BN layers (block bn1, bn2, head bn)
    with frozen_bn_stats(model):
        out_frozen = model(x)
        out_frozen.sum().backward()  # gradients still flow
    after = bn_buffers(model)
    assert all(torch.equal(before[k], after[k]) for k in before)
    bns = [m for m in model.modules() if isinstance(m, torch.nn.BatchNorm2d)]
    assert [m.momentum for m in bns] == [0.1] * 3
    # the same forward outside the context uses the same batch statistics but updates the running ones
    out = model(x)
    torch.testing.assert_close(out, out_frozen)
    changed = bn_buffers(model)
    for k in before:
        assert not torch.equal(before[k], changed[k]), k
    assert all(changed[k].item() == 1 for k in changed if k.endswith("num_batches_tracked"))


def test_frozen_bn_stats_restores_momentum_after_an_error():
    model = build_model(TINY_ARCH, 3, (8, 8, 3)).train()
    with pytest.raises(RuntimeError), frozen_bn_stats(model):
        assert all(m.momentum == 0 for m in model.modules() if isinstance(m, torch.nn.BatchNorm2d))
        raise RuntimeError("boom")
    assert all(m.momentum == 0.1 for m in model.modules() if isinstance(m, torch.nn.BatchNorm2d))
