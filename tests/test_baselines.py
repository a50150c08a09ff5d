"""The baselines of the original: supervised MixUp, Pi-model, Pseudo-label, Mean Teacher, ICT (reference §E)."""

from __future__ import annotations

import copy

import numpy as np
import pytest
import torch

from realmix.algorithms import build_algorithm
from realmix.algorithms.base import Progress
from realmix.algorithms.sections import (
    ICTParams,
    MeanTeacherParams,
    PiModelParams,
    PseudoLabelParams,
    SSLMixUpParams,
    SupervisedMixUpParams,
    VATParams,
)
from realmix.ema import EMA
from realmix.errors import RealmixError
from realmix.ops import mix_reversed, mixup_lambdas
from realmix.params import parse
from tests.helpers import B, K, bn_buffers, tiny, toy_batch

PARAMS = {
    "supervised_mixup": SupervisedMixUpParams(beta=0.5),
    "pi_model": PiModelParams(consistency=10.0, warmup_pos=0.4),
    "pseudo_label": PseudoLabelParams(consistency=1.0, threshold=0.5, warmup_pos=0.4),
}


def step_loss(name, model, batch, images=10_000, total=10_000, seed=123):
    """The step's loss at fixed draws, on a copy of `model` (no update)."""
    algo = build_algorithm(name, PARAMS[name], num_classes=K, rng=np.random.default_rng(seed))
    with torch.no_grad():
        return algo.train_step(copy.deepcopy(model).train(), batch, Progress(images, total))


def assert_steps_reduce_loss(algo, model, batch, loss_now, after_step=lambda: None, steps=20):
    """`steps` Adam steps of `algo` on one batch bring `loss_now()` below 0.8 x its value before."""
    opt = torch.optim.Adam(model.parameters(), lr=0.01)
    before = loss_now()
    for _ in range(steps):
        out = algo.train_step(model, batch, Progress(10_000, 10_000))
        assert out.loss.ndim == 0 and out.loss.requires_grad
        opt.zero_grad()
        out.loss.backward()
        opt.step()
        after_step()
    after = loss_now()
    assert after < 0.8 * before, (algo.name, before, after)


def test_mix_reversed_hand_worked():
    x = torch.arange(4.0).view(4, 1)
    labels = torch.eye(4)
    x_mixed, l_mixed = mix_reversed(x, labels, 0.5, np.random.default_rng(3))
    lam = torch.from_numpy(mixup_lambdas(4, 0.5, np.random.default_rng(3)))
    assert (lam >= 0.5).all()
    own, partner = torch.tensor([0.0, 1, 2, 3]), torch.tensor([3.0, 2, 1, 0])
    torch.testing.assert_close(x_mixed[:, 0], lam * own + (1 - lam) * partner)
    torch.testing.assert_close(l_mixed[0], torch.tensor([lam[0], 0, 0, 1 - lam[0]]))
    torch.testing.assert_close(l_mixed.sum(1), torch.ones(4))


@pytest.mark.parametrize("name", list(PARAMS))
def test_a_few_adam_steps_reduce_the_loss(name):
    torch.manual_seed(0)
    model = tiny().train()
    batch = toy_batch()
    algo = build_algorithm(name, PARAMS[name], num_classes=K, rng=np.random.default_rng(0))
    assert len(algo.needs.views) == {"supervised_mixup": 0, "pi_model": 2, "pseudo_label": 1}[name]
    assert_steps_reduce_loss(algo, model, batch, lambda: step_loss(name, model, batch).loss.item())


def test_supervised_mixup_trains_on_reversed_batch_mixes():
    model = tiny().train()
    batch = toy_batch()
    out = step_loss("supervised_mixup", model, batch, seed=5)
    x, t = mix_reversed(batch.x, torch.nn.functional.one_hot(batch.y, K).float(), 0.5, np.random.default_rng(5))
    with torch.no_grad():
        expected = -(t * copy.deepcopy(model).train()(x).log_softmax(-1)).sum(-1).mean()
    torch.testing.assert_close(out.loss, expected)


@pytest.mark.parametrize("name", ["pi_model", "pseudo_label"])
def test_consistency_weight_ramps_over_warmup_pos_and_only_labelled_forward_updates_bn(name):
    model = tiny(momentum=0.5).train()
    batch = toy_batch()
    algo = build_algorithm(name, PARAMS[name], num_classes=K, rng=np.random.default_rng(0))
    ref = copy.deepcopy(model)
    out = algo.train_step(model, batch, Progress(1000, 10_000))  # 10 % of training, warmup over 40 %
    assert out.logs["w_consistency"] == pytest.approx(PARAMS[name].consistency * 0.25)
    torch.testing.assert_close(out.loss.detach(), out.logs["loss_x"] + out.logs["w_consistency"] * out.logs["loss_u"])
    with torch.no_grad():
        ref(batch.x)  # the labelled forward alone
    for k, v in bn_buffers(ref).items():
        torch.testing.assert_close(bn_buffers(model)[k], v, msg=k)
    assert step_loss(name, model, batch, images=0).logs["w_consistency"] == 0.0
    assert step_loss(name, model, batch, images=9000).logs["w_consistency"] == PARAMS[name].consistency


