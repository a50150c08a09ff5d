"""Helpers shared by the test modules: tiny params, networks and batches, project-file edits, tiny upstream
archives (CIFAR-10, SVHN, Fashion-MNIST, tar members), run logs and open-set models. Shared pytest fixtures live in
conftest.py; test modules import from these two and never from each other (tests/test_layout.py checks)."""

from __future__ import annotations

import ast
import dataclasses
import gzip
import hashlib
import io
import tarfile
from pathlib import Path

import numpy as np
import pytest
import torch
import yaml
from scipy.io import savemat
from torch import nn

from realmix.algorithms.base import Batch
from realmix.mismatch import filter_split
from realmix.models import build_model
from realmix.params import parse
from realmix.sources.fashion_mnist import SPECS
from realmix.store import Store

# -- training params -------------------------------------------------------------------------------------------
TINY = {
    "model": {"filters": 4, "repeat": 1, "scales": 1, "bn_momentum": 0.1},
    "train": {"batch": 6, "train_kimg": 0.05, "report_kimg": 0.02, "save_kimg": 0.02, "keep_ckpt": 2,
              "augment": "cifar10", "eval_batch": 7, "progress": False, "threads": 1},
    "mixmatch": {"warmup_kimg": 0.01},
    "realmix": {"warmup_kimg": 0.01},
}


def tiny_params(**over):
    data = {k: dict(v) for k, v in TINY.items()}
    for key, value in over.items():
        if isinstance(value, dict):
            data.setdefault(key, {}).update(value)
        else:
            data[key] = value
    return parse(data)


def state_equal(a: dict, b: dict) -> bool:
    return a.keys() == b.keys() and all(torch.equal(a[k], b[k]) for k in a)


# -- a tiny network and batches (3 classes, 8 x 8 x 3 images) ---------------------------------------------------
K = 3
B = 6
TINY_ARCH = {"arch": "wrn", "filters": 4, "repeat": 1, "scales": 1, "bn_momentum": 0.1}


def tiny(seed=0, momentum=0.1):
    return build_model({**TINY_ARCH, "bn_momentum": momentum}, K, (8, 8, 3),
                       generator=torch.Generator().manual_seed(seed))


def toy_batch(b=B, nu=2, seed=0) -> Batch:
    g = torch.Generator().manual_seed(seed)
    x = torch.rand(b, 3, 8, 8, generator=g) * 2 - 1
    y = torch.arange(b) % K
    x = x + 0.8 * y.view(-1, 1, 1, 1).float() - 0.8  # classes are learnable
    u = tuple(torch.rand(b, 3, 8, 8, generator=g) * 2 - 1 for _ in range(nu))
    return Batch(x, y, u)


def bn_buffers(model):
    return {k: v.clone() for k, v in model.state_dict().items()
            if k.endswith(("running_mean", "running_var", "num_batches_tracked"))}


# -- project files ---------------------------------------------------------------------------------------------
def set_params(proj: Path, **sections) -> None:
    data = yaml.safe_load((proj / "params.yaml").read_text())
    for section, values in sections.items():
        if isinstance(values, dict):
            data[section].update(values)
        else:
            data[section] = values
    (proj / "params.yaml").write_text(yaml.safe_dump(data, sort_keys=False))


def snapshot(root: Path) -> dict[str, str]:
    """sha256 of every file and a marker for every directory under root (new empty folders count too)."""
    return {str(p.relative_to(root)): "dir" if p.is_dir() else hashlib.sha256(p.read_bytes()).hexdigest()
            for p in sorted(root.rglob("*"))}


# -- tiny upstream archives ------------------------------------------------------------------------------------
C10_NAMES = ["airplane", "automobile", "bird", "cat", "deer", "dog", "frog", "horse", "ship", "truck"]


def md5(data: bytes) -> str:
    return hashlib.md5(data).hexdigest()


def one_line(e: pytest.ExceptionInfo) -> str:
    msg = str(e.value)
    assert "\n" not in msg and "\r" not in msg
    return msg


def write_tar(path: Path, files: dict[str, bytes], mode: str = "w:gz") -> Path:
    with tarfile.open(path, mode) as tf:
        for name, data in files.items():
            info = tarfile.TarInfo(name)
            info.size = len(data)
            tf.addfile(info, io.BytesIO(data))
    return path


def rand_images(rng: np.random.Generator, n: int, side: int = 32) -> np.ndarray:
    return rng.integers(0, 256, (n, side, side, 3), dtype=np.uint8)


