"""Crash-safe stages: every stage type, SIGKILLed mid-run under `dvc repro`, leaves its outputs whole or absent,
and the next `dvc repro` completes with the same results as an uninterrupted pipeline.

The kill lands while the stage writes (as soon as one of its temporary outputs appears, plus a random jitter),
or at a random point of the stage's run if no write is seen in time. The seed changes every run and is printed
with any failure; REALMIX_CRASH_SEED replays a draw.

What "whole" means per output: a store verifies against the sha256 in its manifest, a checkpoint or model.pt
loads, JSON parses, a PNG decodes, a CSV/Markdown file ends with its last line. A run's live/ (dvclive) and
tensorboard/ folders are logs that grow while it trains (whole rows; metrics.json is renamed into place); DVC
deletes them before rerunning the stage, and the resumed run rewrites them from the checkpoint's history.

A SIGKILLed `dvc repro` leaves its PID in `.dvc/tmp/rwlock`. The next DVC command that needs a conflicting lock
finds the PID dead, warns "... had been killed. Auto removed it from the lock file." and goes on (DVC's rwlock
checks PIDs); read locks of dead PIDs on dependencies may stay in the file, where they block nobody. Nothing has to
be cleaned by hand. (`.dvc/tmp/lock` is an OS file lock, released when the process dies.) One window is DVC's own:
it rewrites dvc.lock in place, so a kill during that write (a few ms after each stage) can leave it cut short;
`git checkout dvc.lock` (or deleting it) and `dvc repro` recover, rerunning what it no longer records.
"""

from __future__ import annotations

import hashlib
import json
import os
import random
import re
import shutil
import signal
import subprocess
import sys
import threading
import time
from pathlib import Path

import numpy as np
import psutil
import pytest
import yaml
from PIL import Image

from realmix import checkpoint as ckpt
from realmix.store import MANIFEST, Store
from realmix.train import Trainer
from tests.conftest import ROOT, make_store, run, tree_hash
from tests.helpers import live_files, state_equal, tiny_params, without_timing

RUN = "runs/supervised/digits.1@30-100"
# stage -> its outputs (as in dvc.yaml for the params below), in pipeline order; each one is killed once
STAGES: dict[str, list[str]] = {
    "download": ["data/datasets/digits"],
    "rename": ["data/renamed", "data/rename_map.csv"],
    "split@1-30": ["data/splits/digits.1@30-100"],
    "mismatch@1-0": ["data/splits/digits6_mismatch0.1@30-100"],
    "preaugment@1-30-2": ["data/splits/digits_aug2.1@30-100"],
    "train@1-30-supervised": [f"{RUN}/model.pt", f"{RUN}/checkpoints", f"{RUN}/live", f"{RUN}/tensorboard"],
    "evaluate@1-30-supervised": [f"{RUN}/eval", "metrics/runs/supervised/digits.1@30-100/accuracy.json"],
    "summary": ["metrics/summary", "metrics/summary.md", "metrics/summary.png"],
}
# wall-clock values and TensorBoard event files differ between any two runs; everything else must not
TIMED = {f"{RUN}/model.pt", f"{RUN}/live", f"{RUN}/tensorboard"}


def dvc_env() -> dict[str, str]:
    env = dict(os.environ, DVC_NO_ANALYTICS="1", PYTHONUNBUFFERED="1",
               GIT_AUTHOR_NAME="t", GIT_AUTHOR_EMAIL="t@t", GIT_COMMITTER_NAME="t", GIT_COMMITTER_EMAIL="t@t")
    env["PATH"] = f"{Path(sys.executable).parent}{os.pathsep}{env.get('PATH', '')}"
    return env


def toy_repo(proj: Path) -> Path:
    """The pipeline at toy size in a fresh git + DVC repository."""
    data = yaml.safe_load((proj / "params.yaml").read_text())
    data["split"].update(seeds=[1], sizes=[30], nvalid=100)
    data["mismatch"].update(levels=[0])
    data["preaugment"]["copies"] = [2]
    if "mismatch_copies" in data["preaugment"]:  # no pre-augmented mismatch splits: nothing would train on them
        data["preaugment"]["mismatch_copies"] = []
    data["model"].update(filters=4, repeat=1)
    data["train"].update(algorithms=["supervised"], aug_algorithms=[], mismatch_algorithms=[],
                         mismatch_aug_algorithms=[], train_kimg=0.25, report_kimg=0.125, save_kimg=0.0625,
                         batch=16, threads=1, progress=False)
    (proj / "params.yaml").write_text(yaml.safe_dump(data, sort_keys=False))
    run(["git", "init", "-q"], proj)
    run(["dvc", "init", "-q"], proj)
    run(["git", "add", "-A"], proj)
    run(["git", "commit", "-qm", "init"], proj)
    return proj


