"""Safe loading: checkpoints only through `torch.load(weights_only=True)`, nothing unpickled, upstream files
parsed only after their checksum matched, archives read in place (never extracted), and no shell command built
from a user's strings.

Each rule is checked twice: over the source of realmix/, stages/ and benchmarks/ (an AST walk, so that a new
call site cannot slip in unnoticed), and by behaviour, on files and params crafted to exploit it. The archive
member rules (absolute paths, `..`, links) are exercised in test_sources_archives.py and test_bad_inputs.py.
"""

from __future__ import annotations

import ast
import dataclasses
import shutil
from pathlib import Path

import numpy as np
import pytest
import torch
import yaml

from realmix import checkpoint as ckpt
from realmix.errors import RealmixError
from realmix.evaluate import evaluate_run
from realmix.params import DatasetParams
from realmix.predict import predict_folder
from realmix.sources import archive, build_dataset, cifar, svhn
from realmix.train import Trainer
from tests.conftest import ROOT, init_repo, run, write_image
from tests.helpers import Payload, cifar10_archive, md5, svhn_mat, tiny_params

SOURCES = sorted(p for d in ("realmix", "stages", "benchmarks") for p in (ROOT / d).rglob("*.py"))
UNPICKLERS = {"pickle", "cPickle", "_pickle", "dill", "cloudpickle", "joblib", "shelve", "marshal"}
SHELL_CALLS = {("os", "system"), ("os", "popen"), ("subprocess", "getoutput"), ("subprocess", "getstatusoutput")}


# -- the source ------------------------------------------------------------------------------------------------
def dotted(node: ast.AST) -> tuple[str, ...]:
    """`torch.load` -> ("torch", "load"); a call on anything but a dotted name -> ()."""
    parts = []
    while isinstance(node, ast.Attribute):
        parts.append(node.attr)
        node = node.value
    return (node.id, *reversed(parts)) if isinstance(node, ast.Name) else ()


def keyword(call: ast.Call, name: str) -> ast.expr | None:
    return next((k.value for k in call.keywords if k.arg == name), None)


def constant(node: ast.expr | None, value: object) -> bool:
    return isinstance(node, ast.Constant) and node.value is value


@pytest.fixture(scope="module")
def trees() -> dict[str, ast.Module]:
    assert any(p.name == "checkpoint.py" for p in SOURCES)
    return {str(p.relative_to(ROOT)): ast.parse(p.read_text(), str(p)) for p in SOURCES}


def unsafe_loads(trees: dict[str, ast.Module]) -> tuple[int, list[str]]:
    """(torch.load calls seen, every unsafe load or import found)."""
    torch_loads, bad = 0, []
    for path, tree in trees.items():
        for node in ast.walk(tree):
            at = f"{path}:{getattr(node, 'lineno', 0)}"
            if isinstance(node, ast.Import | ast.ImportFrom):
                modules = [a.name for a in node.names] if isinstance(node, ast.Import) else [node.module or ""]
                for m in modules:
                    if m.split(".")[0] in UNPICKLERS:
                        bad.append(f"{at}: imports {m}")
                    if m.split(".")[0] == "zipfile":
                        bad.append(f"{at}: imports zipfile (no reader takes zip archives; see tar rules)")
                if isinstance(node, ast.ImportFrom) and node.module == "torch" and any(
                        a.name == "load" for a in node.names):
                    bad.append(f"{at}: `from torch import load` hides torch.load from this check")
            if not isinstance(node, ast.Call):
                continue
            name = dotted(node.func)
            if name[-2:] == ("torch", "load"):
                torch_loads += 1
                if not constant(keyword(node, "weights_only"), True):
                    bad.append(f"{at}: torch.load without weights_only=True")
            if name in (("np", "load"), ("numpy", "load")) and keyword(node, "allow_pickle") is not None \
                    and not constant(keyword(node, "allow_pickle"), False):
                bad.append(f"{at}: np.load that may unpickle")
            if name[:1] == ("yaml",) and name[-1] in ("load", "unsafe_load", "full_load", "load_all"):
                bad.append(f"{at}: yaml.{name[-1]} (use yaml.safe_load)")
            if name in (("eval",), ("exec",)):
                bad.append(f"{at}: {name[0]}()")
            if isinstance(node.func, ast.Attribute) and node.func.attr in ("extract", "extractall"):
                bad.append(f"{at}: archive extraction (members are read in place, never written out)")
    return torch_loads, bad