def test_pi_model_target_view_gets_no_gradient():
    model = tiny().train()
    batch = toy_batch()
    u0 = batch.u[0].clone().requires_grad_(True)
    u1 = batch.u[1].clone().requires_grad_(True)
    algo = build_algorithm("pi_model", PARAMS["pi_model"], num_classes=K, rng=np.random.default_rng(0))
    loss_u, _ = algo.unsupervised(model, (u0, u1))
    loss_u.backward()
    assert u0.grad is None and u1.grad is not None and u1.grad.abs().sum() > 0
    with torch.no_grad():
        expected = (model(batch.u[0]).softmax(-1) - model(batch.u[1]).softmax(-1)).square().mean()
    torch.testing.assert_close(loss_u.detach(), expected)


def test_pseudo_label_threshold_mask():
    model = tiny().train()
    batch = toy_batch()
    with torch.no_grad():
        probs = copy.deepcopy(model).train()(batch.u[0]).softmax(-1)
    conf = probs.max(-1).values
    thr = float(conf.median())  # about half the rows are above it
    params = PseudoLabelParams(consistency=1.0, threshold=thr)
    algo = build_algorithm("pseudo_label", params, num_classes=K, rng=np.random.default_rng(0))
    loss_u, logs = algo.unsupervised(copy.deepcopy(model).train(), batch.u[:1])
    keep = (conf > thr).float()
    assert 0 < keep.sum() < B and float(logs["pseudo_kept"]) == pytest.approx(keep.mean().item())
    ce = torch.nn.functional.cross_entropy(probs.log(), probs.argmax(-1), reduction="none")
    torch.testing.assert_close(loss_u.detach(), (ce * keep).mean(), rtol=1e-4, atol=1e-6)
    nothing = build_algorithm("pseudo_label", PseudoLabelParams(threshold=0.999), num_classes=K,
                              rng=np.random.default_rng(0))
    loss_u, logs = nothing.unsupervised(copy.deepcopy(model).train(), batch.u[:1])
    assert float(logs["pseudo_kept"]) == 0.0 and loss_u.item() == 0.0


@pytest.mark.parametrize("over, message", [
    ({"pseudo_label": {"threshold": 1.0}}, "pseudo_label.threshold=1.0 must be in [0, 1)"),
    ({"pi_model": {"warmup_pos": 0}}, "pi_model.warmup_pos=0.0 must be in (0, 1]"),
    ({"pi_model": {"consistancy": 3}}, "consistency"),
    ({"supervised_mixup": {"beta": 0}}, "supervised_mixup.beta=0.0 must be > 0"),
    ({"train": {"algorithms": ["pseudolabel"]}}, "did you mean 'pseudo_label'"),
])
def test_bad_baseline_params(over, message):
    with pytest.raises(RealmixError) as e:
        parse(over)
    assert message in str(e.value)


# -- teacher methods ---------------------------------------------------------------------------------------
TEACHER_PARAMS = {"mean_teacher": MeanTeacherParams(consistency=10.0), "ict": ICTParams(consistency=10.0, beta=0.5)}


def with_teacher(name, model, seed=0, decay_from=None):
    algo = build_algorithm(name, TEACHER_PARAMS[name], num_classes=K, rng=np.random.default_rng(seed))
    algo.teacher = copy.deepcopy(decay_from if decay_from is not None else model).eval()
    return algo


@pytest.mark.parametrize("name", list(TEACHER_PARAMS))
def test_teacher_methods_reduce_the_loss(name):
    torch.manual_seed(0)
    model = tiny().train()
    batch = toy_batch()
    algo = with_teacher(name, model)
    ema = EMA(model, 0.5, warmup=False)
    algo.teacher = ema.model

    def loss_now():
        probe = with_teacher(name, model, seed=123)
        probe.teacher = copy.deepcopy(ema.model)
        with torch.no_grad():
            return probe.train_step(copy.deepcopy(model).train(), batch, Progress(10_000, 10_000)).loss.item()

    assert_steps_reduce_loss(algo, model, batch, loss_now, after_step=ema.update)


@pytest.mark.parametrize("name", list(TEACHER_PARAMS))
def test_teacher_is_the_ema_model_in_train_mode_untouched(name):
    student = tiny(seed=0, momentum=0.5).train()
    teacher = tiny(seed=1, momentum=0.5).eval()  # different weights: the target must come from these
    algo = with_teacher(name, student, decay_from=teacher)
    before = {k: v.clone() for k, v in algo.teacher.state_dict().items()}
    batch = toy_batch()
    u = batch.u[0]
    loss_u, _ = algo.unsupervised(student, batch.u)
    assert not algo.teacher.training  # mode restored
    after = algo.teacher.state_dict()
    assert all(torch.equal(before[k], after[k]) for k in before)  # no running-statistic update, no change
    with torch.no_grad():
        target = copy.deepcopy(teacher).train()(u).softmax(-1)  # train mode: batch statistics
    if name == "mean_teacher":
        with torch.no_grad():
            expected = (target - copy.deepcopy(student).train()(batch.u[1]).softmax(-1)).square().mean()
    else:  # ICT: the same reversed-batch mix of inputs and of teacher predictions
        mixed_u, mixed_t = mix_reversed(u, target, 0.5, np.random.default_rng(0))
        with torch.no_grad():
            expected = (mixed_t - copy.deepcopy(student).train()(mixed_u).softmax(-1)).square().mean()
    torch.testing.assert_close(loss_u.detach(), expected, rtol=1e-5, atol=1e-7)
    assert loss_u.requires_grad  # the student side carries the gradient, the teacher side does not
    assert all(p.grad is None for p in algo.teacher.parameters())