class Repro:
    """`dvc repro ARGS` in its own session (so that SIGKILL reaches DVC and the stage it runs), its output
    read line by line with the time each stage started."""

    def __init__(self, proj: Path, *args: str):
        self.proc = subprocess.Popen(["dvc", "repro", *args], cwd=proj, env=dvc_env(), stdout=subprocess.PIPE,
                                     stderr=subprocess.STDOUT, text=True, start_new_session=True)
        self.lines: list[str] = []
        self.started: dict[str, float] = {}
        self.lock_update_after: dict[str, bool] = {}
        self._reader = threading.Thread(target=self._read, daemon=True)
        self._reader.start()

    def _read(self) -> None:
        for line in self.proc.stdout:
            self.lines.append(line)
            if m := re.search(r"Running stage '([^']+)'", line):
                self.started[m.group(1)] = time.monotonic()
            elif "Updating lock file" in line:
                for stage in self.started:
                    self.lock_update_after[stage] = True

    def kill(self) -> bool:
        """SIGKILL the whole session; returns whether it was still running."""
        alive = self.proc.poll() is None
        if alive:
            os.killpg(self.proc.pid, signal.SIGKILL)
        self.wait()
        return alive

    def wait(self) -> int:
        self.proc.wait()
        self._reader.join()
        return self.proc.returncode

    @property
    def output(self) -> str:
        return "".join(self.lines)


def stage_times(repro: Repro) -> dict[str, float]:
    """How long each stage of a completed `dvc repro` took (from its start to the next stage's)."""
    order = sorted(repro.started, key=repro.started.get)
    ends = [repro.started[s] for s in order[1:]] + [time.monotonic()]
    return {s: end - repro.started[s] for s, end in zip(order, ends, strict=True)}


def temporaries(proj: Path, outputs: list[str]) -> set[Path]:
    """Temporary siblings being written for these outputs (realmix.atomic names them `.<name>.tmp-*`),
    including checkpoints written inside a run's checkpoints/ folder."""
    found = set()
    for out in outputs:
        path = proj / out
        found.update(path.parent.glob(f".{path.name}.tmp-*"))
        if path.name == "checkpoints" and path.is_dir():
            found.update(path.glob(".ckpt-*.tmp-*"))
    return found


def assert_whole(path: Path) -> None:
    """An output that exists must be complete: a store verifies against its manifest hashes, and every file
    parses as its type (TensorBoard event files, appended record by record, are not checked)."""
    if path.is_dir():
        if (path / MANIFEST).is_file():
            Store.open(path).verify()
        for p in path.rglob("*"):
            if ".tmp-" in p.name:  # in checkpoints/ each checkpoint is the unit written to a temporary
                assert p.parent.name == "checkpoints", f"{p}: a temporary inside an output"
            elif p.is_file():
                assert_whole(p)
        return
    if path.suffix == ".pt":
        ckpt.load(path, expect=ckpt.MODEL_FORMAT if path.name == "model.pt" else ckpt.CKPT_FORMAT)
    elif path.suffix == ".json":
        json.loads(path.read_text())
    elif path.suffix == ".npy":
        np.load(path, allow_pickle=False)
    elif path.suffix == ".png":
        with Image.open(path) as im:
            im.load()
    elif path.suffix == ".tsv":  # dvclive histories: whole rows only
        rows = path.read_text().split("\n")
        assert rows[-1] == "" and len({r.count("\t") for r in rows[:-1]}) == 1, path
    elif path.suffix in (".csv", ".md"):
        assert path.read_text().endswith("\n"), path


def watch(repro: Repro, proj: Path) -> dict[str, float]:
    """Wait for a `dvc repro` to end, noting how long after its start each stage began to write an output."""
    seen: dict[str, float] = {}
    while repro.proc.poll() is None:
        for stage, outputs in STAGES.items():
            if stage not in seen and stage in repro.started and temporaries(proj, outputs):
                seen[stage] = time.monotonic() - repro.started[stage]
        time.sleep(0.002)
    repro.wait()
    return seen