def test_source_loads_only_safely(trees) -> None:
    torch_loads, bad = unsafe_loads(trees)
    assert torch_loads >= 1, "no torch.load found: this check no longer looks at the checkpoint loader"
    assert not bad, "\n".join(bad)


def shell_commands(trees: dict[str, ast.Module]) -> list[str]:
    bad = []
    for path, tree in trees.items():
        for node in ast.walk(tree):
            if not isinstance(node, ast.Call):
                continue
            at, name = f"{path}:{node.lineno}", dotted(node.func)
            if keyword(node, "shell") is not None and not constant(keyword(node, "shell"), False):
                bad.append(f"{at}: shell=...")
            if name[-2:] in SHELL_CALLS or (name[:1] == ("os",) and name[-1].startswith(("exec", "spawn"))):
                bad.append(f"{at}: {'.'.join(name)}")
            # a subprocess gets an argument list, never one string for a shell (or for shlex) to split
            if name[:1] == ("subprocess",) and node.args and isinstance(node.args[0], ast.Constant | ast.JoinedStr |
                                                                        ast.BinOp):
                bad.append(f"{at}: {'.'.join(name)} with a command string")
    return bad


def test_source_never_builds_a_shell_command(trees) -> None:
    bad = shell_commands(trees)
    assert not bad, "\n".join(bad)


def test_the_source_checks_catch_violations() -> None:
    bad = ast.parse("""
import pickle
from torch import load
import subprocess, os, tarfile, yaml, numpy as np, torch
torch.load(path)
torch.load(path, weights_only=False)
np.load(path, allow_pickle=True)
yaml.load(text)
tarfile.open(path).extractall(dest)
subprocess.run(f"python {name}")
subprocess.run(["ls"], shell=True)
os.system("ls " + name)
""")
    loads, found = unsafe_loads({"m.py": bad})
    assert loads == 2 and len(found) == 7, found
    assert len(shell_commands({"m.py": bad})) == 3
    good = ast.parse("torch.load(p, weights_only=True)\nnp.load(p, allow_pickle=False)\nsubprocess.run(['ls'])")
    assert unsafe_loads({"m.py": good}) == (1, []) and shell_commands({"m.py": good}) == []




# -- behaviour ---------------------------------------------------------------------------------------------------
def test_every_checkpoint_load_is_weights_only(tmp_path: Path, store, monkeypatch) -> None:
    """Train, resume, evaluate and predict: every torch.load call they make asks for weights_only=True."""
    seen = []
    real_load = torch.load

    def spy(*args, **kwargs):
        seen.append(kwargs.get("weights_only"))
        return real_load(*args, **kwargs)

    monkeypatch.setattr(torch, "load", spy)
    out = tmp_path / "run"
    Trainer(tiny_params(), "supervised", store, split_seed=1).fit(out)
    (out / "model.pt").unlink()
    Trainer(tiny_params(), "supervised", store, split_seed=1).fit(out)  # resumes from its last checkpoint
    evaluate_run(out, store, tmp_path / "accuracy.json", device="cpu")
    write_image(tmp_path / "images" / "a.png", size=(8, 8))
    predict_folder(out / "model.pt", tmp_path / "images", tmp_path / "pred", device="cpu", progress=False)
    assert len(seen) >= 3 and all(w is True for w in seen), seen


