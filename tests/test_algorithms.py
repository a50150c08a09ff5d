"""One training step of each algorithm (method reference §A.3-A.10) on a tiny network and tiny batches."""

from __future__ import annotations

import copy
import dataclasses

import numpy as np
import pytest
import torch
from torch import nn

from realmix.algorithms import ALGORITHMS, build_algorithm
from realmix.algorithms.base import Algorithm, Progress
from realmix.algorithms.sections import IOMatchParams, MixMatchParams, RealMixParams, SupervisedParams
from realmix.params import Params
from tests.helpers import B, K, bn_buffers, tiny, toy_batch

PARAMS = {
    "supervised": SupervisedParams(),
    "mixmatch": MixMatchParams(w_match=10.0, warmup_kimg=0),
    "realmix": RealMixParams(w_match=10.0, warmup_kimg=0),
}


# -- progress --------------------------------------------------------------------------------------------
def test_progress_ramp_and_fraction():
    assert Progress(0, 4096).ramp(2) == 0.0
    assert Progress(1024, 4096).ramp(2) == 0.5
    assert Progress(2048, 4096).ramp(2) == 1.0
    assert Progress(4000, 4096).ramp(2) == 1.0
    assert Progress(0, 4096).ramp(0) == 1.0
    assert Progress(256, 4096).ramp(0.5) == 0.5
    assert Progress(1024, 4096).fraction == 0.25
    assert Progress(9000, 4096).fraction == 1.0


def test_unknown_algorithm():
    with pytest.raises(ValueError, match="algorithm"):
        build_algorithm("fixmatch2", MixMatchParams(), num_classes=K, rng=np.random.default_rng(0))


def test_views():
    rng = np.random.default_rng(0)
    assert build_algorithm("supervised", SupervisedParams(), num_classes=K, rng=rng).needs.views == ()
    assert build_algorithm("mixmatch", MixMatchParams(nu=3), num_classes=K, rng=rng).needs.views == ("weak",) * 3
    assert build_algorithm("realmix", RealMixParams(), num_classes=K, rng=rng).needs.views == ("weak",) * 2


def test_registry_entries_resolve_and_declare_what_they_need():
    declared = {}
    for name, entry in ALGORITHMS.items():
        assert issubclass(entry.algorithm, Algorithm)
        algo = build_algorithm(name, entry.params(), num_classes=K, rng=np.random.default_rng(0), tsa="exp_schedule")
        assert algo.name == name and algo.needs == entry.algorithm.declare(entry.params())
        assert set(algo.needs.views) <= {"weak", "strong"} and algo.needs.mu >= 1
        declared[name] = algo.needs
    assert [n for n, needs in declared.items() if needs.teacher] == ["mean_teacher", "ict"]
    assert {n: needs.reads for n, needs in declared.items() if needs.reads} == {"realmix": ("tsa",)}
    assert build_algorithm("realmix", RealMixParams(), num_classes=K, rng=np.random.default_rng(0),
                           tsa="exp_schedule").tsa == "exp_schedule"
    assert declared["iomatch"].open_heads == IOMatchParams().proj_size and declared["fixmatch"].mu == 7
    # a section's name reads as params.<name>: it may not shadow another section or an attribute of Params
    assert not set(ALGORITHMS) & ({f.name for f in dataclasses.fields(Params)} | set(dir(Params)))


# -- training reduces the loss -------------------------------------------------------------------------
def eval_loss(name, model, batch, tsa="none"):
    """The step's loss at fixed MixUp draws (a fresh identically seeded generator), without touching `model`."""
    algo = build_algorithm(name, PARAMS[name], num_classes=K, rng=np.random.default_rng(123), tsa=tsa)
    with torch.no_grad():
        return algo.train_step(copy.deepcopy(model).train(), batch, Progress(0, 10_000)).loss.item()


@pytest.mark.parametrize("name", ["supervised", "mixmatch", "realmix"])
def test_a_few_adam_steps_reduce_the_loss(name):
    torch.manual_seed(0)
    model = tiny().train()
    batch = toy_batch()
    algo = build_algorithm(name, PARAMS[name], num_classes=K, rng=np.random.default_rng(0))
    opt = torch.optim.Adam(model.parameters(), lr=0.01)
    before = eval_loss(name, model, batch)
    for step in range(20):
        out = algo.train_step(model, batch, Progress(step * B, 10_000))
        assert out.loss.ndim == 0 and out.loss.requires_grad
        opt.zero_grad()
        out.loss.backward()
        opt.step()
    after = eval_loss(name, model, batch)
    assert after < 0.8 * before, (before, after)


