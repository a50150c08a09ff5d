"""FixMatch and IOMatch: their mechanisms (threshold mask, weak/strong pairing, per-image RandAugment in the loop,
IOMatch's open targets and inlier selection), the SGD + cosine optimiser, the open-set heads, and resume."""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch
from torch import nn
from torch.nn.functional import cross_entropy

from realmix import checkpoint as ckpt
from realmix.algorithms import build_algorithm
from realmix.algorithms.base import Batch, Progress
from realmix.algorithms.sections import FixMatchParams, IOMatchParams
from realmix.inference import load_model, predict_outputs
from realmix.models import build_model, to_input
from realmix.ops import one_vs_all_loss, open_targets
from realmix.train import Trainer
from tests.conftest import make_store
from tests.helpers import TINY_ARCH, state_equal, tiny, tiny_params, toy_batch

K = 3


class FixedLogits(nn.Module):
    """A 'network' whose logits are the first K pixels of the first row of channel 0 (so a test sets them)."""

    def __init__(self):
        super().__init__()
        self.scale = nn.Parameter(torch.ones(()))

    def forward(self, x):
        return x[:, 0, 0, :K] * self.scale


def images_with_logits(logits: torch.Tensor) -> torch.Tensor:
    x = torch.zeros(len(logits), 3, 8, 8)
    x[:, 0, 0, :K] = logits
    return x


# -- FixMatch ----------------------------------------------------------------------------------------------
def test_fixmatch_threshold_mask_and_pseudo_labels_from_the_weak_view():
    weak = torch.tensor([[5.0, 0.0, 0.0],  # p_max 0.987: kept, pseudo-label 0
                         [0.0, 1.0, 0.0],  # p_max 0.576: masked
                         [0.0, 0.0, 3.0],  # p_max 0.910: masked at 0.95
                         [0.0, 6.0, 0.0]])  # p_max 0.995: kept, pseudo-label 1
    strong = torch.tensor([[0.0, 2.0, 0.0], [1.0, 0.0, 0.0], [0.0, 0.0, 1.0], [0.5, 0.0, 0.0]])
    x = torch.tensor([[1.0, 0.0, 0.0], [0.0, 1.0, 0.0]])
    y = torch.tensor([0, 2])
    batch = Batch(images_with_logits(x), y, (images_with_logits(weak), images_with_logits(strong)),
                  u_ood=torch.tensor([False, False, True, True]))
    algo = build_algorithm("fixmatch", FixMatchParams(threshold=0.95), num_classes=K, rng=np.random.default_rng(0))
    out = algo.train_step(FixedLogits(), batch, Progress(0, 100))
    mask = torch.tensor([1.0, 0.0, 0.0, 1.0])
    expected_u = (cross_entropy(strong, torch.tensor([0, 0, 2, 1]), reduction="none") * mask).mean()
    torch.testing.assert_close(out.logs["loss_u"], expected_u)  # mean over all 4 rows, only kept ones count
    torch.testing.assert_close(out.logs["loss_x"], cross_entropy(x, y))
    torch.testing.assert_close(out.loss, cross_entropy(x, y) + expected_u)
    assert float(out.logs["mask"]) == 0.5
    # the admitted counts: one of the two out-of-class rows (row 3), one of the two in-class rows (row 0)
    assert [float(out.logs[k]) for k in ("admit_ood", "n_ood", "admit_in", "n_in")] == [1.0, 2.0, 1.0, 2.0]
    # threshold 0: every row gets its pseudo-label
    every = build_algorithm("fixmatch", FixMatchParams(threshold=0.0), num_classes=K, rng=np.random.default_rng(0))
    assert float(every.train_step(FixedLogits(), batch, Progress(0, 100)).logs["mask"]) == 1.0