def test_pickled_checkpoint_is_refused_and_never_run(tmp_path: Path, store, capsys) -> None:
    """A checkpoint that would run code when unpickled, planted as a run's newest: refused with a clear message,
    skipped for the previous one, and the code never runs."""
    marker = tmp_path / "pwned"
    out = tmp_path / "run"
    Trainer(tiny_params(), "supervised", store, split_seed=1).fit(out)
    (out / "model.pt").unlink()
    newest = ckpt.CheckpointDir(out / "checkpoints", 2).list()[-1]
    evil = newest.with_name("ckpt-999999999999.pt")
    torch.save({"format": ckpt.CKPT_FORMAT, "model": Payload(marker)}, evil)
    with pytest.raises(RealmixError, match="refused: it holds pickled Python objects") as e:
        ckpt.load(evil)
    assert "\n" not in str(e.value) and "weights_only" in str(e.value)
    capsys.readouterr()
    path, _ = ckpt.CheckpointDir(out / "checkpoints", 2).latest()
    assert path == newest and f"warning: skipping {evil}: refused" in capsys.readouterr().err
    assert not marker.exists()
    # the same file under the name of a run's model
    shutil.copy(evil, out / "model.pt")
    with pytest.raises(RealmixError, match="refused"):
        evaluate_run(out, store, tmp_path / "accuracy.json", device="cpu")
    assert not marker.exists() and not (tmp_path / "accuracy.json").exists()


def test_upstream_files_are_parsed_only_after_their_checksum(tmp_path: Path, monkeypatch) -> None:
    """A CIFAR tarball or SVHN .mat whose md5 is not the official one is never opened by a parser."""
    def must_not_parse(*args, **kwargs):
        raise AssertionError("a file was parsed before its checksum was verified")

    archive_dir = tmp_path / "archives"
    archive_dir.mkdir()
    cifar10_archive(archive_dir / cifar.SPECS["cifar10"].filename, np.random.default_rng(0))
    svhn_mat(archive_dir / svhn.SPECS["train"].filename, np.random.default_rng(0), 12)
    svhn_mat(archive_dir / svhn.SPECS["test"].filename, np.random.default_rng(1), 12)
    monkeypatch.setattr(archive.tarfile, "open", must_not_parse)
    import scipy.io

    monkeypatch.setattr(scipy.io, "loadmat", must_not_parse)
    for source in ("cifar10", "svhn"):
        p = DatasetParams(source=source, name=source, archive_dir=str(archive_dir), download=False)
        with pytest.raises(RealmixError, match="the official file has md5"):
            build_dataset(p, tmp_path / source)
        assert not (tmp_path / source).exists()
    # with the checksum matching, the same files are parsed (so the spies above were on the right functions)
    spec = cifar.SPECS["cifar10"]
    monkeypatch.setitem(cifar.SPECS, "cifar10", dataclasses.replace(
        spec, md5=md5((archive_dir / spec.filename).read_bytes())))
    with pytest.raises(AssertionError, match="before its checksum"):
        build_dataset(DatasetParams(source="cifar10", name="c", archive_dir=str(archive_dir), download=False),
                      tmp_path / "c")


@pytest.mark.e2e
def test_params_never_reach_a_shell(project: Path) -> None:
    """dvc.yaml puts params into the shell commands DVC runs. Those params are validated names, integers or
    algorithm names, and a stage that would run an injected command refuses before any shell sees it."""
    if shutil.which("git") is None:
        pytest.skip("git is required")
    data = yaml.safe_load((project / "params.yaml").read_text())
    data["split"].update(seeds=[1], sizes=[30])
    data["preaugment"]["copies"] = [2]
    data["train"].update(algorithms=["supervised"], aug_algorithms=[])
    (project / "params.yaml").write_text(yaml.safe_dump(data, sort_keys=False))
    init_repo(project)
    injected = "x; touch PWNED; echo"

    data["dataset"]["name"] = injected  # in the commands of the preaugment, train and evaluate stages
    (project / "params.yaml").write_text(yaml.safe_dump(data, sort_keys=False))
    res = run(["dvc", "repro"], project, check=False)
    assert res.returncode != 0 and f"error: params: dataset.name={injected!r} is not a valid dataset name" in \
        res.stderr + res.stdout
    for stage in ("preaugment@1-30-2", "train@1-30-supervised"):  # alone, without the stages before them
        assert run(["dvc", "repro", "-s", stage], project, check=False).returncode != 0
    data["dataset"]["name"] = "digits"
    data["train"]["algorithms"] = ["supervised; touch PWNED; echo"]
    (project / "params.yaml").write_text(yaml.safe_dump(data, sort_keys=False))
    assert run(["dvc", "repro"], project, check=False).returncode != 0
    assert run(["dvc", "repro", "-s", f"train@1-30-{data['train']['algorithms'][0]}"], project,
               check=False).returncode != 0
    assert not list(project.rglob("PWNED"))
