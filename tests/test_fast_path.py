"""The single-device fast path: channels_last, fused Adam, pinned copies, torch.compile, and a step that never
reads a tensor value on the host."""

from __future__ import annotations

import pytest
import torch

from realmix import checkpoint as ckpt
from realmix.algorithms import ALGORITHMS
from realmix.errors import RealmixError
from realmix.params import parse
from realmix.train import Trainer, pick_fast_path
from tests.helpers import tiny_params


def test_auto_is_on_for_cuda_and_off_for_cpu_but_channels_last():
    t = parse({}).train
    on = pick_fast_path(t, torch.device("cuda"))
    assert (on.channels_last, on.fused_adam, on.pin_memory, on.compile) == (True, True, True, False)
    off = pick_fast_path(t, torch.device("cpu"))  # channels-last measured faster on CPUs too (docs/benchmarks.md)
    assert (off.channels_last, off.fused_adam, off.pin_memory, off.compile) == (True, False, False, False)
    forced = pick_fast_path(parse({"train": {"channels_last": True, "fused_adam": True, "compile": True}}).train,
                            torch.device("cpu"))
    assert (forced.channels_last, forced.fused_adam, forced.compile) == (True, True, True)
    assert not pick_fast_path(parse({"train": {"channels_last": False}}).train, torch.device("cuda")).channels_last


def test_bad_fast_path_values():
    with pytest.raises(RealmixError, match="train.pin_memory=true needs a CUDA device"):
        pick_fast_path(parse({"train": {"pin_memory": True}}).train, torch.device("cpu"))
    with pytest.raises(RealmixError, match=r"train.fused_adam=1 must be auto, true or false"):
        parse({"train": {"fused_adam": 1}})
    with pytest.raises(RealmixError, match=r"train.nproc=0 must be >= 1"):
        parse({"train": {"nproc": 0}})


def test_channels_last_and_fused_adam_train_and_resume_across_fast_path_changes(tmp_path, store, capsys):
    fast = Trainer(tiny_params(train={"channels_last": True, "fused_adam": True}), "mixmatch", store, split_seed=1)
    convs = [p for p in fast.model.parameters() if p.ndim == 4]
    assert convs and all(p.is_contiguous(memory_format=torch.channels_last) for p in convs)
    assert not all(p.is_contiguous() for p in convs)  # 3x3 kernels really are NHWC (1x1 ones are both)
    assert all(p.is_contiguous(memory_format=torch.channels_last) for p in fast.ema.model.parameters() if p.ndim == 4)
    assert fast.optim.optimizer.param_groups[0]["fused"] is True
    out = tmp_path / "run"
    fast.fit(out)
    model = ckpt.load(out / "model.pt", expect=ckpt.MODEL_FORMAT)
    assert model["fast_path"] == {"channels_last": True, "compile": False, "fused_adam": True, "pin_memory": False}
    assert all(torch.isfinite(v).all() for v in model["raw_model"].values() if v.is_floating_point())

    # how a run is computed is not what it is: the same run without the fast path resumes from its checkpoint,
    # with this run's (foreach) Adam
    plain = Trainer(tiny_params(train={"channels_last": False, "fused_adam": False}), "mixmatch", store, split_seed=1)
    assert plain.fingerprint == fast.fingerprint
    capsys.readouterr()
    plain.fit(out)
    assert "resuming" in capsys.readouterr().err
    group = plain.optim.optimizer.param_groups[0]
    assert group["fused"] is False and group["foreach"] is True


def same_training(a: Trainer, b: Trainer, steps: int = 3, tol: float = 1e-4) -> None:
    """Both trainers compute the same steps up to float rounding: the same losses and weights. Biases that feed a
    BN layer have a zero gradient up to rounding, which Adam turns into steps of up to +-lr: they are only checked
    to have moved by no more than that."""
    for _ in range(steps):
        torch.testing.assert_close(a.step().loss, b.step().loss, rtol=tol, atol=tol)
    lr = a.params.train.lr
    for (name, pa), pb in zip(a.model.named_parameters(), b.model.parameters(), strict=True):
        if pa.ndim > 1:
            torch.testing.assert_close(pa, pb, rtol=tol, atol=tol, msg=name)
        else:
            assert (pa - pb).abs().max() <= 2 * lr * steps, name


def test_fast_path_step_matches_the_plain_step(store):
    """channels_last + fused Adam compute the same steps as the default path, up to float rounding."""
    plain = Trainer(tiny_params(train={"precision": "fp32"}), "realmix", store, split_seed=1)
    fast = Trainer(tiny_params(train={"precision": "fp32", "channels_last": True, "fused_adam": True}), "realmix",
                   store, split_seed=1)
    same_training(plain, fast, tol=1e-5)


def test_compile_compiles_the_model_in_place_and_keeps_the_ema_eager(store, monkeypatch):
    compiled = []
    monkeypatch.setattr(torch.nn.Module, "compile", lambda self, *a, **k: compiled.append(self))
    trainer = Trainer(tiny_params(train={"compile": True}), "mixmatch", store, split_seed=1)
    assert len(compiled) == 1 and compiled[0] is trainer.model  # the EMA copy (evaluation, teacher) stays eager
    assert trainer.ema.model is not trainer.model


@pytest.mark.slow
def test_compiled_run_matches_eager(store):
    """torch.compile (inductor, needs a C compiler on CPU; ~30 s to compile here) computes the same steps,
    frozen-BN forwards included."""
    eager = Trainer(tiny_params(train={"precision": "fp32"}), "mixmatch", store, split_seed=1)
    compiled = Trainer(tiny_params(train={"precision": "fp32", "compile": True}), "mixmatch", store, split_seed=1)
    same_training(eager, compiled, tol=1e-3)
    for (name, a), b in zip(eager.model.named_buffers(), compiled.model.buffers(), strict=True):
        torch.testing.assert_close(a, b, rtol=1e-3, atol=1e-3, msg=name)  # BN statistics: only the first forward


@pytest.mark.parametrize("algorithm", list(ALGORITHMS))
def test_step_reads_no_tensor_value_on_the_host(store, monkeypatch, forbid_host_reads, algorithm):
    """Nothing in a training step (sampling, augmentation, the algorithm, backward, fused Adam, decay, EMA, the
    logged values) reads a tensor on the host: on CUDA any such read would stall the GPU queue. Checked on CPU by
    making every Python-level read raise; the loss check is the CPU path's deliberate read (CUDA defers it)."""
    trainer = Trainer(tiny_params(train={"fused_adam": True}, tsa="linear_schedule"), algorithm, store, split_seed=1)
    trainer.step()
    monkeypatch.setattr(trainer.monitor, "check_finite", lambda loss, images: None)

    forbid_host_reads("inside a training step")
    for _ in range(2):
        trainer.step()


@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA GPU")
@pytest.mark.parametrize("algorithm", ["supervised", "mixmatch", "realmix", "mean_teacher", "fixmatch", "iomatch"])
def test_cuda_step_has_no_host_sync(store, algorithm):
    trainer = Trainer(tiny_params(train={"device": "cuda"}, tsa="linear_schedule"), algorithm, store, split_seed=1)
    assert trainer.runtime.fast.pin_memory and trainer.runtime.fast.fused_adam and trainer.runtime.fast.channels_last
    trainer.step()
    torch.cuda.synchronize()
    torch.cuda.set_sync_debug_mode("error")
    try:
        for _ in range(2):
            trainer.step()
    finally:
        torch.cuda.set_sync_debug_mode("default")