def test_supervised_loss_is_smoothed_cross_entropy():
    model = tiny().train()
    batch = toy_batch()
    s = 0.1
    algo = build_algorithm("supervised", SupervisedParams(smoothing=s), num_classes=K, rng=np.random.default_rng(0))
    out = algo.train_step(model, batch, Progress(0, 100))
    with torch.no_grad():
        logp = model(batch.x).log_softmax(-1)
    target = torch.full((B, K), s / K)
    target[torch.arange(B), batch.y] += 1 - s
    torch.testing.assert_close(out.loss.detach(), -(target * logp).sum(-1).mean())
    assert set(out.logs) == {"loss_x"}


# -- MixMatch step mechanics --------------------------------------------------------------------------------
def test_mixmatch_updates_bn_stats_only_from_the_first_interleaved_batch():
    model = tiny(momentum=0.5).train()  # a large momentum makes any extra update visible
    ref = copy.deepcopy(model)
    batch = toy_batch()
    p = MixMatchParams(beta=0.75, nu=2, T=0.5, warmup_kimg=0)
    algo = build_algorithm("mixmatch", p, num_classes=K, rng=np.random.default_rng(7))
    algo.train_step(model, batch, Progress(0, 1000))

    # by hand: guess (BN batch stats, any running-stat change discarded), sharpen, MixUp, interleave
    scratch = copy.deepcopy(ref).train()
    with torch.no_grad():
        mean = torch.stack([scratch(u).softmax(-1) for u in batch.u]).mean(0)
    guess = mean.square() / mean.square().sum(-1, keepdim=True)
    rng = np.random.default_rng(7)
    lam = rng.beta(0.75, 0.75, size=3 * B)
    lam = torch.from_numpy(np.maximum(lam, 1 - lam)).float()
    perm = torch.from_numpy(rng.permutation(3 * B))
    pool = torch.cat([batch.x, *batch.u])
    mixed = lam.view(-1, 1, 1, 1) * pool + (1 - lam.view(-1, 1, 1, 1)) * pool[perm]
    x, u0, u1 = mixed[:B], mixed[B:2 * B], mixed[2 * B:]
    b0 = torch.cat([x[0:2], u0[2:4], u1[4:6]])  # offsets of 6 rows in 3 groups: 0 2 4 6
    with torch.no_grad():
        ref.train()(b0)
    assert guess.shape == (B, K)

    got, expected, start = bn_buffers(model), bn_buffers(ref), bn_buffers(tiny(momentum=0.5))
    for k in expected:
        if k.endswith("num_batches_tracked"):
            assert got[k].item() == expected[k].item() == 1, k
        else:
            torch.testing.assert_close(got[k], expected[k], rtol=1e-5, atol=1e-5, msg=k)
            assert not torch.allclose(got[k], start[k]), k  # and they did move


def test_mixmatch_forwards_exactly_one_batch_with_running_stat_updates(monkeypatch):
    model = tiny().train()
    bn = next(m for m in model.modules() if isinstance(m, nn.BatchNorm2d))
    calls = []
    forward = model.forward

    def spy(x):
        calls.append((bn.momentum, len(x), torch.is_grad_enabled()))
        return forward(x)

    monkeypatch.setattr(model, "forward", spy)
    algo = build_algorithm("mixmatch", MixMatchParams(nu=2), num_classes=K, rng=np.random.default_rng(0))
    for step in range(2):
        calls.clear()
        algo.train_step(model, toy_batch(seed=step), Progress(step * B, 1000))
        # 2 guessing forwards (frozen, no grad), then b0 (updates stats), then b1, b2 (frozen)
        assert calls == [(0.0, B, False), (0.0, B, False), (0.1, B, True), (0.0, B, True), (0.0, B, True)]
    assert bn.momentum == 0.1
    assert bn.num_batches_tracked.item() == 2


def test_mixmatch_check_batch():
    algo = build_algorithm("mixmatch", MixMatchParams(nu=2), num_classes=K, rng=np.random.default_rng(0))
    for bad in (1, 2):
        with pytest.raises(ValueError, match="interleave"):
            algo.check_batch(bad)
    algo.check_batch(3)
    algo3 = build_algorithm("mixmatch", MixMatchParams(nu=3), num_classes=K, rng=np.random.default_rng(0))
    with pytest.raises(ValueError):
        algo3.check_batch(3)
    with pytest.raises(ValueError, match="interleave"):
        algo.train_step(tiny(), toy_batch(b=2), Progress(0, 100))
    algo.train_step(tiny(), toy_batch(b=3), Progress(0, 100))  # the smallest batch that works