def kill_mid_run(proj: Path, stage: str, rng: random.Random, at_s: float) -> tuple[str, list[str]]:
    """Start `dvc repro STAGE` and SIGKILL it while STAGE runs: once one of its temporary outputs appears (plus a
    random jitter), or at a random time around `at_s` after the stage started (when, in the reference, it began
    writing). If the stage ends first, it is forced to run again. Returns what happened and DVC's outputs."""
    watched = STAGES[stage]
    if stage.startswith("train@"):  # a random checkpoint (or model.pt) of the run, not always the first
        watched = [rng.choice([*(f"{RUN}/checkpoints/ckpt-{n:012d}.pt" for n in (64, 128, 192, 256)),
                               f"{RUN}/model.pt"])]
    outputs, tried = [], []
    for attempt in range(3):
        before = temporaries(proj, STAGES[stage])
        fallback = rng.uniform(0.5, 1.2) * at_s if attempt == 0 else rng.uniform(0.2, 0.8) * at_s
        jitter = rng.uniform(0.0, 0.02)
        repro = Repro(proj, stage) if attempt == 0 else Repro(proj, "--force", "--single-item", stage)
        deadline = time.monotonic() + 300
        how = f"not killed: the stage ended first (fallback {fallback:.2f} s)"
        while repro.proc.poll() is None and time.monotonic() < deadline:
            start = repro.started.get(stage)
            if start is not None and not repro.lock_update_after.get(stage):
                new = temporaries(proj, watched) - before
                if new:
                    time.sleep(jitter)
                    how = f"killed {jitter * 1000:.0f} ms after {sorted(p.name for p in new)[0]} appeared"
                    break
                if time.monotonic() - start >= fallback:
                    how = f"killed {fallback:.2f} s into the stage"
                    break
            time.sleep(0.001)
        alive = repro.kill()
        outputs.append(repro.output)
        tried.append(how)
        if alive and stage in repro.started and not repro.lock_update_after.get(stage):
            return f"{stage}: {', then '.join(tried)}", outputs
    raise AssertionError(f"{stage}: never killed while running ({tried}):\n{repro.output[-3000:]}")


def outputs_equal(a: Path, b: Path) -> bool:
    """Byte-identical files (DVC's own .gitignore aside)."""
    ha = tree_hash(a) if a.is_dir() else {"": hashlib.sha256(a.read_bytes()).hexdigest()}
    hb = tree_hash(b) if b.is_dir() else {"": hashlib.sha256(b.read_bytes()).hexdigest()}
    ha.pop(".gitignore", None)
    hb.pop(".gitignore", None)
    return ha == hb


@pytest.mark.e2e
def test_every_stage_killed_mid_run_then_repro_completes_identically(project: Path, tmp_path: Path) -> None:
    if shutil.which("git") is None:
        pytest.skip("git is required")
    seed = int(os.environ.get("REALMIX_CRASH_SEED", time.time_ns() % 2**32))
    rng = random.Random(seed)
    work = Path(shutil.copytree(project, tmp_path / "work"))
    ref = toy_repo(project)
    reference = Repro(ref)
    writes = watch(reference, ref)
    assert reference.proc.returncode == 0, reference.output
    budget = stage_times(reference)

    toy_repo(work)
    log, outputs = [f"REALMIX_CRASH_SEED={seed}"], []
    for stage in STAGES:
        at_s = budget[stage] if stage.startswith("train@") else writes.get(stage, budget[stage])
        what, out = kill_mid_run(work, stage, rng, at_s)
        log.append(what)
        outputs += out
        for path in STAGES[stage]:  # whole or absent; temporaries only as hidden siblings
            if (work / path).exists():
                assert_whole(work / path)
    where = "; ".join(log)

    final = Repro(work)
    assert final.wait() == 0, f"{where}\n{final.output}"
    outputs.append(final.output)
    # DVC found the dead PIDs that the kills left in its rwlock and released their locks itself
    assert any("had been killed. Auto removed it from the lock file" in o for o in outputs), where
    # what DVC keeps are read locks of dead PIDs: they block nobody (a writer would release them as above)
    rwlock = json.loads((work / ".dvc" / "tmp" / "rwlock").read_text())
    assert not rwlock.get("write"), f"{rwlock}; {where}"
    assert not any(psutil.pid_exists(i["pid"]) for infos in rwlock.get("read", {}).values() for i in infos), where
    assert "up to date" in run(["dvc", "status"], work).stdout, where
    leftovers = [p for p in work.rglob("*") if ".tmp-" in p.name and not {".dvc", ".git"} & set(p.parts)]
    assert not leftovers, f"temporaries left after the rerun: {leftovers}; {where}"

    # the same results as the uninterrupted pipeline: byte-identical outputs, except wall-clock values
    for path in (p for paths in STAGES.values() for p in paths):
        if path not in TIMED and not path.endswith("checkpoints"):
            assert outputs_equal(ref / path, work / path), f"{path} differs from the uninterrupted run; {where}"
    a = ckpt.load(ref / RUN / "model.pt", expect=ckpt.MODEL_FORMAT)
    b = ckpt.load(work / RUN / "model.pt", expect=ckpt.MODEL_FORMAT)
    assert state_equal(a["model"], b["model"]) and state_equal(a["raw_model"], b["raw_model"]), where
    assert [without_timing(r) for r in a["history"]] == [without_timing(r) for r in b["history"]], where
    assert live_files(ref / RUN) == live_files(work / RUN), where
    print(where)  # which point of each stage the kills hit (shown with -s or on failure)