def test_teacher_methods_need_a_teacher():
    algo = build_algorithm("mean_teacher", MeanTeacherParams(), num_classes=K, rng=np.random.default_rng(0))
    with pytest.raises(RuntimeError, match="EMA teacher"):
        algo.train_step(tiny(), toy_batch(), Progress(0, 100))


# -- VAT and SSL MixUp ---------------------------------------------------------------------------------------
def test_vat_and_ssl_mixup_reduce_the_loss():
    for name, p in (("vat", VATParams(consistency=1.0, eps=1.0)), ("mixup", SSLMixUpParams(beta=0.5))):
        torch.manual_seed(0)
        model = tiny().train()
        batch = toy_batch()
        algo = build_algorithm(name, p, num_classes=K, rng=np.random.default_rng(0))
        assert len(algo.needs.views) == 1

        def loss_now(p=p, name=name, model=model, batch=batch):
            probe = build_algorithm(name, p, num_classes=K, rng=np.random.default_rng(123))
            return probe.train_step(copy.deepcopy(model).train(), batch, Progress(10_000, 10_000)).loss.item()

        assert_steps_reduce_loss(algo, model, batch, loss_now)


def test_vat_adversarial_direction_beats_random_directions():
    model = tiny().train()
    u = toy_batch(b=16).u[0]
    algo = build_algorithm("vat", VATParams(xi=1e-3), num_classes=K, rng=np.random.default_rng(0))
    with torch.no_grad():
        logits = model(u)
    r = algo.adversarial_direction(model, u, logits)
    torch.testing.assert_close(r.flatten(1).norm(dim=1), torch.ones(16), atol=1e-3, rtol=0)

    def kl_at(direction):
        with torch.no_grad():
            return algo.divergence(logits, model(u + 0.5 * direction)).mean().item()

    g = torch.Generator().manual_seed(0)
    randoms = [kl_at(torch.nn.functional.normalize(torch.randn(u.shape, generator=g).flatten(1)).view_as(u))
               for _ in range(5)]
    assert kl_at(r) > 2 * max(randoms), (kl_at(r), randoms)
    # the default probe size still gives a finite unit direction
    default = build_algorithm("vat", VATParams(), num_classes=K, rng=np.random.default_rng(0))
    r = default.adversarial_direction(model, u, logits)
    assert torch.isfinite(r).all() and torch.allclose(r.flatten(1).norm(dim=1), torch.ones(16), atol=1e-3)


def test_vat_kl_direction_switch():
    clean, perturbed = torch.tensor([[2.0, 0.0, -1.0]]), torch.tensor([[0.0, 1.0, 0.0]])
    p, q = clean.softmax(-1), perturbed.softmax(-1)
    published = build_algorithm("vat", VATParams(kl="published"), num_classes=K, rng=np.random.default_rng(0))
    original = build_algorithm("vat", VATParams(kl="original"), num_classes=K, rng=np.random.default_rng(0))
    torch.testing.assert_close(published.divergence(clean, perturbed), (p * (p / q).log()).sum(-1))
    torch.testing.assert_close(original.divergence(clean, perturbed), (q * (q / p).log()).sum(-1))


def test_ssl_mixup_mixes_unlabelled_images_with_their_own_guesses():
    model = tiny().train()
    batch = toy_batch()
    algo = build_algorithm("mixup", SSLMixUpParams(beta=0.5), num_classes=K, rng=np.random.default_rng(4))
    out = algo.train_step(copy.deepcopy(model).train(), batch, Progress(0, 100))
    ref = copy.deepcopy(model).train()
    rng = np.random.default_rng(4)
    with torch.no_grad():
        guess = ref(batch.u[0]).softmax(-1)
        x, lx = mix_reversed(batch.x, torch.nn.functional.one_hot(batch.y, K).float(), 0.5, rng)
        mu, lu = mix_reversed(batch.u[0], guess, 0.5, rng)
        loss_x = -(lx * ref(x).log_softmax(-1)).sum(-1).mean()
        loss_u = -(lu * ref(mu).log_softmax(-1)).sum(-1).mean()
    torch.testing.assert_close(out.logs["loss_x"], loss_x, rtol=1e-5, atol=1e-6)
    torch.testing.assert_close(out.logs["loss_u"], loss_u, rtol=1e-5, atol=1e-6)