def test_mixmatch_w_match_ramp_is_logged():
    p = MixMatchParams(w_match=100.0, warmup_kimg=1)
    algo = build_algorithm("mixmatch", p, num_classes=K, rng=np.random.default_rng(0))
    model = tiny()
    assert algo.train_step(model, toy_batch(), Progress(0, 10_000)).logs["w_match"] == 0.0
    out = algo.train_step(model, toy_batch(), Progress(512, 10_000))
    assert out.logs["w_match"] == pytest.approx(50.0)
    torch.testing.assert_close(out.loss.detach(), out.logs["loss_x"] + 50.0 * out.logs["loss_u"])


def test_realmix_without_tsa_and_ood_equals_mixmatch():
    common = {"beta": 0.6, "w_match": 20.0, "warmup_kimg": 0, "T": 0.5, "nu": 2}
    batch = toy_batch()
    losses = []
    for name, params in (("mixmatch", MixMatchParams(**common)), ("realmix", RealMixParams(**common, ood_mask="none"))):
        algo = build_algorithm(name, params, num_classes=K, rng=np.random.default_rng(3), tsa="none")
        losses.append(algo.train_step(tiny(), batch, Progress(0, 1000)).loss)
    torch.testing.assert_close(losses[0], losses[1], rtol=0, atol=0)


# -- RealMix logs --------------------------------------------------------------------------------------------
def realmix_logs(tsa="none", images=0, **over):
    p = dataclasses.replace(RealMixParams(warmup_kimg=0), **over)
    algo = build_algorithm("realmix", p, num_classes=K, rng=np.random.default_rng(0), tsa=tsa)
    out = algo.train_step(tiny(), toy_batch(), Progress(images, 1000))
    assert torch.isfinite(out.loss)
    return {k: float(v) for k, v in out.logs.items()}


def test_realmix_tsa_threshold_logged():
    logs = realmix_logs(tsa="linear_schedule")
    assert logs["tsa_threshold"] == pytest.approx(1 / K)
    assert 0.0 <= logs["tsa_kept"] <= 1.0
    logs = realmix_logs(tsa="linear_schedule", images=500)
    assert logs["tsa_threshold"] == pytest.approx(0.5 * (1 - 1 / K) + 1 / K)
    logs = realmix_logs(tsa="exp_schedule", images=0)
    assert logs["tsa_threshold"] == pytest.approx(np.exp(-5) * (1 - 1 / K) + 1 / K)
    assert "tsa_threshold" not in realmix_logs(tsa="none")
    assert not any(k.startswith("tsa") for k in realmix_logs(tsa="none"))


def test_realmix_tsa_at_the_end_keeps_every_row():
    # eta = 1: a row is dropped only if p_c >= label_c for every labelled class, i.e. p == label exactly
    assert realmix_logs(tsa="linear_schedule", images=1000)["tsa_kept"] == 1.0


@pytest.mark.parametrize("fraction", [0.25, 0.5, 0.75])
def test_realmix_ood_percentile_kept_fraction(fraction):
    n = 2 * B  # nu = 2 views of B unlabelled images
    k = int(n * fraction)
    logs = realmix_logs(ood_mask="percentile", percent_mask=fraction)
    assert logs["ood_kept"] == pytest.approx((n - k - 1) / n)
    assert 0.0 < logs["ood_threshold"] < 1.0


def test_realmix_ood_variants():
    assert not any(k.startswith("ood") for k in realmix_logs(ood_mask="none"))
    clean = realmix_logs(ood_mask="percentile", percent_mask=0.25, ood_conf_source="clean")
    assert clean["ood_kept"] == pytest.approx((12 - 3 - 1) / 12)
    thr = realmix_logs(ood_mask="threshold", ood_threshold=0.0)
    assert thr["ood_threshold"] == 0.0 and thr["ood_kept"] == 1.0  # every confidence is > 0
    thr = realmix_logs(ood_mask="threshold", ood_threshold=0.99)
    assert thr["ood_kept"] == 0.0 and thr["loss_u"] == 0.0  # untrained 3-class net: nothing that confident