def cifar10_archive(path: Path, rng: np.random.Generator) -> tuple[Path, dict]:
    """5 training batches of 10 images (one per class, shuffled) and a 20-image test batch."""
    truth: dict[str, list] = {"train": [], "test": []}
    files = {}
    for name, n, subset in [(f"data_batch_{i}.bin", 10, "train") for i in range(1, 6)] + [
        ("test_batch.bin", 20, "test")
    ]:
        images = rand_images(rng, n)
        labels = rng.permutation(np.arange(n) % 10).astype(np.uint8)
        truth[subset].append((images, labels))
        records = np.concatenate([labels[:, None], images.transpose(0, 3, 1, 2).reshape(n, -1)], axis=1)
        files[f"cifar-10-batches-bin/{name}"] = records.tobytes()
    files["cifar-10-batches-bin/batches.meta.txt"] = ("\n".join(C10_NAMES) + "\n\n").encode()
    files["cifar-10-batches-bin/readme.html"] = b"<html></html>"
    write_tar(path, files)
    return path, {k: tuple(np.concatenate(parts) for parts in zip(*v, strict=True)) for k, v in truth.items()}


def svhn_mat(path: Path, rng: np.random.Generator, n: int) -> tuple[np.ndarray, np.ndarray]:
    x = rng.integers(0, 256, (32, 32, 3, n), dtype=np.uint8)
    y = (np.arange(n) % 10 + 1).astype(np.uint8)  # 1..10, 10 = digit 0
    savemat(path, {"X": x, "y": y[:, None]})
    return x, y


def _member(name: str, kind: bytes = tarfile.REGTYPE, linkname: str = "") -> tuple[tarfile.TarInfo, bytes]:
    info = tarfile.TarInfo(name)
    info.type = kind
    info.linkname = linkname
    data = b"x" if kind == tarfile.REGTYPE else b""
    info.size = len(data)
    return info, data


class Payload:
    """Unpickling this runs Path.touch(marker): a stand-in for arbitrary code in a downloaded file."""

    def __init__(self, marker: Path):
        self.marker = marker

    def __reduce__(self):
        return Path.touch, (self.marker,)


# -- Fashion-MNIST: tiny gzipped IDX files ---------------------------------------------------------------------
FASHION_COUNTS = {"train": 20, "test": 10}


def idx(array: np.ndarray, magic: int | None = None) -> bytes:
    """An IDX file of unsigned bytes: big-endian magic 0x0000 08 <ndim>, the uint32 dims, then the data."""
    magic = 0x0800 + array.ndim if magic is None else magic
    dims = b"".join(int(d).to_bytes(4, "big") for d in array.shape)
    return magic.to_bytes(4, "big") + dims + np.ascontiguousarray(array, np.uint8).tobytes()


def official_gz(data: bytes) -> bytes:
    return gzip.compress(data, compresslevel=9, mtime=0)


def debian_gz(data: bytes) -> bytes:
    """The same contents compressed differently (level, timestamp): another md5, the same content sha256."""
    return gzip.compress(data, compresslevel=1, mtime=1_591_000_000)


def tiny_contents(seed: int = 0) -> tuple[dict[str, bytes], dict[str, np.ndarray]]:
    """The decompressed IDX contents of the four files, and the arrays they hold."""
    rng = np.random.default_rng(seed)
    arrays = {}
    for subset, n in FASHION_COUNTS.items():
        arrays[f"{subset}_images"] = rng.integers(0, 256, (n, 28, 28), dtype=np.uint8)
        arrays[f"{subset}_labels"] = rng.permutation(np.arange(n) % 10).astype(np.uint8)
    return {k: idx(a) for k, a in arrays.items()}, arrays


def install_fashion_mnist(archive_dir: Path, mp: pytest.MonkeyPatch, form: str = "official",
                          contents: dict[str, bytes] | None = None) -> dict[str, np.ndarray]:
    """Write the four tiny files into archive_dir in the official or the Debian form, and point SPECS at them.

    official: the spec's md5 is the file's (its content sha256 something else, so only the md5 can pass);
    debian: the spec's md5 is that of the official compression, and its content sha256 that of the contents.
    """
    base, arrays = tiny_contents()
    contents = {**base, **(contents or {})}
    archive_dir.mkdir(parents=True, exist_ok=True)
    for key, spec in SPECS.items():
        data = contents[key]
        gz = official_gz(data) if form == "official" else debian_gz(data)
        (archive_dir / spec.filename).write_bytes(gz)
        if form == "official":
            new = dataclasses.replace(spec, md5=md5(gz), content_sha256="0" * 64)
        else:
            assert md5(gz) != md5(official_gz(data))
            new = dataclasses.replace(spec, md5=md5(official_gz(data)),
                                      content_sha256=hashlib.sha256(data).hexdigest())
        mp.setitem(SPECS, key, new)
    return arrays


# -- run logs --------------------------------------------------------------------------------------------------
TIMING = "train/images_per_s"  # wall-clock throughput: the one logged value that may differ between runs


def without_timing(record: dict) -> dict:
    return {k: v for k, v in record.items() if k != TIMING}


