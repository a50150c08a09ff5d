"""Every x86 CPU torch supports: training runs under oneDNN's AVX2 kernels (an AVX2-only CPU, emulated on any
x86 machine by capping the ISAs before torch loads), and the fp32 figures say what produced them.

The oneDNN defect this guards against (realmix/hardware.py `check_channels_last`): the backward of a 1x1
stride-2 conv with fewer than 8 input channels on a channels-last input, one thread, AVX2 kernels, corrupts the
heap. Our stores are NHWC, so before `to_input` chose NCHW memory every tiny WRN (model.filters < 8) crashed there.
"""

from __future__ import annotations

import os
import platform
import subprocess
import sys
import textwrap

import pytest
import torch

from tests.conftest import ROOT

# oneDNN's conv kernels and ATen's vector kernels as on an AVX2-only CPU (read when torch loads)
AVX2 = {"ONEDNN_MAX_CPU_ISA": "AVX2", "ATEN_CPU_CAPABILITY": "avx2"}

SHAPES = """
import torch
from realmix.hardware import describe_device, onednn_below_avx512, pick_precision
from realmix.models import to_input

assert onednn_below_avx512(), describe_device(torch.device("cpu"))
# auto is fp32 as on an AVX2-only CPU (the CPUID probe alone would still say AVX512-BF16 and pick bf16, whose
# convs never reach oneDNN's AVX2 kernels)
assert pick_precision("auto", torch.device("cpu")) is None
torch.set_num_threads(1)
for ic in (1, 2, 4, 6):  # the shapes that crash with a channels-last input (8 and more do not)
    conv = torch.nn.Conv2d(ic, 8, 1, stride=2)
    for _ in range(20):
        nhwc = torch.randint(0, 256, (4, 28, 28, ic), dtype=torch.uint8).permute(0, 3, 1, 2)  # as our stores
        x = to_input(nhwc).requires_grad_()
        conv(x).sum().backward()
print("shapes ok", describe_device(torch.device("cpu")))
"""

STEPS = """
import numpy as np
import torch
from realmix.algorithms import ALGORITHMS
from realmix.errors import RealmixError
from realmix.params import parse
from realmix.train import Trainer
from tests.conftest import make_store

store = make_store(__import__("pathlib").Path({tmp!r}) / "toy.1@12-6", {{
    "label": np.repeat(np.arange(3), 4), "unlabel": np.arange(40) % 3, "valid": np.arange(6) % 3,
    "test": np.arange(9) % 3}}, k=3, hw=16)
# filters 4 and two stages: the second stage's shortcut is a 1x1 stride-2 conv with 4 input channels
tiny = {{"model": {{"filters": 4, "repeat": 1, "scales": 2, "bn_momentum": 0.1}},
        "train": {{"batch": 6, "train_kimg": 0.05, "augment": "cifar10", "eval_batch": 7, "progress": False,
                   "threads": 1}}, "mixmatch": {{"warmup_kimg": 0.01}}, "realmix": {{"warmup_kimg": 0.01}}}}
for name in ALGORITHMS:
    trainer = Trainer(parse(tiny), name, store, split_seed=1)
    assert trainer.runtime.autocast_dtype is None  # fp32, as train.precision auto on an AVX2-only CPU
    assert not trainer.runtime.fast.channels_last  # auto: NCHW where channels-last would meet the crash
    for _ in range(10):  # heap corruption shows a few steps later
        trainer.step()
    print("stepped", name, flush=True)
try:
    Trainer(parse({{**tiny, "train": {{**tiny["train"], "channels_last": True}}}}), "supervised", store, split_seed=1)
except RealmixError as e:
    print("refused:", e)
"""


def run_avx2(code: str) -> subprocess.CompletedProcess:
    env = dict(os.environ, **AVX2, PYTHONPATH=str(ROOT))
    return subprocess.run([sys.executable, "-c", textwrap.dedent(code)], cwd=ROOT, env=env, capture_output=True,
                          text=True, timeout=600)


def explain(res: subprocess.CompletedProcess) -> str:
    return f"exit {res.returncode} (negative: killed by a signal)\n{res.stdout[-2000:]}\n{res.stderr[-3000:]}"