def test_fixmatch_pseudo_labels_carry_no_gradient():
    model = tiny()
    algo = build_algorithm("fixmatch", FixMatchParams(threshold=0.0, lambda_u=1.0), num_classes=K,
                           rng=np.random.default_rng(0))
    batch = toy_batch()
    weak, strong = batch.u
    out = algo.train_step(model, Batch(batch.x, batch.y, (weak, strong)), Progress(0, 100))
    out.loss.backward()
    # the loss equals CE(x) + CE(strong, argmax weak) with a constant target: recomputing it that way matches
    model.zero_grad()
    logits = model(torch.cat([batch.x, weak, strong]))
    n = len(batch.x)
    target = logits[n:n + len(weak)].argmax(-1).detach()
    ref = cross_entropy(logits[:n], batch.y) + cross_entropy(logits[n + len(weak):], target)
    torch.testing.assert_close(out.loss, ref)


@pytest.mark.parametrize("name", ["fixmatch", "iomatch"])
def test_a_few_steps_reduce_each_loss(name):
    torch.manual_seed(0)
    params = {"fixmatch": FixMatchParams(threshold=0.6),
              "iomatch": IOMatchParams(threshold=0.6, q_cutoff=0.0, open_delay=0.0)}
    model = build_model({**TINY_ARCH, "open_heads": 8 if name == "iomatch" else 0}, K, (8, 8, 3),
                        generator=torch.Generator().manual_seed(0)).train()
    batch = toy_batch(nu=2)
    algo = build_algorithm(name, params[name], num_classes=K, rng=np.random.default_rng(0))
    opt = torch.optim.SGD(model.parameters(), lr=0.05, momentum=0.9, nesterov=True)
    first = last = None
    for step in range(30):
        out = algo.train_step(model, batch, Progress(step * 6, 10_000))
        logs = {k: float(v) for k, v in out.logs.items() if k.startswith("loss")}
        first = first or logs
        last = logs
        opt.zero_grad()
        out.loss.backward()
        opt.step()
    assert last["loss_x"] < 0.5 * first["loss_x"], (first, last)
    if name == "iomatch":
        assert last["loss_mb"] < 0.7 * first["loss_mb"], (first, last)
        assert last["loss_op"] < first["loss_op"], (first, last)
    # confident pseudo-labels appeared and the unlabelled loss is in effect
    assert float(out.logs["mask"]) > 0 and last["loss_u"] > 0


# -- IOMatch -----------------------------------------------------------------------------------------------
def ova_logits(r_out: list[list[float]]) -> torch.Tensor:
    """One-vs-all logits N x 2K (first K: outlier, last K: inlier) whose pair softmax gives outlier prob r_out."""
    r = torch.tensor(r_out)
    return torch.cat([torch.log(r / (1 - r)), torch.zeros_like(r)], 1)


def test_open_targets_hand_worked():
    p = torch.tensor([[0.5, 0.3, 0.2], [0.1, 0.1, 0.8]])
    ova = ova_logits([[0.2, 0.5, 0.9], [0.9, 0.9, 0.1]])
    q, outlier = open_targets(p, ova)
    # row 0: outlier = .5*.2 + .3*.5 + .2*.9 = 0.43; q = [.5*.8, .3*.5, .2*.1, .43]
    # row 1: outlier = .1*.9 + .1*.9 + .8*.1 = 0.26; q = [.1*.1, .1*.1, .8*.9, .26]
    torch.testing.assert_close(outlier, torch.tensor([0.43, 0.26]))
    torch.testing.assert_close(q, torch.tensor([[0.40, 0.15, 0.02, 0.43], [0.01, 0.01, 0.72, 0.26]]))
    torch.testing.assert_close(q.sum(1), torch.ones(2))


def test_one_vs_all_loss_hand_worked():
    ova = ova_logits([[0.2, 0.5, 0.9]])  # inlier probs 0.8, 0.5, 0.1
    # label 1: -log p_in(1) = -log 0.5; hardest negative among classes 0, 2: max(-log 0.2, -log 0.9) = -log 0.2
    torch.testing.assert_close(one_vs_all_loss(ova, torch.tensor([1])),
                               torch.tensor(-math.log(0.5) - math.log(0.2)), atol=1e-6, rtol=1e-6)


