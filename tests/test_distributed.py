"""Data-parallel training: 2 gloo processes on CPU (identical parameters, rank-0-only outputs, bit-identical
resume), resume of a 2-process checkpoint in 1 process, the global batch split, and the torchrun launch."""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import torch
import torch.distributed as dist
import torch.multiprocessing as mp
import yaml

from realmix import checkpoint as ckpt
from realmix import distributed
from realmix.distributed import Dist
from realmix.errors import RealmixError
from realmix.store import Store
from realmix.train import Trainer
from tests.conftest import ROOT, make_store
from tests.helpers import TINY, state_equal, tiny_params

SPLIT = "toy.1@12-6"
# TINY (tests/helpers.py) with a global batch 12 = 6 per rank (>= the nu + 1 = 3 interleave groups); 9 steps;
# reports and checkpoints at 48, 84 and 108 images
DIST = {
    "train": {"batch": 12, "train_kimg": 0.1, "report_kimg": 0.04, "save_kimg": 0.04, "keep_ckpt": 3},
    "tsa": "linear_schedule",
}


def dist_params(**train):
    return tiny_params(train={**DIST["train"], **train}, tsa=DIST["tsa"])


def make_toy(root: Path) -> Store:
    rng = np.random.default_rng(0)
    return make_store(root / SPLIT, {"label": np.repeat(np.arange(3), 4), "unlabel": rng.integers(0, 3, 40),
                                     "valid": np.arange(6) % 3, "test": np.arange(9) % 3}, k=3, hw=8)


def _worker(rank: int, world: int, root: str, jobs: list[tuple[str, int]]) -> None:
    """One rank. Each job (out, cut_at): train realmix into root/out (rank 0) or root/out-rank<r> (the others:
    must stay unwritten), interrupted on every rank at step `cut_at` if > 0, then save this rank's weights for the
    test as root/<out>.<job index>.rank<r>.pt. One process group for all jobs: a spawn costs seconds."""
    root_path = Path(root)
    os.environ["LOCAL_RANK"] = str(rank)
    torch.set_num_threads(1)
    dist.init_process_group("gloo", init_method=f"file://{root_path / 'rendezvous'}", rank=rank, world_size=world)
    try:
        for i, (out, cut_at) in enumerate(jobs):
            trainer = Trainer(dist_params(), "realmix", Store.open(root_path / SPLIT), split_seed=1)
            assert trainer.runtime.dist == Dist(rank, world, rank) and trainer.feed.local_batch == 12 // world
            calls: list[int] = []  # the image clock at each step: where the job started, where it was cut
            step = trainer.step

            def counted_step(step=step, calls=calls, cut_at=cut_at, trainer=trainer):
                calls.append(trainer.images)
                if len(calls) == cut_at:
                    raise KeyboardInterrupt
                return step()

            trainer.step = counted_step  # type: ignore[method-assign]
            try:
                trainer.fit(root_path / (out if rank == 0 else f"{out}-rank{rank}"))
            except KeyboardInterrupt:
                pass
            torch.save({"params": {k: v.detach() for k, v in trainer.model.named_parameters()},
                        "buffers": dict(trainer.model.named_buffers()),
                        "ema": {k: v.detach() for k, v in trainer.ema.model.named_parameters()},
                        "steps_from": calls[0], "steps": len(calls)},
                       root_path / f"{out}.{i}.rank{rank}.pt")
    finally:
        dist.destroy_process_group()


@pytest.fixture(scope="module")
def two_procs(tmp_path_factory) -> tuple[Path, dict[str, list[dict]]]:
    """2 processes: an uninterrupted realmix run ("full"); one cut after its checkpoint at 48 images (step 6 of 9,
    before the one at 84) then rerun ("cut", "resumed"); and ("from1") a 1-process checkpoint finished in 2.
    (root, {job: the final weights of each rank})."""
    root = tmp_path_factory.mktemp("ddp")
    store = make_toy(root)
    # and "from1": the checkpoint at 48 images of a 1-process run, finished in 2 processes
    Trainer(dist_params(), "realmix", store, split_seed=1, dist=Dist()).fit(root / "one")
    (root / "from1" / "checkpoints").mkdir(parents=True)
    shutil.copy(root / "one" / "checkpoints" / "ckpt-000000000048.pt", root / "from1" / "checkpoints")
    jobs = [("full", 0), ("cut", 6), ("cut", 0), ("from1", 0)]
    mp.spawn(_worker, args=(2, str(root), jobs), nprocs=2, join=True)
    weights = [[torch.load(root / f"{out}.{i}.rank{r}.pt", weights_only=True) for r in range(2)]
               for i, (out, _) in enumerate(jobs)]
    return root, dict(zip(("full", "cut", "resumed", "from1"), weights, strict=True))