x86 = pytest.mark.skipif(platform.machine() not in ("x86_64", "AMD64"), reason="needs an x86 CPU (oneDNN ISA caps)")


@x86
def test_the_crashing_conv_shapes_run_through_to_input_on_avx2_kernels():
    res = run_avx2(SHAPES)
    assert res.returncode == 0, explain(res)
    assert "shapes ok cpu AVX2 oneDNN AVX2" in res.stdout


@x86
def test_every_algorithm_steps_a_narrow_wrn_on_avx2_kernels_and_channels_last_is_refused_not_a_crash(tmp_path):
    res = run_avx2(STEPS.format(tmp=str(tmp_path)))
    assert res.returncode == 0, explain(res)
    from realmix.algorithms import ALGORITHMS

    assert [line.split()[1] for line in res.stdout.splitlines() if line.startswith("stepped")] == list(ALGORITHMS)
    assert ("refused: params: train.channels_last=true with a strided 1x1 conv of 4 input channels (model.filters "
            "< 8) crashes oneDNN on this CPU (no AVX-512)") in res.stdout


def conv_inputs(model) -> tuple[list[bool], object]:
    """Record, for every conv call of `model`, whether its input is NCHW-contiguous; returns (list, remover)."""
    seen: list[bool] = []
    hooks = [m.register_forward_pre_hook(lambda _m, args: seen.append(args[0].is_contiguous()))
             for m in model.modules() if isinstance(m, torch.nn.Conv2d)]
    return seen, lambda: [h.remove() for h in hooks]


def test_every_conv_sees_nchw_memory_unless_channels_last_is_on(store):
    """Deterministic on any CPU: our NHWC stores reach the network as NCHW memory in training, the EMA's BN
    re-estimation, evaluation and prediction (so `train.channels_last: false` means what it says)."""
    from realmix.ema import with_own_bn_stats
    from realmix.inference import predict_outputs
    from realmix.params import parse
    from realmix.train import Trainer

    p = parse({"model": {"filters": 4, "repeat": 1, "scales": 2}, "train": {"batch": 6, "threads": 1,
                                                                         "channels_last": False}})
    trainer = Trainer(p, "mixmatch", store, split_seed=1)
    seen, remove = conv_inputs(trainer.model)
    trainer.step()
    predict_outputs(trainer.model, store.subset("test").images, batch=4)
    remove()
    bn = with_own_bn_stats(trainer.model, store.subset("label").images, batch=5, device=torch.device("cpu"))
    seen_bn, remove = conv_inputs(bn)
    predict_outputs(bn, store.subset("valid").images, batch=4)
    remove()
    assert seen and seen_bn and all(seen) and all(seen_bn)

    wide = parse({"model": {"filters": 8, "repeat": 1, "scales": 2}, "train": {"batch": 6, "threads": 1,
                                                                            "channels_last": True}})
    fast = Trainer(wide, "supervised", store, split_seed=1)
    seen, remove = conv_inputs(fast.model)
    fast.step()
    remove()
    # the stem reads NCHW input and computes channels-last (its weights' layout); so does every later conv
    assert seen[0] and not any(seen[1:])


def test_channels_last_auto_is_on_for_cpus_unless_it_meets_the_crash(store, monkeypatch):
    """auto: channels-last on CPUs (measured faster: docs/benchmarks.md, "The CPU fast path"); NCHW for a narrow WRN
    where oneDNN runs below AVX-512; `true` there is refused in one line. The ISA is faked here (the subprocess
    tests above run the real AVX2 kernels)."""
    from realmix import hardware
    from realmix.errors import RealmixError
    from realmix.params import parse
    from realmix.train import Trainer

    def fast(filters: int, channels_last="auto"):
        p = parse({"model": {"filters": filters, "repeat": 1, "scales": 2},
                   "train": {"batch": 6, "threads": 1, "channels_last": channels_last}})
        return Trainer(p, "supervised", store, split_seed=1).runtime.fast.channels_last

    for below in (False, True):
        monkeypatch.setattr(hardware, "onednn_below_avx512", lambda below=below: below)
        assert fast(8) and fast(4) == (not below) and not fast(4, False)
    with pytest.raises(RealmixError, match=r"train.channels_last=true with a strided 1x1 conv of 4 input channels"):
        fast(4, True)
    assert fast(8, True)
