"""Shared fixtures (tiny stores, image folders, a project copy) and a way to run stage scripts as the user would.
Plain helpers shared by the test modules live in tests/helpers.py."""

from __future__ import annotations

import hashlib
import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

from realmix.store import Store, StoreWriter

ROOT = Path(__file__).resolve().parents[1]


def make_store(path: Path, subsets: dict[str, np.ndarray], k: int = 10, hw: int = 4, seed: int = 0,
               shard_size: int = 1 << 16, source: str = "test") -> Store:
    """A store whose images are unique random noise; `subsets` maps subset name -> labels."""
    rng = np.random.default_rng(seed)
    with StoreWriter(path, [f"c{i}" for i in range(k)], meta={"source": source}, shard_size=shard_size) as w:
        for name, labels in subsets.items():
            images = rng.integers(0, 256, (len(labels), hw, hw, 3), dtype=np.uint8)
            w.add(name, images, np.asarray(labels, np.int64))
    return Store.open(path)


def write_image(path: Path, size=(12, 10), mode="RGB", color=(200, 30, 40), fmt=None) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    im = Image.new("RGB", size, color[:3]).convert(mode)
    im.save(path, format=fmt or ("JPEG" if path.suffix.lower() in (".jpg", ".jpeg") else "PNG"))
    return path


def make_folder(root: Path, classes=("cat", "dog"), n_train=3, n_test=2, n_unlabeled=2) -> Path:
    rng = np.random.default_rng(1)
    for split, n in (("train", n_train), ("test", n_test)):
        for c in classes:
            for i in range(n):
                color = tuple(int(v) for v in rng.integers(0, 256, 3))
                write_image(root / split / c / f"{c}{i}.{'jpg' if i % 2 else 'png'}", color=color)
    for i in range(n_unlabeled):
        write_image(root / "unlabeled" / f"u{i}.png", color=(i * 20, 5, 5))
    return root


def tree_hash(root: Path) -> dict[str, str]:
    """Content hash of every file under root (to prove user folders are left byte-identical)."""
    return {str(p.relative_to(root)): hashlib.sha256(p.read_bytes()).hexdigest()
            for p in sorted(root.rglob("*")) if p.is_file()}


def run(cmd: list[str], cwd: Path, check: bool = True) -> subprocess.CompletedProcess:
    env = dict(os.environ, DVC_NO_ANALYTICS="1", PYTHONUNBUFFERED="1",
               GIT_AUTHOR_NAME="t", GIT_AUTHOR_EMAIL="t@t", GIT_COMMITTER_NAME="t", GIT_COMMITTER_EMAIL="t@t")
    env["PATH"] = f"{Path(sys.executable).parent}{os.pathsep}{env.get('PATH', '')}"
    res = subprocess.run(cmd, cwd=cwd, env=env, capture_output=True, text=True)
    if check and res.returncode != 0:
        raise AssertionError(f"{cmd} failed ({res.returncode}):\n{res.stdout}\n{res.stderr}")
    return res


def init_repo(proj: Path) -> Path:
    """`git init`, `dvc init` and a first commit in a project copy (see the `project` fixture), so `dvc repro` runs."""
    for cmd in (["git", "init", "-q"], ["dvc", "init", "-q"], ["git", "add", "-A"], ["git", "commit", "-qm", "init"]):
        run(cmd, proj)
    return proj


@pytest.fixture
def store(tmp_path: Path) -> Store:
    """A tiny 3-class 8x8 split (12 labelled, 40 unlabelled, 6 valid, 9 test) for training tests."""
    rng = np.random.default_rng(0)
    return make_store(tmp_path / "toy.1@12-6", {
        "label": np.repeat(np.arange(3), 4), "unlabel": rng.integers(0, 3, 40), "valid": np.arange(6) % 3,
        "test": np.arange(9) % 3}, k=3, hw=8)


@pytest.fixture
def source(tmp_path) -> Store:
    """A 5-class split: classes 0-2 labelled; the unlabelled pool holds classes 1, 2 (in) and 3, 4 (out)."""
    rng = np.random.default_rng(0)
    return make_store(tmp_path / "src.1@12-6", {
        "label": np.repeat(np.arange(3), 4), "unlabel": np.tile(np.arange(5), 8), "valid": np.arange(6) % 3,
        "test": np.arange(9) % 3, }, k=5, hw=8, seed=int(rng.integers(100)))


@pytest.fixture
def project(tmp_path: Path) -> Path:
    """A copy of the pipeline definition (dvc.yaml, params.yaml, stages/, examples/) outside the checkout."""
    import shutil

    dst = tmp_path / "proj"
    dst.mkdir()
    for name in ("dvc.yaml", "params.yaml"):
        shutil.copy(ROOT / name, dst / name)
    # realmix/ is copied only because dvc.yaml lists core modules as deps; the stages import the
    # installed package (the checkout), since `python stages/x.py` puts stages/ first on sys.path
    for name in ("stages", "examples", "realmix"):
        shutil.copytree(ROOT / name, dst / name, ignore=shutil.ignore_patterns("__pycache__"))
    return dst


# Python-level reads of a tensor's value: on CUDA each one waits for the GPU queue to drain.
HOST_READS = ("item", "tolist", "__float__", "__int__", "__bool__", "__index__", "numpy", "cpu")


@pytest.fixture
def forbid_host_reads(monkeypatch):
    """Call it as `forbid_host_reads("inside X")`: from then on every host read of a tensor value raises."""

    def forbid(where: str) -> None:
        def forbidden(name):
            def read(self, *args, **kwargs):
                raise AssertionError(f"Tensor.{name}() {where}")
            return read

        for name in HOST_READS:
            monkeypatch.setattr(torch.Tensor, name, forbidden(name))

    return forbid
