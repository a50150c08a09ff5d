"""Parallel experiments and sharing them: two `dvc exp run --queue` experiments run by `dvc queue start -j 2`,
pushed to a git remote and a local-directory DVC remote, pulled into a fresh clone. Minutes of CPU: marked slow
(not run by `make test`; `pytest -m slow tests/test_parallel_experiments.py`)."""

from __future__ import annotations

import json
import shutil
import time
from pathlib import Path

import pytest
import yaml

from tests.conftest import run
from tests.helpers import set_params

pytestmark = [pytest.mark.slow, pytest.mark.e2e]
RUN = "runs/supervised/digits.1@30-100"  # metrics/<RUN>/accuracy.json: its DVC metrics


def wait_for_queue(repo: Path, timeout: float = 900) -> str:
    """Poll `dvc queue status` until nothing is queued or running; the last status table."""
    deadline = time.time() + timeout
    while time.time() < deadline:
        status = run(["dvc", "queue", "status"], repo).stdout
        if not any(word in status for word in ("Queued", "Running")):
            return status
        time.sleep(2)
    raise AssertionError(f"queue still busy after {timeout} s:\n{status}")


def experiments(repo: Path) -> dict[str, dict]:
    """{experiment name: its params and metrics} from `dvc exp show --json`."""
    rows = json.loads(run(["dvc", "exp", "show", "--json"], repo).stdout)
    out = {}
    for commit in rows:
        for exp in commit.get("experiments") or []:
            for rev in exp.get("revs", []):
                if rev.get("name"):
                    out[rev["name"]] = rev["data"]
    return out


def test_queued_experiments_run_in_parallel_and_are_shared_through_a_remote(project, tmp_path):
    if shutil.which("git") is None:
        pytest.skip("git is required")
    repo = project
    set_params(repo, split={"seeds": [1], "sizes": [30], "nvalid": 100}, mismatch={"levels": []},
               preaugment={"copies": [], "mismatch_copies": []}, model={"filters": 4, "repeat": 1},
               train={"algorithms": ["supervised"], "aug_algorithms": [], "train_kimg": 0.25, "report_kimg": 0.125,
                      "save_kimg": 0.125, "batch": 16, "threads": 1, "progress": False})
    origin = tmp_path / "origin.git"
    storage = tmp_path / "dvc-storage"
    run(["git", "init", "-q", "--bare", str(origin)], tmp_path)
    run(["git", "init", "-q"], repo)
    run(["dvc", "init", "-q"], repo)
    run(["dvc", "remote", "add", "-d", "storage", str(storage)], repo)  # S3/GCS: s3://bucket/path, gs://...
    run(["git", "add", "-A"], repo)
    run(["git", "commit", "-qm", "init"], repo)
    run(["git", "remote", "add", "origin", str(origin)], repo)
    run(["dvc", "repro"], repo)  # the baseline: its data stages are then restored from the cache in each experiment
    run(["git", "add", "-A"], repo)
    run(["git", "commit", "-qm", "baseline"], repo)
    run(["git", "push", "-q", "origin", "HEAD"], repo)
    run(["dvc", "push", "-q"], repo)

    t0 = time.time()
    for seed in (1, 2):
        run(["dvc", "exp", "run", "--queue", "-n", f"seed{seed}", "-S", f"train.seed={seed}"], repo)
    run(["dvc", "queue", "start", "-j", "2"], repo)
    status = wait_for_queue(repo)
    print(f"2 queued experiments, 2 workers: {time.time() - t0:.1f} s")
    assert status.count("Success") == 2, status + run(["dvc", "queue", "logs", "seed1"], repo, check=False).stdout

    exps = experiments(repo)
    assert {"seed1", "seed2"} <= set(exps)
    accuracy = {}
    for name, seed in (("seed1", 1), ("seed2", 2)):
        assert exps[name]["params"]["params.yaml"]["data"]["train"]["seed"] == seed
        metrics = exps[name]["metrics"][f"metrics/{RUN}/accuracy.json"]["data"]
        assert 0 <= metrics["last01"] <= 100
        accuracy[name] = metrics["last01"]

    # share: experiments (git refs) to the git remote, their outputs to the DVC remote; pull them into a clone
    run(["dvc", "exp", "push", "origin", "seed1", "seed2"], repo)
    clone = tmp_path / "clone"
    run(["git", "clone", "-q", str(origin), str(clone)], tmp_path)
    listed = run(["dvc", "exp", "list", "origin"], clone).stdout
    assert "seed1" in listed and "seed2" in listed
    run(["dvc", "exp", "pull", "origin", "seed2"], clone)
    run(["dvc", "exp", "apply", "seed2"], clone)
    run(["dvc", "pull", "-q"], clone)
    assert (clone / RUN / "model.pt").is_file()
    pulled = json.loads((clone / "metrics" / RUN / "accuracy.json").read_text())
    assert pulled["last01"] == accuracy["seed2"]
    assert yaml.safe_load((clone / "params.yaml").read_text())["train"]["seed"] == 2