def test_truncated_newest_checkpoint_is_skipped_for_the_previous_one(tmp_path: Path, capsys) -> None:
    """A checkpoint cut short (by a crash outside the atomic write, a full disk, a bad copy) is reported and
    skipped; the run resumes from the one before and still ends bit-identical."""
    rng = np.random.default_rng(0)
    store = make_store(tmp_path / "toy.1@12-6", {
        "label": np.repeat(np.arange(3), 4), "unlabel": rng.integers(0, 3, 40), "valid": np.arange(6) % 3,
        "test": np.arange(9) % 3}, k=3, hw=8)
    Trainer(tiny_params(), "mixmatch", store, split_seed=1).fit(tmp_path / "full")
    cut = tmp_path / "cut"
    Trainer(tiny_params(), "mixmatch", store, split_seed=1).fit(cut)
    (cut / "model.pt").unlink()
    older, newest = ckpt.CheckpointDir(cut / "checkpoints", 2).list()
    newest.write_bytes(newest.read_bytes()[: newest.stat().st_size // 2])
    stale = cut / "checkpoints" / f".{newest.name}.tmp-1-deadbeef"  # what a writer killed mid-save leaves
    stale.write_bytes(b"half")
    capsys.readouterr()

    path, _ = ckpt.CheckpointDir(cut / "checkpoints", 2).latest()
    assert path == older and f"warning: skipping {newest}: not a readable checkpoint" in capsys.readouterr().err
    Trainer(tiny_params(), "mixmatch", store, split_seed=1).fit(cut)
    assert f"resuming {cut} from {older.name}" in capsys.readouterr().err
    a = ckpt.load(tmp_path / "full" / "model.pt", expect=ckpt.MODEL_FORMAT)
    b = ckpt.load(cut / "model.pt", expect=ckpt.MODEL_FORMAT)
    assert state_equal(a["model"], b["model"]) and state_equal(a["raw_model"], b["raw_model"])
    ckpt.load(newest)  # rewritten whole
    assert not stale.exists()


def test_killed_rewrite_leaves_the_previous_output(tmp_path: Path) -> None:
    """`realmix split` SIGKILLed while it writes over an existing split: the previous split stays, byte for byte
    (or, if the kill falls between the two renames of the swap, none is there); the rerun writes the new one."""
    seed = int(os.environ.get("REALMIX_CRASH_SEED", time.time_ns() % 2**32))
    rng = random.Random(seed)
    proj = tmp_path / "proj"
    data = yaml.safe_load((ROOT / "params.yaml").read_text())
    data["dataset"]["name"] = "toy"
    data["split"].update(nvalid=100, label_size=None)
    proj.mkdir()
    (proj / "params.yaml").write_text(yaml.safe_dump(data))
    make_store(proj / "data/datasets/toy", {"train": np.arange(20000) % 10, "test": np.arange(100) % 10}, hw=16)
    out = proj / "data/splits/toy.1@30-100"
    make_store(out, {"label": np.arange(30) % 10, "test": np.arange(10)}, hw=16, seed=7)  # the previous split
    old = tree_hash(out)
    cmd = [sys.executable, "-m", "realmix.cli", "split", "--seed", "1", "--size", "30"]
    env = dict(os.environ, PYTHONPATH=str(ROOT))
    proc = subprocess.Popen(cmd, cwd=proj, env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE)
    jitter = rng.uniform(0.0, 0.05)
    while proc.poll() is None and not list(out.parent.glob(f".{out.name}.tmp-*")):
        time.sleep(0.001)
    time.sleep(jitter)
    alive = proc.poll() is None
    proc.kill()
    proc.communicate()
    where = f"REALMIX_CRASH_SEED={seed}: killed {jitter * 1000:.0f} ms into the write"
    assert alive, f"{where}: the split finished before the kill"
    if out.exists() and tree_hash(out) != old:
        # alive at the poll, yet past its swap: the kill fell while the process was exiting (seen under load,
        # REALMIX_CRASH_SEED=2343620175). Then the new split must be whole: never a mix of the two.
        Store.open(out).verify()
        assert Store.open(out).subset("valid").count == 100, where
    res = subprocess.run(cmd, cwd=proj, env=env, capture_output=True, text=True)
    assert res.returncode == 0, res.stderr
    Store.open(out).verify()
    assert Store.open(out).subset("valid").count == 100
    assert not list(out.parent.glob(".*.tmp-*")), "temporaries left after the rerun"
