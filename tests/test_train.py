"""The training loop: runs, resume (in process and after SIGKILL), logs, and its bad inputs."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest
import torch
import yaml

from realmix import checkpoint as ckpt
from realmix.errors import RealmixError
from realmix.store import Store, StoreWriter
from realmix.train import Trainer
from tests.conftest import ROOT, make_store
from tests.helpers import TINY, state_equal, tiny_params


@pytest.mark.parametrize("algorithm", ["supervised", "supervised_mixup", "pi_model", "pseudo_label", "mean_teacher",
                                       "ict", "vat", "mixup", "mixmatch", "realmix", "fixmatch", "iomatch"])
def test_fit_writes_model_logs_and_checkpoints(tmp_path, store, algorithm):
    p = tiny_params(tsa="linear_schedule")
    out = tmp_path / "run"
    res = Trainer(p, algorithm, store, split_seed=1).fit(out)
    assert 0 <= res["test/accuracy"] <= 100 and res["step"] == 54  # 9 steps of 6 images (>= 0.05 kimg)
    model = ckpt.load(out / "model.pt", expect=ckpt.MODEL_FORMAT)
    assert model["class_names"] == ["c0", "c1", "c2"] and model["images"] == 54
    assert len(ckpt.CheckpointDir(out / "checkpoints", 2).list()) == 2  # keep_ckpt
    summary = json.loads((out / "live" / "metrics.json").read_text())
    assert summary["step"] == 54 and "accuracy" in summary["test"] and "class" not in summary["test"]
    rows = (out / "live" / "plots" / "metrics" / "test" / "accuracy.tsv").read_text().splitlines()
    assert rows[0] == "step\taccuracy" and [int(r.split()[0]) for r in rows[1:]] == [24, 42, 54]
    assert (out / "live" / "plots" / "metrics" / "test" / "class" / "c1.tsv").exists()
    assert list((out / "tensorboard").glob("events.out.tfevents.*"))
    if algorithm == "realmix":
        assert (out / "live" / "plots" / "metrics" / "train" / "tsa_threshold.tsv").exists()


def test_interrupted_run_resumes_bit_identical(tmp_path, store, monkeypatch):
    p = tiny_params()
    full = Trainer(p, "realmix", store, split_seed=1)
    full.fit(tmp_path / "full")

    calls = {"n": 0}
    original = Trainer.step

    def dying_step(self):
        calls["n"] += 1
        if calls["n"] == 6:  # after the checkpoint at 24 images (step 4), before the one at 42
            raise KeyboardInterrupt
        return original(self)

    monkeypatch.setattr(Trainer, "step", dying_step)
    with pytest.raises(KeyboardInterrupt):
        Trainer(p, "realmix", store, split_seed=1).fit(tmp_path / "cut")
    assert not (tmp_path / "cut" / "model.pt").exists()
    monkeypatch.setattr(Trainer, "step", original)
    resumed = Trainer(p, "realmix", store, split_seed=1)
    resumed.fit(tmp_path / "cut")
    a = ckpt.load(tmp_path / "full" / "model.pt", expect=ckpt.MODEL_FORMAT)
    b = ckpt.load(tmp_path / "cut" / "model.pt", expect=ckpt.MODEL_FORMAT)
    assert state_equal(a["model"], b["model"]) and state_equal(a["raw_model"], b["raw_model"])
    assert a["metrics"] == {**b["metrics"], "train/images_per_s": a["metrics"]["train/images_per_s"]}
    acc = (tmp_path / "cut" / "live" / "plots" / "metrics" / "test" / "accuracy.tsv").read_text()
    assert [r.split()[0] for r in acc.splitlines()[1:]] == ["24", "42", "54"]  # no duplicated rows


def test_changed_params_start_over_and_finished_run_is_reused(tmp_path, store, capsys):
    out = tmp_path / "run"
    Trainer(tiny_params(), "supervised", store, split_seed=1).fit(out)
    first = ckpt.load(out / "model.pt", expect=ckpt.MODEL_FORMAT)
    # tsa only matters to realmix: the supervised run resumes at its end and writes the same model
    Trainer(tiny_params(tsa="log_schedule"), "supervised", store, split_seed=1).fit(out)
    assert "resuming" in capsys.readouterr().err
    assert state_equal(first["model"], ckpt.load(out / "model.pt", expect=ckpt.MODEL_FORMAT)["model"])
    Trainer(tiny_params(train={"lr": 0.001}), "supervised", store, split_seed=1).fit(out)
    assert "starting from scratch" in capsys.readouterr().err


def test_runs_are_seeded(tmp_path, store):
    def weights(seed, name):
        Trainer(tiny_params(train={"seed": seed}), "mixmatch", store, split_seed=1).fit(tmp_path / name)
        return ckpt.load(tmp_path / name / "model.pt", expect=ckpt.MODEL_FORMAT)["model"]

    assert state_equal(weights(0, "a"), weights(0, "b"))
    assert not state_equal(weights(0, "a"), weights(1, "c"))


def test_nan_loss_stops_with_last_good_checkpoint(tmp_path, store, monkeypatch):
    from realmix.algorithms.supervised import Supervised

    original = Supervised.train_step
    calls = {"n": 0}

    def poisoned(self, model, batch, progress):
        out = original(self, model, batch, progress)
        calls["n"] += 1
        if calls["n"] == 6:
            out.loss = out.loss * float("nan")
        return out

    monkeypatch.setattr(Supervised, "train_step", poisoned)
    out = tmp_path / "run"
    with pytest.raises(RealmixError, match="NaN/inf"):
        Trainer(tiny_params(), "supervised", store, split_seed=1).fit(out)
    names = [p.name for p in ckpt.CheckpointDir(out / "checkpoints", 2).list()]
    assert names == ["ckpt-000000000024.pt"] and not (out / "model.pt").exists()
    state = ckpt.load(out / "checkpoints" / names[0])
    assert all(torch.isfinite(v).all() for v in state["model"].values() if v.is_floating_point())


def test_checkpoint_from_another_model_is_refused(tmp_path, store):
    out = tmp_path / "run"
    Trainer(tiny_params(), "supervised", store, split_seed=1).fit(out)
    path, state = ckpt.CheckpointDir(out / "checkpoints", 2).latest()
    other = Trainer(tiny_params(model={"filters": 8}), "supervised", store, split_seed=1)
    with pytest.raises(RealmixError, match="checkpoint is for model"):
        other.load_state_dict(state, path)
    fewer = make_store(tmp_path / "two", {"label": [0, 1] * 3, "test": [0, 1]}, k=2, hw=8)
    with pytest.raises(RealmixError, match="has 3 classes but this run has 2"):
        Trainer(tiny_params(), "supervised", fewer, split_seed=1).load_state_dict(state, path)


@pytest.mark.parametrize("over, message", [
    ({"train": {"algorithms": ["mixmach"]}}, "did you mean 'mixmatch'"),
    ({"tsa": "cosine"}, "tsa='cosine' is not allowed"),
    ({"mixmatch": {"mixmode": "xy.yx"}}, "mixmatch.mixmode='xy.yx' is not allowed"),
    ({"realmix": {"nu": 9}}, "realmix.nu=9 is not supported"),
    ({"realmix": {"percent_mask": 1.0}}, "realmix.percent_mask=1.0 must be a fraction in (0, 1)"),
    ({"train": {"lr": 0}}, "train.lr=0.0 must be > 0"),
])
def test_bad_params(over, message):
    with pytest.raises(RealmixError) as e:
        tiny_params(**over)
    assert message in str(e.value)


def test_batch_smaller_than_interleave_groups(store):
    with pytest.raises(RealmixError, match=r"train.batch=2: .*nu \+ 1 = 3 interleave groups"):
        Trainer(tiny_params(train={"batch": 2}), "mixmatch", store, split_seed=1)


def cli_project(work: Path) -> Path:
    rng = np.random.default_rng(0)
    make_store(work / "data" / "splits" / "toy.1@12-6", {
        "label": np.repeat(np.arange(3), 4), "unlabel": rng.integers(0, 3, 40), "valid": np.arange(6) % 3,
        "test": np.arange(9) % 3}, k=3, hw=8)
    params = yaml.safe_load((ROOT / "params.yaml").read_text())
    for key, values in TINY.items():
        params[key].update(values)
    params["train"].update(train_kimg=2, save_kimg=0.1, report_kimg=0.5)
    (work / "params.yaml").write_text(yaml.safe_dump(params))
    return work


@pytest.mark.parametrize("algorithm", ["mixmatch", "iomatch"])  # iomatch: SGD momentum, cosine lr, strong views, heads
def test_cli_run_killed_and_rerun_resumes_identically(tmp_path, algorithm):
    """`realmix train` killed with SIGKILL after a checkpoint; the rerun resumes from it and ends with the
    same weights as an uninterrupted run."""
    cmd = [sys.executable, "-m", "realmix.cli", "train", "--algorithm", algorithm, "--data", "toy.1@12-6"]
    env = dict(os.environ, PYTHONPATH=str(ROOT))
    ref = cli_project(tmp_path / "ref")
    assert subprocess.run(cmd, cwd=ref, env=env, capture_output=True).returncode == 0
    work = cli_project(tmp_path / "proj")
    ckdir = work / "runs" / algorithm / "toy.1@12-6" / "checkpoints"
    proc = subprocess.Popen(cmd, cwd=work, env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE)
    try:
        deadline = time.time() + 120
        while time.time() < deadline and len(list(ckdir.glob("ckpt-*.pt"))) < 2:
            time.sleep(0.05)
            assert proc.poll() is None, proc.communicate()
        os.kill(proc.pid, signal.SIGKILL)
    finally:
        proc.wait()
    kept = sorted(ckdir.glob("ckpt-*.pt"))
    assert kept and not (ckdir.parent / "model.pt").exists()
    res = subprocess.run(cmd, cwd=work, env=env, capture_output=True, text=True)
    assert res.returncode == 0, res.stderr
    assert f"from {kept[-1].name}" in res.stderr or f"from {kept[-2].name}" in res.stderr
    assert "test/accuracy" in res.stdout
    a = ckpt.load(ckdir.parent / "model.pt", expect=ckpt.MODEL_FORMAT)
    b = ckpt.load(ref / "runs" / algorithm / "toy.1@12-6" / "model.pt", expect=ckpt.MODEL_FORMAT)
    assert state_equal(a["model"], b["model"]) and state_equal(a["raw_model"], b["raw_model"])


def test_update_is_adam_then_decay_on_weights_only_then_ema(store, monkeypatch):
    p = tiny_params(train={"wd": 50.0, "lr": 0.002, "ema": 0.5, "ema_warmup": False})
    trainer = Trainer(p, "supervised", store, split_seed=1)
    model = trainer.model
    adam_moved = {}

    def fake_adam():  # a known "Adam" move, so decay and EMA can be checked exactly
        with torch.no_grad():
            for name, param in model.named_parameters():
                param.add_(1.0)
                adam_moved[name] = param.clone()

    monkeypatch.setattr(trainer.optim.optimizer, "step", fake_adam)
    ema_before = {k: v.clone() for k, v in trainer.ema.model.named_parameters()}
    with torch.no_grad():  # make the BN running statistics differ from the EMA copy's
        for buf in model.buffers():
            if buf.is_floating_point():
                buf.add_(0.25)
    trainer.optim.step(trainer.images)
    factor = 1.0 - 50.0 * 0.002
    weights = {n for n, q in model.named_parameters() if q.ndim > 1}
    assert weights and any(n.endswith("fc.weight") for n in weights) and any("conv" in n for n in weights)
    for name, param in model.named_parameters():
        expected = adam_moved[name] * factor if name in weights else adam_moved[name]  # no decay on biases / BN
        torch.testing.assert_close(param.detach(), expected, rtol=0, atol=1e-6, msg=name)
        # the EMA averages the decayed weights: 0.5 * before + 0.5 * after
        torch.testing.assert_close(dict(trainer.ema.model.named_parameters())[name],
                                   0.5 * ema_before[name] + 0.5 * expected, rtol=0, atol=1e-6, msg=name)
    for (name, buf), (_, ema_buf) in zip(model.named_buffers(), trainer.ema.model.named_buffers(), strict=True):
        assert torch.equal(buf, ema_buf), name  # buffers copied, not averaged


def test_precision_choice(monkeypatch):
    from realmix import hardware

    cpu = torch.device("cpu")
    assert hardware.pick_precision("fp32", cpu) is None
    assert hardware.pick_precision("bf16", cpu) is torch.bfloat16
    for native, expected in ((True, torch.bfloat16), (False, None)):
        monkeypatch.setattr(hardware, "native_bf16", lambda device, n=native: n)
        assert hardware.pick_precision("auto", cpu) is expected


def test_bf16_run_trains_in_bf16_with_float32_state(tmp_path, store):
    seen = []
    trainer = Trainer(tiny_params(train={"precision": "bf16"}), "mixmatch", store, split_seed=1)
    trainer.model.stem.register_forward_hook(lambda m, i, o: seen.append(o.dtype))
    out = trainer.step()
    assert seen and all(d == torch.bfloat16 for d in seen)  # every forward of the step ran under autocast
    assert out.loss.dtype == torch.float32
    assert all(p.dtype == torch.float32 for p in trainer.model.parameters())
    assert all(p.dtype == torch.float32 for p in trainer.ema.model.parameters())
    fp32 = Trainer(tiny_params(train={"precision": "fp32"}), "mixmatch", store, split_seed=1)
    assert fp32.fingerprint != trainer.fingerprint  # a bf16 checkpoint is not resumed in fp32
    res = trainer.fit(tmp_path / "run")
    assert 0 <= res["test/accuracy"] <= 100
    assert ckpt.load(tmp_path / "run" / "model.pt", expect=ckpt.MODEL_FORMAT)["precision"] == "torch.bfloat16"


def test_an_algorithm_section_wd_overrides_train_wd(store):
    p = tiny_params(train={"wd": 0.02, "lr": 0.002}, mean_teacher={"wd": 0.2})
    assert Trainer(p, "mean_teacher", store, split_seed=1).optim.decoupled_wd == 0.2
    assert Trainer(p, "supervised", store, split_seed=1).optim.decoupled_wd == 0.02
    with pytest.raises(RealmixError, match=r"mean_teacher\.wd=-1"):
        tiny_params(mean_teacher={"wd": -1})


def test_ema_bn_recompute_only_changes_what_is_evaluated(tmp_path, store):
    """recompute, copy and validated train the same weights; model.pt's EMA statistics are its own (recompute),
    the raw model's (copy) or validated's pick, which the evaluation history logs."""
    out = {}
    for mode in ("recompute", "copy", "validated"):
        p = tiny_params(train={"ema_bn": mode})
        trainer = Trainer(p, "supervised", store, split_seed=1)
        trainer.fit(tmp_path / mode)
        out[mode] = (trainer, ckpt.load(tmp_path / mode / "model.pt", expect=ckpt.MODEL_FORMAT))
    (t_re, m_re), (_, m_cp), (_, m_va) = out["recompute"], out["copy"], out["validated"]
    assert state_equal(m_re["raw_model"], m_cp["raw_model"]) and state_equal(m_re["raw_model"], m_va["raw_model"])
    assert m_re["ema_bn"] == "recompute" and m_cp["ema_bn"] == "copy"
    picked = {True: "recompute", False: "copy"}[m_va["history"][-1]["ema_bn/recomputed"] == 1.0]
    assert m_va["ema_bn"] == picked and state_equal(m_va["model"], out[picked][1]["model"])
    assert [r["ema_bn/recomputed"] for r in m_re["history"]] == [1.0] * len(m_re["history"])
    stats = [k for k in m_re["model"] if k.endswith("running_mean") or k.endswith("running_var")]
    assert stats
    assert all(torch.equal(m_cp["model"][k], m_cp["raw_model"][k]) for k in stats)  # copied from the raw model
    assert not all(torch.equal(m_re["model"][k], m_re["raw_model"][k]) for k in stats)
    weights = [k for k in m_re["model"] if k not in stats and "num_batches" not in k]
    assert all(torch.equal(m_re["model"][k], m_cp["model"][k]) for k in weights)  # same EMA weights
    # the saved model reproduces the last logged evaluation (evaluate and predict read model.pt)
    from realmix.inference import load_model
    model, _ = load_model(tmp_path / "recompute" / "model.pt")
    test = store.subset("test")
    probs = t_re.monitor.predict(model, test.images)
    acc = 100.0 * float((probs.argmax(1) == test.labels).mean())
    assert acc == pytest.approx(m_re["history"][-1]["test/accuracy"])


def test_ema_bn_validated_keeps_the_statistics_that_predict_the_validation_images(tmp_path, store):
    """A crafted collapse: the raw model's statistics (copy) push every image to one class, so the validation
    images (labelled by what the EMA weights predict with their own statistics) choose recompute; with sane copied
    statistics and validation labels that the copied ones predict, the same rule keeps copy."""
    from realmix.ema import with_own_bn_stats
    from realmix.train.monitor import Monitor

    p = tiny_params(train={"ema_bn": "validated"})
    trainer = Trainer(p, "supervised", store, split_seed=1)
    ema = trainer.ema.model
    bns = [m for m in ema.modules() if isinstance(m, torch.nn.BatchNorm2d)]
    own = with_own_bn_stats(ema, store.subset("label").images, batch=7, device=torch.device("cpu"))
    valid = store.subset("valid").images

    def pick(labeller, copied) -> str:
        """validated's choice for the EMA weights with `copied` statistics, on validation images whose labels are
        what `labeller` predicts (the same images, a copy of the split with only those labels changed)."""
        labels = trainer.monitor.predict(labeller, valid).argmax(1)
        path = tmp_path / f"crafted{len(list(tmp_path.glob('crafted*')))}.1@12-6"
        with StoreWriter(path, store.class_names, meta={"source": "test"}) as w:
            for name in ("label", "valid", "test"):
                s = store.subset(name)
                w.add(name, np.asarray(s.images), labels if name == "valid" else s.labels)
        monitor = Monitor(trainer.runtime, Store.open(path), p.train, algorithm="supervised")
        _, rule, done = monitor.eval_model(copied)
        assert set(done) == {"valid"}  # its validation predictions are reused by the evaluation
        return rule

    with torch.no_grad():
        for m in bns:  # the collapse: statistics of another network, far from these activations
            m.running_mean.fill_(50.0)
            m.running_var.fill_(1e-4)
    collapsed = trainer.monitor.predict(ema, valid).argmax(1)
    assert len(set(collapsed.tolist())) == 1  # every validation image in one class
    assert len(set(trainer.monitor.predict(own, valid).argmax(1).tolist())) > 1
    assert pick(own, ema) == "recompute"

    with torch.no_grad():
        for m in bns:  # sane statistics, but not the ones the labelled images give
            m.running_mean.fill_(0.3)
            m.running_var.fill_(2.0)
    assert (trainer.monitor.predict(ema, valid).argmax(1) != trainer.monitor.predict(own, valid).argmax(1)).any()
    assert pick(ema, ema) == "copy"


# -- train longer --------------------------------------------------------------------------------------------
def history_at(history, key="test/accuracy"):
    return {r["step"]: r[key] for r in history if key in r}


@pytest.mark.parametrize("algorithm", ["supervised", "mixmatch", "fixmatch"])
def test_raising_train_kimg_continues_the_run_to_the_same_end_as_a_longer_run(tmp_path, store, capsys, algorithm):
    """Nothing of these steps depends on the run length (fixmatch with a constant lr), so a finished 0.05-kimg run
    raised to 0.1 kimg resumes at its end and ends with the weights of a 0.1-kimg run trained at once."""
    over = {"fixmatch": {"mu": 2, "lr_schedule": "constant"}}
    short, long_ = tiny_params(**over), tiny_params(train={"train_kimg": 0.1}, **over)
    Trainer(long_, algorithm, store, split_seed=1).fit(tmp_path / "long")
    Trainer(short, algorithm, store, split_seed=1).fit(tmp_path / "run")
    capsys.readouterr()
    Trainer(long_, algorithm, store, split_seed=1).fit(tmp_path / "run")
    err = capsys.readouterr().err
    assert "resuming" in err and "(54 images" in err and "training longer, to 102 images" in err, err
    a = ckpt.load(tmp_path / "long" / "model.pt", expect=ckpt.MODEL_FORMAT)
    b = ckpt.load(tmp_path / "run" / "model.pt", expect=ckpt.MODEL_FORMAT)
    assert a["images"] == b["images"] == 102
    assert state_equal(a["model"], b["model"]) and state_equal(a["raw_model"], b["raw_model"])
    # every evaluation of the long run is in the extended run's history, with the same figure (the extended run
    # also has the evaluation at the short run's end)
    long_acc, run_acc = history_at(a["history"]), history_at(b["history"])
    assert all(run_acc[step] == acc for step, acc in long_acc.items()) and 54 in run_acc


@pytest.mark.parametrize("algorithm, over, reason", [
    ("realmix", {"tsa": "linear_schedule"}, "TSA's threshold schedule (tsa: linear_schedule) spans the whole run"),
    ("fixmatch", {"fixmatch": {"mu": 2}}, "the cosine learning-rate schedule (fixmatch.lr_schedule: cosine)"),
    ("pi_model", {}, "the consistency weight's ramp over the first 0.4 of the run (pi_model.warmup_pos)"),
])
def test_raising_train_kimg_starts_over_where_the_step_depends_on_the_run_length(tmp_path, store, capsys, algorithm,
                                                                               over, reason):
    Trainer(tiny_params(**over), algorithm, store, split_seed=1).fit(tmp_path / "run")
    capsys.readouterr()
    long_ = tiny_params(train={"train_kimg": 0.1}, **over)
    Trainer(long_, algorithm, store, split_seed=1).fit(tmp_path / "run")
    err = capsys.readouterr().err
    assert f"(train.train_kimg changed and {reason}, so it cannot be continued); starting from scratch" in err, err
    Trainer(long_, algorithm, store, split_seed=1).fit(tmp_path / "fresh")
    a = ckpt.load(tmp_path / "fresh" / "model.pt", expect=ckpt.MODEL_FORMAT)
    b = ckpt.load(tmp_path / "run" / "model.pt", expect=ckpt.MODEL_FORMAT)
    assert state_equal(a["model"], b["model"])


def test_a_run_is_not_shortened_and_the_restart_names_what_changed(tmp_path, store, capsys):
    Trainer(tiny_params(train={"train_kimg": 0.1}), "supervised", store, split_seed=1).fit(tmp_path / "run")
    capsys.readouterr()
    Trainer(tiny_params(), "supervised", store, split_seed=1).fit(tmp_path / "run")
    assert "they are at 102 images, past train.train_kimg=0.05 (a run cannot be shortened)" in capsys.readouterr().err
    Trainer(tiny_params(train={"lr": 0.001}, supervised={"smoothing": 0.1}), "supervised", store,
            split_seed=1).fit(tmp_path / "run")
    assert "(changed: supervised.smoothing, train.lr); starting from scratch" in capsys.readouterr().err


def test_virtual_pool_trains_bit_identical_to_the_materialized_pool_and_both_resume(tmp_path, store, monkeypatch,
                                                                                     capsys):
    """RealMix on a virtual pre-augmented pool (computed per batch in the loop) ends with exactly the weights of the
    same run on the materialized pool; a run cut after a checkpoint resumes to the same end on either storage."""
    from realmix.data_stream import PoolBank
    from realmix.preaugment import preaugment

    recipe = dict(copies=3, augment="cifar10", keep_originals=True, seed=1, cutout_prob=0.3, shard_size=50,
                  progress=False)
    pools = {s: preaugment(store, tmp_path / s / "toy_aug3.1@12-6", storage=s, **recipe)
             for s in ("materialized", "virtual")}
    p = tiny_params()
    trainers = {s: Trainer(p, "realmix", pool, split_seed=1) for s, pool in pools.items()}
    assert isinstance(trainers["virtual"].feed.unlabel_bank, PoolBank)
    assert trainers["virtual"].fingerprint == trainers["materialized"].fingerprint  # the same run data
    trainers["materialized"].fit(tmp_path / "full")
    reference = ckpt.load(tmp_path / "full" / "model.pt", expect=ckpt.MODEL_FORMAT)

    original = Trainer.step
    for storage, pool in pools.items():
        calls = {"n": 0}

        def dying_step(self, calls=calls):
            calls["n"] += 1
            if calls["n"] == 6:  # after the checkpoint at 24 images, before the one at 42
                raise KeyboardInterrupt
            return original(self)

        monkeypatch.setattr(Trainer, "step", dying_step)
        with pytest.raises(KeyboardInterrupt):
            Trainer(p, "realmix", pool, split_seed=1).fit(tmp_path / storage)
        monkeypatch.setattr(Trainer, "step", original)
        capsys.readouterr()
        Trainer(p, "realmix", pool, split_seed=1).fit(tmp_path / storage)
        assert "(24 images, saved by" in capsys.readouterr().err  # resumed, not started over
        got = ckpt.load(tmp_path / storage / "model.pt", expect=ckpt.MODEL_FORMAT)
        assert state_equal(got["model"], reference["model"]) and state_equal(got["raw_model"], reference["raw_model"])
    # the pool is what the run learned from: the same run on the un-augmented split ends elsewhere
    Trainer(p, "realmix", store, split_seed=1).fit(tmp_path / "plain")
    plain = ckpt.load(tmp_path / "plain" / "model.pt", expect=ckpt.MODEL_FORMAT)
    assert not state_equal(plain["raw_model"], reference["raw_model"])