class FixedHeads(nn.Module):
    """Closed logits, one-vs-all logits and open logits read from the input (rows set by the test)."""

    def __init__(self, closed, ova, open_):
        super().__init__()
        self.w = nn.Parameter(torch.ones(()))
        self.closed, self.ova, self.open = closed, ova, open_

    def forward(self, x, heads=False):
        assert heads
        return self.closed * self.w, self.ova * self.w, self.open * self.w


def test_iomatch_selects_confident_predicted_inliers_and_trains_the_open_head_on_all():
    n, m = 1, 3
    weak = torch.tensor([[6.0, 0.0, 0.0],   # p_max 0.995, outlier 0.2: selected
                         [6.0, 0.0, 0.0],   # p_max 0.995, outlier 0.8: a predicted outlier, not selected
                         [1.0, 0.0, 0.0]])  # p_max 0.58: not confident
    r_out = [[0.2, 0.2, 0.2], [0.8, 0.8, 0.8], [0.1, 0.1, 0.1]]
    closed = torch.cat([torch.tensor([[2.0, 0.0, 0.0]]), weak, torch.zeros(m, K)])
    ova = torch.cat([ova_logits([[0.5, 0.5, 0.5]]), ova_logits(r_out), torch.zeros(m, 2 * K)])
    open_ = torch.zeros(n + 2 * m, K + 1)
    model = FixedHeads(closed, ova, open_)
    batch = Batch(torch.zeros(n, 3, 8, 8), torch.tensor([0]), (torch.zeros(m, 3, 8, 8), torch.zeros(m, 3, 8, 8)),
                  u_ood=torch.tensor([False, True, True]))
    algo = build_algorithm("iomatch", IOMatchParams(threshold=0.95, q_cutoff=0.5, open_delay=0.25), num_classes=K,
                           rng=np.random.default_rng(0))
    out = algo.train_step(model, batch, Progress(50, 100))
    p = weak.softmax(-1)
    selected = torch.tensor([1.0, 0.0, 0.0])
    strong = torch.zeros(m, K)
    torch.testing.assert_close(out.logs["loss_u"], (-(p * strong.log_softmax(-1)).sum(1) * selected).mean())
    q, _ = open_targets(p, ova_logits(r_out))
    q_mask = (q.amax(1) >= 0.5).float()  # rows 0 (q_0 = .8) and 1 (outlier .8); row 2 (q_0 = .52) too
    assert q_mask.tolist() == [1.0, 1.0, 1.0]
    torch.testing.assert_close(out.logs["loss_op"], (-(q * torch.zeros(m, K + 1).log_softmax(-1)).sum(1)).mean())
    assert float(out.logs["mask"]) == pytest.approx(1 / 3)
    assert [float(out.logs[k]) for k in ("admit_ood", "n_ood", "admit_in", "n_in")] == [0.0, 2.0, 1.0, 1.0]
    # before open_delay the open loss is computed and logged but not in the loss
    early = algo.train_step(model, batch, Progress(10, 100))
    late_total = out.loss - out.logs["loss_op"]
    torch.testing.assert_close(early.loss, late_total)


def test_open_heads_are_part_of_the_network_and_leave_the_plain_network_unchanged():
    g = lambda: torch.Generator().manual_seed(3)  # noqa: E731
    plain = build_model(TINY_ARCH, K, (8, 8, 3), generator=g())
    headed = build_model({**TINY_ARCH, "open_heads": 16}, K, (8, 8, 3), generator=g())
    shared = {k: v for k, v in headed.state_dict().items() if not k.startswith("heads.")}
    assert state_equal(plain.state_dict(), shared)  # same initial weights as before the heads existed
    x = torch.rand(5, 3, 8, 8)
    logits, ova, open_ = headed.eval()(x, heads=True)
    assert logits.shape == (5, K) and ova.shape == (5, 2 * K) and open_.shape == (5, K + 1)
    torch.testing.assert_close(logits, headed(x))
    assert torch.count_nonzero(headed.heads.open.bias) == 0
    with pytest.raises(ValueError, match="open-set heads"):
        plain(x, heads=True)


