"""Bit-identical resume after SIGKILL: `realmix train` killed once before its first checkpoint and once at a
random point of training, then rerun to the end, finishes with exactly the weights (EMA and raw), metrics and
evaluation history of an uninterrupted run with the same params.

The random point is drawn from a seed that changes every run and is printed with any failure; set
REALMIX_KILL_SEED to replay a draw (the step it lands on still depends on the machine's speed).
"""

from __future__ import annotations

import json
import os
import random
import shutil
import signal
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import yaml

from realmix import checkpoint as ckpt
from realmix import params
from realmix.store import Store
from realmix.train import Trainer
from tests.conftest import ROOT, make_store
from tests.helpers import TINY, live_files, state_equal, without_timing

DATA = "toy.1@12-6"
ALGORITHM = "realmix"  # MixMatch + TSA + OOD mask: every generator of the loop is in use
RUN = Path("runs") / ALGORITHM / DATA
CMD = [sys.executable, "-m", "realmix.cli", "train", "--algorithm", ALGORITHM, "--data", DATA]
ENV = dict(os.environ, PYTHONPATH=str(ROOT), PYTHONUNBUFFERED="1")


def make_project(work: Path) -> Path:
    """A tiny split and params: ~35 steps of 6 images, a checkpoint every 2 steps, an evaluation every 5."""
    rng = np.random.default_rng(0)
    make_store(work / "data" / "splits" / DATA, {
        "label": np.repeat(np.arange(3), 4), "unlabel": rng.integers(0, 3, 40), "valid": np.arange(6) % 3,
        "test": np.arange(9) % 3}, k=3, hw=8)
    params = yaml.safe_load((ROOT / "params.yaml").read_text())
    for key, values in TINY.items():
        params[key].update(values)
    params["tsa"] = "linear_schedule"
    params["model"].update(filters=8)
    params["train"].update(train_kimg=0.2, save_kimg=0.012, report_kimg=0.03, keep_ckpt=3)
    (work / "params.yaml").write_text(yaml.safe_dump(params))
    return work


def spawn(work: Path) -> subprocess.Popen:
    return subprocess.Popen(CMD, cwd=work, env=ENV, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)


def mtime(path: Path) -> int | None:
    try:
        return path.stat().st_mtime_ns
    except FileNotFoundError:
        return None


def wait_for_fit(proc: subprocess.Popen, work: Path, timeout: float = 120) -> float:
    """Block until the run's training loop has started: its logger (re)creates live/ right before step 1.

    A rerun first deletes the logs a killed run left, so "started" is: live/ exists and is not the one that
    was there before the process was spawned.
    """
    live = work / RUN / "live"
    before = mtime(live)
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        now = mtime(live)
        if now is not None and now != before:
            return time.monotonic()
        assert proc.poll() is None, f"exited before training started:\n{proc.communicate()[1]}"
        time.sleep(0.002)
    raise AssertionError(f"training did not start within {timeout} s")


def kill(proc: subprocess.Popen) -> bool:
    """SIGKILL; returns whether the process was still running (False: it had already finished)."""
    alive = proc.poll() is None
    if alive:
        os.kill(proc.pid, signal.SIGKILL)
    proc.communicate()
    return alive


def checkpoints(work: Path) -> list[str]:
    return [p.name for p in ckpt.CheckpointDir(work / RUN / "checkpoints", 1).list()]


def test_sigkill_at_random_points_resumes_bit_identical(tmp_path: Path) -> None:
    seed = int(os.environ.get("REALMIX_KILL_SEED", time.time_ns() % 2**32))
    rng = random.Random(seed)

    # the uninterrupted reference, in this process (a separate process must reach the same bits)
    ref = make_project(tmp_path / "ref")
    start = time.monotonic()
    Trainer(params.load(ref / "params.yaml"), ALGORITHM, Store.open(ref / "data" / "splits" / DATA),
            split_seed=1).fit(ref / RUN)
    train_s = time.monotonic() - start

    work = make_project(tmp_path / "work")
    # 1. killed as soon as its training loop starts: before the first checkpoint (~2 steps later; if a busy
    # machine let that checkpoint through before the kill, the run folder is cleared and this is tried again)
    for _ in range(3):
        proc = spawn(work)
        wait_for_fit(proc, work)
        assert kill(proc)
        if not checkpoints(work):
            break
        shutil.rmtree(work / RUN)
    assert checkpoints(work) == [] and (work / RUN / "live").is_dir(), "no kill landed before the first checkpoint"
    assert not (work / RUN / "model.pt").exists()

    # 2. the rerun (starting from scratch) killed at a random point of its training phase
    delay = rng.uniform(0.05, 1.0) * train_s
    proc = spawn(work)
    time.sleep(max(0.0, wait_for_fit(proc, work) + delay - time.monotonic()))
    killed = kill(proc)
    left = checkpoints(work)
    where = (f"REALMIX_KILL_SEED={seed}: killed {delay:.3f} s into training (of ~{train_s:.2f} s), "
             f"{'while running' if killed else 'after it had finished'}, checkpoints left: {left}")
    for name in left:  # every checkpoint a killed run leaves is whole (written to a temporary, then renamed)
        ckpt.load(work / RUN / "checkpoints" / name)

    # 3. rerun to the end: it resumes from the newest checkpoint
    res = subprocess.run(CMD, cwd=work, env=ENV, capture_output=True, text=True)
    assert res.returncode == 0, f"{where}\n{res.stderr}"
    if left and killed:
        assert f"from {left[-1]}" in res.stderr, f"{where}\n{res.stderr}"

    a = ckpt.load(ref / RUN / "model.pt", expect=ckpt.MODEL_FORMAT)
    b = ckpt.load(work / RUN / "model.pt", expect=ckpt.MODEL_FORMAT)
    assert a["images"] == b["images"] == 210, where
    assert state_equal(a["model"], b["model"]), f"EMA weights differ; {where}"
    assert state_equal(a["raw_model"], b["raw_model"]), f"raw weights differ; {where}"
    assert [without_timing(r) for r in a["history"]] == [without_timing(r) for r in b["history"]], where
    assert len(a["history"]) == 7 and without_timing(a["metrics"]) == without_timing(b["metrics"]), where
    assert live_files(ref / RUN) == live_files(work / RUN), f"logged histories differ; {where}"
    summary = [json.loads((w / RUN / "live" / "metrics.json").read_text()) for w in (ref, work)]
    for s in summary:
        s["train"].pop("images_per_s")
    assert summary[0] == summary[1], where
    assert not [p for p in (work / RUN).rglob("*") if ".tmp-" in p.name], "temporary files left behind"
