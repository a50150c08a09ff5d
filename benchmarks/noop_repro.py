"""Time a no-op `dvc repro` of the default pipeline (target: <= 2 s).

Copies the pipeline definition into a temporary repository outside the checkout, runs the default
pipeline once (digits, all stages), then times repeated `dvc repro` calls that have nothing to do and
prints their median. Run: .venv/bin/python benchmarks/noop_repro.py [--repeats 7]
"""

from __future__ import annotations

import argparse
import os
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]


def sh(cmd: list[str], cwd: Path) -> subprocess.CompletedProcess:
    env = dict(os.environ, DVC_NO_ANALYTICS="1", GIT_AUTHOR_NAME="b", GIT_AUTHOR_EMAIL="b@b",
               GIT_COMMITTER_NAME="b", GIT_COMMITTER_EMAIL="b@b")
    env["PATH"] = f"{Path(sys.executable).parent}{os.pathsep}{env['PATH']}"
    return subprocess.run(cmd, cwd=cwd, env=env, check=True, capture_output=True, text=True)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--repeats", type=int, default=7)
    args = ap.parse_args()
    with tempfile.TemporaryDirectory() as tmp:
        proj = Path(tmp)
        for name in ("dvc.yaml", "params.yaml"):
            shutil.copy(ROOT / name, proj / name)
        for name in ("stages", "examples", "realmix"):
            shutil.copytree(ROOT / name, proj / name, ignore=shutil.ignore_patterns("__pycache__"))
        sh(["git", "init", "-q"], proj)
        sh(["dvc", "init", "-q"], proj)
        t0 = time.perf_counter()
        out = sh(["dvc", "repro"], proj).stdout
        full = time.perf_counter() - t0
        stages = out.count("Running stage")
        times = []
        for _ in range(args.repeats):
            t0 = time.perf_counter()
            out = sh(["dvc", "repro"], proj).stdout
            times.append(time.perf_counter() - t0)
            assert "Running stage" not in out, "the repeated repro was not a no-op"
        print(f"default pipeline: {stages} stages, first dvc repro {full:.1f} s")
        print(f"no-op dvc repro: median {statistics.median(times):.2f} s over {args.repeats} runs "
              f"(min {min(times):.2f}, max {max(times):.2f}); target <= 2 s")


if __name__ == "__main__":
    main()