def live_files(run_dir: Path) -> dict[str, bytes]:
    """Every dvclive history file of a run (metric name -> bytes), minus the wall-clock throughput."""
    root = run_dir / "live" / "plots"
    return {str(p.relative_to(root)): p.read_bytes() for p in sorted(root.rglob("*.tsv"))
            if not str(p).endswith("images_per_s.tsv")}


# -- open-set metrics ------------------------------------------------------------------------------------------
def mismatch(source: Store, out, remap=True) -> Store:
    return filter_split(source, out, name="m", labelled_classes=[0, 1, 2], unlabelled_classes=[1, 2, 3, 4],
                        remap=remap, level=50)


class Crafted(nn.Module):
    """Closed-set confidence rises with the image's mean brightness; the open head says the opposite. The network
    contract of WideResNet: `embed` (the pooled feature: the brightness), `fc`, `heads`."""

    def __init__(self, heads: bool):
        super().__init__()
        self.fc = nn.Linear(1, 3)
        with torch.no_grad():
            self.fc.weight.copy_(torch.tensor([[8.0], [0.0], [0.0]]))
            self.fc.bias.zero_()
        self.heads = self._open if heads else None

    def embed(self, x):
        return x.mean((1, 2, 3))[:, None]  # [-1, 1]

    @staticmethod
    def _open(features):
        b = features[:, 0]
        return None, torch.stack([torch.zeros_like(b)] * 3 + [8 * b], 1)  # bright = out-of-class for this head

    def forward(self, x, heads=False):
        features = self.embed(x)
        logits = self.fc(features)
        return logits if not heads else (logits, *self.heads(features))


# -- the import graph of realmix/ (read with ast, nothing imported) ----------------------------------------------
ROOT = Path(__file__).resolve().parents[1]


@dataclasses.dataclass(frozen=True)
class Import:
    """One import statement's realmix target, where it stands: `function` is the enclosing top-level function
    (None at module level) and `command` the `args.command == "<name>"` branch it sits in, if any."""

    target: str
    function: str | None
    command: str | None
    line: int


def module_files(root: Path = ROOT) -> dict[str, Path]:
    """realmix module name -> its file (a package is its __init__.py)."""
    out = {}
    for path in sorted((root / "realmix").rglob("*.py")):
        parts = path.relative_to(root).with_suffix("").parts
        out[".".join(parts[:-1] if parts[-1] == "__init__" else parts)] = path
    return out


def _command_of(test: ast.expr) -> str | None:
    """"train" for a test `args.command == "train"`."""
    if (isinstance(test, ast.Compare) and isinstance(test.left, ast.Attribute) and test.left.attr == "command"
            and len(test.comparators) == 1 and isinstance(test.comparators[0], ast.Constant)):
        return str(test.comparators[0].value)
    return None


def imports_of(name: str, path: Path, modules: dict[str, Path]) -> list[Import]:
    """The realmix modules that module `name` imports, statement by statement. `from .a import b` imports a, and
    a.b too where b is a module; a dynamic `importlib.import_module` counts as importing every module of the
    package it stands in (the dataset readers' table)."""
    package = name if path.name == "__init__.py" else name.rpartition(".")[0]
    found: list[Import] = []

    def visit(node: ast.AST, function: str | None, command: str | None) -> None:
        targets: list[str] = []
        if isinstance(node, ast.Import):
            targets = [a.name for a in node.names]
        elif isinstance(node, ast.ImportFrom):
            base = node.module or ""
            if node.level:
                anchor = package.split(".")[:len(package.split(".")) - node.level + 1]
                base = ".".join(anchor + ([node.module] if node.module else []))
            targets = [base] + [f"{base}.{a.name}" for a in node.names if f"{base}.{a.name}" in modules]
        elif (isinstance(node, ast.Call) and isinstance(node.func, ast.Attribute)
              and node.func.attr == "import_module"):
            targets = [m for m in modules if m.startswith(package + ".")]
        for t in targets:
            if t in modules:
                found.append(Import(t, function, command, getattr(node, "lineno", 0)))
        for child in ast.iter_child_nodes(node):
            inner = function
            if isinstance(node, ast.Module) and isinstance(child, (ast.FunctionDef, ast.AsyncFunctionDef)):
                inner = child.name
            branch = command
            if isinstance(node, ast.If) and child in node.body and _command_of(node.test):
                branch = _command_of(node.test)
            visit(child, inner, branch)

    visit(ast.parse(path.read_text()), None, None)
    return found


def import_graph(root: Path = ROOT) -> dict[str, list[Import]]:
    """Every realmix module -> its imports of realmix modules (module- and function-level)."""
    modules = module_files(root)
    return {name: imports_of(name, path, modules) for name, path in modules.items()}


def parents(module: str) -> list[str]:
    """The packages a module's import runs first: realmix.train.feed -> realmix, realmix.train."""
    parts = module.split(".")
    return [".".join(parts[:i]) for i in range(1, len(parts))]