# -- the loop: views, RandAugment draws, optimiser, resume ---------------------------------------------------
def test_weak_and_strong_views_are_of_the_same_images_and_strong_draws_differ_per_image(tmp_path):
    rng = np.random.default_rng(0)
    one = rng.integers(0, 256, (1, 8, 8, 3), dtype=np.uint8)
    store = make_store(tmp_path / "s", {"label": np.arange(6) % 3, "unlabel": np.zeros(40, np.int64),
                                        "test": np.arange(3)}, k=3, hw=8)
    # every unlabelled image identical: any difference between strong views comes from per-image draws
    from realmix.store import Store, StoreWriter

    with StoreWriter(tmp_path / "same", store.class_names) as w:
        for name in ("label", "test"):
            w.add(name, np.asarray(store.subset(name).images[:]), store.subset(name).labels)
        w.add("unlabel", np.repeat(one, 40, 0), np.zeros(40, np.int64))
    same = Store.open(tmp_path / "same")
    p = tiny_params(train={"augment": "none", "batch": 4}, fixmatch={"mu": 5, "cutout": 0.5})
    trainer = Trainer(p, "fixmatch", same, split_seed=1)
    batch = trainer.feed.next_batch()
    weak, strong = batch.u
    assert weak.shape == strong.shape == (20, 3, 8, 8)  # mu x batch unlabelled images
    original = torch.from_numpy(one).permute(0, 3, 1, 2).float() * (2 / 255) - 1
    assert torch.equal(weak, original.expand_as(weak))  # augment none: the weak view is the image itself
    assert len({s.numpy().tobytes() for s in strong}) >= 18  # each image its own ops, magnitudes, cutout box
    # reproducible from the seed: a second trainer draws the same views
    again = Trainer(p, "fixmatch", same, split_seed=1).feed.next_batch()
    assert all(torch.equal(a, b) for a, b in zip(batch.u, again.u, strict=True))

    # pairing: row i of both views is the same unlabelled image. Without geometry (augment none) and without
    # RandAugment ops, the strong view is the weak one with one grey Cutout square. (With augment on, each view
    # gets its own flip/shift draws, as FixMatch's two independent transforms.)
    p0 = tiny_params(train={"augment": "none", "batch": 4}, fixmatch={"mu": 5, "ra_ops": 0, "cutout": 0.5})
    weak, strong = Trainer(p0, "fixmatch", store, split_seed=1).feed.next_batch().u
    assert len({w.numpy().tobytes() for w in weak}) == 20  # 20 distinct images
    differs = (weak != strong).any(1)  # N x H x W
    grey = to_input(torch.tensor([127], dtype=torch.uint8))
    assert torch.all(strong.permute(0, 2, 3, 1)[differs] == grey)
    assert all(0 < int(d.sum()) <= 16 for d in differs)  # at most a 4 x 4 square (0.5 x 8 px) per image


def test_sgd_with_cosine_schedule_and_coupled_decay(store):
    p = tiny_params(fixmatch={"mu": 2})
    trainer = Trainer(p, "fixmatch", store, split_seed=1)
    opt = trainer.optim.optimizer
    assert isinstance(opt, torch.optim.SGD) and trainer.optim.decoupled_wd == 0.0
    decayed, plain = opt.param_groups
    assert decayed["weight_decay"] == 5e-4 and plain["weight_decay"] == 0.0
    assert all(p.ndim > 1 for p in decayed["params"]) and all(p.ndim <= 1 for p in plain["params"])
    assert decayed["momentum"] == 0.9 and decayed["nesterov"]
    total = trainer.total
    assert trainer.optim.lr_at(0) == 0.03
    assert trainer.optim.lr_at(total / 2) == pytest.approx(0.03 * math.cos(7 * math.pi / 32))
    assert trainer.optim.lr_at(total) == pytest.approx(0.03 * math.cos(7 * math.pi / 16))
    trainer.step()
    trainer.step()  # the second step ran at the lr of the images seen before it
    assert decayed["lr"] == pytest.approx(trainer.optim.lr_at(trainer.images - trainer.batch))
    # Adam keeps the original's constant lr and decoupled decay
    adam = Trainer(p, "mixmatch", store, split_seed=1)
    assert isinstance(adam.optim.optimizer, torch.optim.Adam) and adam.optim.decoupled_wd == 0.02
    assert adam.optim.lr_at(adam.total) == 0.002