def test_two_processes_keep_identical_parameters_and_only_rank0_writes(two_procs):
    root, weights = two_procs
    r0, r1 = weights["full"]
    assert state_equal(r0["params"], r1["params"]) and state_equal(r0["ema"], r1["ema"])
    # BN statistics are per rank (no SyncBN): each rank normalised its own share of the batch
    means = [k for k in r0["buffers"] if k.endswith("running_mean")]
    assert means and not all(torch.equal(r0["buffers"][k], r1["buffers"][k]) for k in means)
    assert not (root / "full-rank1").exists()  # rank 1 wrote nothing: no checkpoints, logs or model
    run = root / "full"
    assert {p.name for p in run.iterdir()} == {"checkpoints", "live", "tensorboard", "model.pt"}
    assert [p.name for p in ckpt.CheckpointDir(run / "checkpoints", 3).list()] == [
        "ckpt-000000000048.pt", "ckpt-000000000084.pt", "ckpt-000000000108.pt"]
    model = ckpt.load(run / "model.pt", expect=ckpt.MODEL_FORMAT)
    assert model["world_size"] == 2 and model["images"] == 108
    assert [r["step"] for r in model["history"]] == [48, 84, 108]
    assert state_equal({k: model["raw_model"][k] for k in r0["params"]}, r0["params"])
    rows = (run / "live" / "plots" / "metrics" / "test" / "accuracy.tsv").read_text().splitlines()
    assert [int(r.split()[0]) for r in rows[1:]] == [48, 84, 108]
    state = ckpt.load(run / "checkpoints" / "ckpt-000000000048.pt")
    assert state["world_size"] == 2 and len(state["rank_rng"]) == 2
    assert state["rank_rng"][0]["mixup"] != state["rank_rng"][1]["mixup"]  # each rank its own MixUp draws


def test_two_process_run_resumes_bit_identically_in_two_processes(two_procs):
    root, weights = two_procs
    full = weights["full"][0]
    assert [p.name for p in ckpt.CheckpointDir(root / "cut-rank1", 3).list()] == []
    r0, r1 = weights["resumed"]
    assert [weights["cut"][0][k] for k in ("steps_from", "steps")] == [0, 6]  # cut in its 6th step
    assert [r0[k] for k in ("steps_from", "steps")] == [48, 5]  # resumed from the checkpoint at 48 images
    assert state_equal(r0["params"], full["params"]) and state_equal(r1["params"], full["params"])
    assert state_equal(r0["ema"], full["ema"])
    a = ckpt.load(root / "full" / "model.pt", expect=ckpt.MODEL_FORMAT)
    b = ckpt.load(root / "cut" / "model.pt", expect=ckpt.MODEL_FORMAT)
    assert state_equal(a["model"], b["model"]) and [r["step"] for r in b["history"]] == [48, 84, 108]
    assert a["metrics"] == {**b["metrics"], "train/images_per_s": a["metrics"]["train/images_per_s"]}


def test_one_process_checkpoint_resumes_in_two_processes(two_procs):
    root, weights = two_procs
    r0, r1 = weights["from1"]
    assert [r0[k] for k in ("steps_from", "steps")] == [48, 5]
    assert state_equal(r0["params"], r1["params"]) and state_equal(r0["ema"], r1["ema"])
    model = ckpt.load(root / "from1" / "model.pt", expect=ckpt.MODEL_FORMAT)
    assert model["world_size"] == 2 and [r["step"] for r in model["history"]] == [48, 84, 108]
    assert not (root / "from1-rank1").exists()


def test_two_process_checkpoint_resumes_in_one_process(two_procs, tmp_path, capsys):
    root, _ = two_procs
    out = tmp_path / "run"
    (out / "checkpoints").mkdir(parents=True)
    shutil.copy(root / "full" / "checkpoints" / "ckpt-000000000048.pt", out / "checkpoints")
    store = Store.open(root / SPLIT)
    res = Trainer(dist_params(), "realmix", store, split_seed=1, dist=Dist()).fit(out)
    assert "from ckpt-000000000048.pt (48 images, saved by 2 process(es))" in capsys.readouterr().err
    model = ckpt.load(out / "model.pt", expect=ckpt.MODEL_FORMAT)
    assert model["world_size"] == 1 and model["images"] == 108 and res["step"] == 108
    assert [r["step"] for r in model["history"]] == [48, 84, 108]  # the 2-process evaluation at 48 is kept
    assert all(torch.isfinite(v).all() for v in model["raw_model"].values() if v.is_floating_point())
    full_model = ckpt.load(root / "full" / "model.pt", expect=ckpt.MODEL_FORMAT)
    assert not state_equal(model["raw_model"], full_model["raw_model"])

    # the data order is global: one process continues with exactly the images the two ranks would have drawn
    state = ckpt.load(root / "full" / "checkpoints" / "ckpt-000000000048.pt")
    batches = []
    for d in (Dist(), Dist(0, 2, 0), Dist(1, 2, 1)):
        trainer = Trainer(dist_params(), "realmix", store, split_seed=1, dist=d)
        trainer.load_state_dict(state, Path("ckpt"))
        batches.append(trainer.feed.next_batch().y)
    assert torch.equal(batches[0], torch.cat(batches[1:]))