@pytest.mark.parametrize("algorithm", ["fixmatch", "iomatch"])
def test_interrupted_run_resumes_bit_identical(tmp_path, store, monkeypatch, algorithm):
    p = tiny_params(**{algorithm: {"mu": 2}})
    Trainer(p, algorithm, store, split_seed=1).fit(tmp_path / "full")
    calls = {"n": 0}
    original = Trainer.step

    def dying_step(self):
        calls["n"] += 1
        if calls["n"] == 6:  # after the checkpoint at 24 images
            raise KeyboardInterrupt
        return original(self)

    monkeypatch.setattr(Trainer, "step", dying_step)
    with pytest.raises(KeyboardInterrupt):
        Trainer(p, algorithm, store, split_seed=1).fit(tmp_path / "cut")
    monkeypatch.setattr(Trainer, "step", original)
    Trainer(p, algorithm, store, split_seed=1).fit(tmp_path / "cut")
    a = ckpt.load(tmp_path / "full" / "model.pt", expect=ckpt.MODEL_FORMAT)
    b = ckpt.load(tmp_path / "cut" / "model.pt", expect=ckpt.MODEL_FORMAT)
    assert state_equal(a["model"], b["model"]) and state_equal(a["raw_model"], b["raw_model"])
    if algorithm == "iomatch":
        assert any(k.startswith("heads.open") for k in a["model"])  # the heads are in the EMA model.pt


def test_iomatch_model_pt_predicts_with_its_open_head(tmp_path, store):
    Trainer(tiny_params(iomatch={"mu": 2}), "iomatch", store, split_seed=1).fit(tmp_path / "run")
    model, record = load_model(tmp_path / "run" / "model.pt")
    assert record.arch["open_heads"] == 128
    images = np.asarray(store.subset("test").images[:])
    out = predict_outputs(model, images, batch=4, open_head=True)
    probs, open_probs = out.probs, out.open_probs
    assert probs.shape == (9, K) and open_probs.shape == (9, K + 1)
    np.testing.assert_allclose(open_probs.sum(1), 1.0, rtol=1e-5)
    plain = predict_outputs(model, images, batch=4)
    assert plain.open_probs is None and np.array_equal(plain.probs, probs)
    np.testing.assert_array_equal(plain.energy, out.energy)
    with torch.no_grad():  # energy = -logsumexp of the closed-set logits
        logits = model(to_input(torch.from_numpy(images).permute(0, 3, 1, 2)))
    np.testing.assert_allclose(out.energy, -torch.logsumexp(logits, 1).numpy(), rtol=1e-5, atol=1e-5)


def test_bad_fixmatch_params():
    from realmix.errors import RealmixError

    for over, message in [({"fixmatch": {"mu": 0}}, r"fixmatch\.mu=0"),
                          ({"iomatch": {"q_cutoff": 2}}, r"iomatch\.q_cutoff=2"),
                          ({"fixmatch": {"optimizer": "rmsprop"}}, r"fixmatch\.optimizer='rmsprop'"),
                          ({"iomatch": {"lr": -1}}, r"iomatch\.lr=-1"),
                          ({"fixmatch": {"momentum": 0, "nesterov": True}}, r"fixmatch\.nesterov=true")]:
        with pytest.raises(RealmixError, match=message):
            tiny_params(**over)