def test_global_batch_is_split_between_ranks(tmp_path):
    store = make_toy(tmp_path)
    one = Trainer(dist_params(), "mixmatch", store, split_seed=1, dist=Dist())
    ranks = [Trainer(dist_params(), "mixmatch", store, split_seed=1, dist=Dist(r, 2, r)) for r in (0, 1)]
    for _ in range(3):  # every step: rank 0 takes the first half of the global batch, rank 1 the second
        b = one.feed.next_batch()
        parts = [t.feed.next_batch() for t in ranks]
        assert torch.equal(b.y, torch.cat([p.y for p in parts]))
        assert [len(p.x) for p in parts] == [6, 6] and all(len(u) == 6 for p in parts for u in p.u)
    # the same weights on every rank, different augmentation and MixUp draws
    assert state_equal(dict(ranks[0].model.state_dict()), dict(ranks[1].model.state_dict()))
    assert ranks[0].feed.aug_gen.initial_seed() != ranks[1].feed.aug_gen.initial_seed()
    assert ranks[0].algo.rng.random() != ranks[1].algo.rng.random()


@pytest.mark.parametrize("batch, world, message", [
    (12, 5, r"train.batch=12 is not divisible by the 5 processes"),
    (4, 2, r"train.batch=4 \(2 per process with 2 processes\): .*nu \+ 1 = 3 interleave groups"),
])
def test_batch_that_cannot_be_shared(tmp_path, batch, world, message):
    with pytest.raises(RealmixError, match=message):
        Trainer(dist_params(batch=batch), "mixmatch", make_toy(tmp_path), split_seed=1, dist=Dist(0, world, 0))


def test_world_from_torchrun_environment(monkeypatch):
    for var in ("RANK", "WORLD_SIZE", "LOCAL_RANK"):
        monkeypatch.delenv(var, raising=False)
    assert distributed.from_env() == Dist() and not distributed.launched()
    monkeypatch.setenv("WORLD_SIZE", "8")
    monkeypatch.setenv("RANK", "5")
    monkeypatch.setenv("LOCAL_RANK", "1")  # second node of 4 GPUs each
    assert distributed.from_env() == Dist(5, 8, 1) and distributed.launched()
    monkeypatch.setenv("RANK", "8")
    with pytest.raises(RealmixError, match="launch with torchrun"):
        distributed.from_env()


def test_torchrun_argv_is_a_list():
    argv = distributed.torchrun_argv(4, ["--params", "my params.yaml", "train", "--data", "a b"])
    assert argv[:3] == [sys.executable, "-m", "torch.distributed.run"]
    assert argv[3:] == ["--standalone", "--nproc-per-node=4", "-m", "realmix.cli", "--params", "my params.yaml",
                        "train", "--data", "a b"]


def test_train_command_with_nproc_2_runs_under_torchrun(tmp_path):
    """`realmix train` (what the train stage runs) with train.nproc: 2 relaunches itself in 2 gloo processes."""
    make_toy(tmp_path / "data" / "splits")
    params = yaml.safe_load((ROOT / "params.yaml").read_text())
    for key, values in [*TINY.items(), *DIST.items()]:
        if isinstance(values, dict):
            params[key].update(values)
        else:
            params[key] = values
    params["train"].update(nproc=2)
    (tmp_path / "params.yaml").write_text(yaml.safe_dump(params))
    env = dict(os.environ, PYTHONPATH=str(ROOT), OMP_NUM_THREADS="1")
    for var in ("RANK", "WORLD_SIZE", "LOCAL_RANK"):
        env.pop(var, None)
    res = subprocess.run([sys.executable, "-m", "realmix.cli", "train", "--algorithm", "mixmatch", "--data", SPLIT],
                         cwd=tmp_path, env=env, capture_output=True, text=True, timeout=300)
    assert res.returncode == 0, res.stderr
    assert "launching 2 processes" in res.stderr and "--nproc-per-node=2" in res.stderr
    lines = [line for line in res.stdout.splitlines() if "test/accuracy" in line]
    assert len(lines) == 1 and lines[0].startswith(f"runs/mixmatch/{SPLIT}:")  # printed by rank 0 only
    model = ckpt.load(tmp_path / "runs" / "mixmatch" / SPLIT / "model.pt", expect=ckpt.MODEL_FORMAT)
    assert model["world_size"] == 2 and model["images"] == 108
