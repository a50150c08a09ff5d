"""The bad-input suite: malformed inputs for every stage, each run through the `realmix` entry point the stage
scripts call. Every one must end with exit status 2 and exactly one `error:` line that names the input (file,
folder or param) and says what to do, write nothing (the project tree is compared file by file, directories
included) and leave every file of the user byte-identical (sha256 of every file before and after).

The table `CASES` is the list of what was tried; `tests/test_bad_inputs.py -v` prints each case's id.
"""

from __future__ import annotations

import dataclasses
import errno
import io
import os
import shutil
import tarfile
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pytest
import torch
import yaml

from realmix import checkpoint as ckpt
from realmix import cli
from realmix.sources import cifar
from realmix.store import Store
from realmix.train import Trainer
from tests.conftest import ROOT, make_folder, make_store, write_image
from tests.helpers import TINY, Payload, _member, cifar10_archive, md5, set_params, snapshot, tiny_params

SPLIT = "toy.1@6-6"
RUN = Path("runs/supervised") / SPLIT


@pytest.fixture
def proj(tmp_path: Path) -> Path:
    """A project at toy size: params.yaml, the user's image folder `images/`, a 3-class dataset store and a
    split of it."""
    proj = tmp_path / "proj"
    proj.mkdir()
    shutil.copy(ROOT / "params.yaml", proj / "params.yaml")
    set_params(proj, dataset={"source": "folder", "name": "toy", "folder": "images", "img_size": 8,
                              "archive_dir": "archives", "download": False},
               split={"seeds": [1], "sizes": [6], "nvalid": 6, "label_size": None},
               mismatch={"name": "toy2", "size": 6, "levels": [0], "labelled_classes": [0, 1],
                         "unlabelled_classes": {0: [0, 1]}},
               model=TINY["model"], train={**TINY["train"], "algorithms": ["supervised"], "aug_algorithms": [],
                                           "mismatch_algorithms": [], "mismatch_aug_algorithms": []})
    make_folder(proj / "images")
    rng = np.random.default_rng(0)
    make_store(proj / "data" / "datasets" / "toy", {"train": np.arange(60) % 3, "test": np.arange(9) % 3},
               k=3, hw=8)
    make_store(proj / "data" / "splits" / SPLIT, {"label": np.arange(6) % 3, "unlabel": rng.integers(0, 3, 20),
                                                  "valid": np.arange(6) % 3, "test": np.arange(9) % 3}, k=3, hw=8)
    return proj


# -- how each case breaks the project (returns the realmix arguments to run) ----------------------------------
def corrupt_image(proj: Path, mp) -> list[str]:
    (proj / "images/train/cat/broken.png").write_bytes(b"\x89PNG\r\n\x1a\n" + os.urandom(200))
    return ["download"]


def truncated_image(proj: Path, mp) -> list[str]:
    path = proj / "images/train/dog/dog1.jpg"
    path.write_bytes(path.read_bytes()[: path.stat().st_size // 2])
    return ["download"]


def not_an_image(proj: Path, mp) -> list[str]:
    (proj / "images/train/cat/notes.txt").write_text("labels: cat\n")
    return ["download"]


def empty_class_folder(proj: Path, mp) -> list[str]:
    (proj / "images/train/bird").mkdir()
    return ["download"]


def missing_train_folder(proj: Path, mp) -> list[str]:
    shutil.rmtree(proj / "images/train")
    return ["download"]


def missing_dataset_folder(proj: Path, mp) -> list[str]:
    set_params(proj, dataset={"folder": "photos"})
    return ["download"]


def class_only_in_test(proj: Path, mp) -> list[str]:
    write_image(proj / "images/test/bird/b0.png")
    return ["download"]


def params(argv: tuple[str, ...] = ("split", "--seed", "1", "--size", "6"), **sections
           ) -> Callable[[Path, object], list[str]]:
    def setup(proj: Path, mp) -> list[str]:
        set_params(proj, **sections)
        return list(argv)
    return setup


def typo_in_key(proj: Path, mp) -> list[str]:
    data = yaml.safe_load((proj / "params.yaml").read_text())
    data["split"]["nvlaid"] = data["split"].pop("nvalid")
    (proj / "params.yaml").write_text(yaml.safe_dump(data, sort_keys=False))
    return ["split", "--seed", "1", "--size", "6"]


def params_not_yaml(proj: Path, mp) -> list[str]:
    with open(proj / "params.yaml", "a") as f:
        f.write("split: [unclosed\n")
    return ["download"]


def too_many_labels(proj: Path, mp) -> list[str]:
    return ["split", "--seed", "1", "--size", "500"]


def split_name_with_path(proj: Path, mp) -> list[str]:
    return ["train", "--algorithm", "supervised", "--data", "../../toy.1@6-6"]


def official(path: Path) -> None:
    cifar10_archive(path, np.random.default_rng(0))  # the official layout, at toy size


def cifar_archive(proj: Path, mp, build: Callable[[Path], None] = official, *, match_md5: bool = True) -> list[str]:
    """A CIFAR-10 binary archive in dataset.archive_dir; with `match_md5` the official md5 is replaced by the
    file's, so that the checks after the checksum are reached."""
    set_params(proj, dataset={"source": "cifar10", "name": "cifar10"})
    spec = cifar.SPECS["cifar10"]
    path = proj / "archives" / spec.filename
    path.parent.mkdir()
    build(path)
    if match_md5:
        mp.setitem(cifar.SPECS, "cifar10", dataclasses.replace(spec, md5=md5(path.read_bytes())))
    return ["download"]


def wrong_checksum(proj: Path, mp) -> list[str]:
    return cifar_archive(proj, mp, match_md5=False)


def truncated_archive(proj: Path, mp) -> list[str]:
    def build(path: Path) -> None:
        official(path)
        path.write_bytes(path.read_bytes()[: path.stat().st_size // 2])
    return cifar_archive(proj, mp, build)


def archive_with(member: tuple[tarfile.TarInfo, bytes]) -> Callable[[Path, object], list[str]]:
    def setup(proj: Path, mp) -> list[str]:
        def build(path: Path) -> None:
            with tarfile.open(path, "w:gz") as tf:
                info = tarfile.TarInfo("cifar-10-batches-bin/batches.meta.txt")
                info.size = 4
                tf.addfile(info, io.BytesIO(b"a\nb\n"))
                tf.addfile(member[0], io.BytesIO(member[1]))
        return cifar_archive(proj, mp, build)
    return setup


def model_for_other_classes(proj: Path, mp) -> list[str]:
    """runs/supervised/<split>/model.pt made for a 2-class dataset, evaluated on the 3-class split."""
    other = make_store(proj.parent / "other", {"label": [0, 1] * 3, "test": [0, 1]}, k=2, hw=8)
    Trainer(tiny_params(), "supervised", other, split_seed=1).final_model().save(proj / RUN / "model.pt")
    shutil.rmtree(proj.parent / "other")
    return ["evaluate", "--algorithm", "supervised", "--data", SPLIT]


def checkpoint_as_model(proj: Path, mp) -> list[str]:
    """A training checkpoint given to predict instead of a run's model.pt."""
    trainer = Trainer(tiny_params(), "supervised", Store.open(proj / "data/splits" / SPLIT), split_seed=1)
    ckpt.save(proj / RUN / "checkpoints/ckpt-000000000006.pt", trainer.state_dict())
    return ["predict", "--model", str(RUN / "checkpoints/ckpt-000000000006.pt"), "--images", "images",
            "--out", "predictions"]


def pickled_model(proj: Path, mp) -> list[str]:
    path = proj / RUN / "model.pt"
    path.parent.mkdir(parents=True)
    torch.save({"format": ckpt.MODEL_FORMAT, "model": Payload(proj.parent / "pwned")}, path)
    return ["evaluate", "--algorithm", "supervised", "--data", SPLIT]


def pickled_store_file(proj: Path, mp) -> list[str]:
    path = proj / "data/datasets/toy/train-00000.labels.npy"
    np.save(path, np.array([Payload(proj.parent / "pwned")] * 60, dtype=object), allow_pickle=True)
    return ["split", "--seed", "1", "--size", "6"]


def nan_loss(proj: Path, mp) -> list[str]:
    from realmix.algorithms.supervised import Supervised

    original = Supervised.train_step

    def poisoned(self, model, batch, progress):
        out = original(self, model, batch, progress)
        out.loss = out.loss * float("nan")
        return out

    mp.setattr(Supervised, "train_step", poisoned)
    return ["train", "--algorithm", "supervised", "--data", SPLIT]


def disk_full_store(proj: Path, mp) -> list[str]:
    """The disk fills up while the split's second array is written: half of it reaches the disk, then ENOSPC."""
    real_save = np.save
    calls = {"n": 0}

    def save(file, arr, allow_pickle=True):
        calls["n"] += 1
        if calls["n"] < 2:
            return real_save(file, arr, allow_pickle=allow_pickle)
        buf = io.BytesIO()
        real_save(buf, arr, allow_pickle=allow_pickle)
        Path(file).write_bytes(buf.getvalue()[: len(buf.getvalue()) // 2])
        raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC))

    mp.setattr(np, "save", save)
    shutil.rmtree(proj / "data/splits")
    return ["split", "--seed", "1", "--size", "6"]


def disk_full_checkpoint(proj: Path, mp) -> list[str]:
    """Checkpoints are written to /dev/full: the kernel's own ENOSPC on the first one."""
    mp.setattr(ckpt, "open", lambda path, mode: open("/dev/full", mode), raising=False)
    return ["train", "--algorithm", "supervised", "--data", SPLIT]


@dataclass(frozen=True)
class Case:
    id: str
    setup: Callable[[Path, pytest.MonkeyPatch], list[str]]
    says: tuple[str, ...]  # in the error line: the input it names and the fix it gives
    logs: tuple[str, ...] = ()  # what a failed run may leave: training's logs up to the failure


CASES = [
    Case("corrupt image", corrupt_image,
         ("images/train/cat/broken.png", "not a readable PNG/JPEG image", "replace or remove it")),
    Case("truncated image", truncated_image,
         ("images/train/dog/dog1.jpg", "not a readable PNG/JPEG image", "replace or remove it")),
    Case("non-image file", not_an_image, ("images/train/cat/notes.txt", "not a PNG/JPEG image", "move or delete it")),
    Case("empty class folder", empty_class_folder,
         ("images/train/bird", "class folder has no images", "add PNG/JPEG files or remove the folder")),
    Case("missing train folder", missing_train_folder,
         ("images/train", "folder not found", "needs train/<class>/ image folders")),
    Case("missing dataset folder", missing_dataset_folder,
         ("dataset.folder='photos'", "folder not found", "set it to your dataset root")),
    Case("class in test but not train", class_only_in_test,
         ("images/test", "['bird']", "add training images for them or remove them from test")),
    Case("name with '-'", params(dataset={"name": "my-data"}),
         ("dataset.name='my-data'", "use letters, digits and '_' only", "'my_data'")),
    Case("name with '.'", params(mismatch={"name": "toy.v2"}),
         ("mismatch.name='toy.v2'", "use letters, digits and '_' only", "'toy_v2'")),
    Case("name with a path separator", params(dataset={"name": "../escape"}),
         ("dataset.name='../escape'", "use letters, digits and '_' only")),
    Case("split name with a path", split_name_with_path,
         ("'../../toy.1@6-6' is not a split name", "expected name.seed@size-valid")),
    Case("more labels than images", too_many_labels,
         ("500 labels requested but only 60 labelled images are available in data/datasets/toy",
          "lower split.sizes")),
    Case("label_size larger than the training set", params(split={"label_size": 1000}),
         ("split.label_size=1000", "exceeds the 60 training images of data/datasets/toy")),
    Case("nvalid too large", params(split={"nvalid": 1000}), ("split.nvalid=1000", "lower split.nvalid")),
    Case("typo in a key", typo_in_key, ("unknown key split.'nvlaid'", "did you mean 'nvalid'?")),
    Case("mistyped value", params(train={"batch": "64"}), ("train.batch must be an integer", "got '64'")),
    Case("value out of range", params(train={"lr": -1}), ("train.lr=-1.0 must be > 0",)),
    Case("class id the dataset lacks", params(("mismatch", "--seed", "1", "--level", "0"),
                                              mismatch={"labelled_classes": [0, 7]}),
         ("mismatch.labelled_classes has class ids [7] outside 0..2", f"data/splits/{SPLIT}")),
    Case("params.yaml not YAML", params_not_yaml, ("params.yaml: not valid YAML",)),
    Case("wrong checksum", wrong_checksum,
         ("archives/cifar-10-binary.tar.gz", f"official file has md5 {cifar.SPECS['cifar10'].md5}",
          "delete it and run again to download it")),
    Case("truncated archive", truncated_archive,
         ("archives/cifar-10-binary.tar.gz", "truncated or corrupt", "delete it and download it again")),
    Case("archive member with '..'", archive_with(_member("cifar-10-batches-bin/../../evil")),
         ("archives/cifar-10-binary.tar.gz", "unsafe member 'cifar-10-batches-bin/../../evil'", "re-download")),
    Case("archive member with an absolute path", archive_with(_member("/tmp/evil")),
         ("unsafe member '/tmp/evil'", "re-download the official archive")),
    Case("archive symlink leaving the archive",
         archive_with(_member("cifar-10-batches-bin/link", tarfile.SYMTYPE, "/etc/passwd")),
         ("unsafe member 'cifar-10-batches-bin/link'", "re-download the official archive")),
    Case("archive hardlink", archive_with(_member("cifar-10-batches-bin/hard", tarfile.LNKTYPE, "../../x")),
         ("unsafe member 'cifar-10-batches-bin/hard'", "re-download the official archive")),
    Case("model of another dataset", model_for_other_classes,
         (f"{RUN}/model.pt", "trained on classes ['c0', 'c1']", "evaluate a run on the split it was trained on")),
    Case("training checkpoint as a model", checkpoint_as_model,
         ("ckpt-000000000006.pt", "not a realmix model file", "give a run's model.pt")),
    Case("pickled object in a model file", pickled_model,
         (f"{RUN}/model.pt", "pickled Python objects", "use a file written by realmix")),
    Case("pickled object in a store file", pickled_store_file,
         ("data/datasets/toy/train-00000.labels.npy", "unreadable store file", "rerun the stage that wrote it")),
    Case("NaN loss", nan_loss, ("NaN/inf", "supervised", "Lower train.lr or check the input data"),
         logs=(f"{RUN}/live", f"{RUN}/tensorboard")),
    Case("disk full writing a store", disk_full_store,
         (f"data/splits/{SPLIT}: No space left on device while writing it", "free disk space")),
    Case("disk full writing a checkpoint", disk_full_checkpoint,
         (f"{RUN}/checkpoints/ckpt-", "No space left on device while writing it", "free disk space"),
         logs=(f"{RUN}/live", f"{RUN}/tensorboard")),
]


def allowed(path: str, kind: str, logs: tuple[str, ...]) -> bool:
    """Whether a failed run may have written this: a file in its logs, or a folder on the way to them."""
    return any(path == log or path.startswith(f"{log}/") or (kind == "dir" and log.startswith(f"{path}/"))
               for log in logs)


@pytest.mark.parametrize("case", CASES, ids=[c.id for c in CASES])
def test_bad_input(case: Case, proj: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture) -> None:
    monkeypatch.chdir(proj)
    argv = case.setup(proj, monkeypatch)
    capsys.readouterr()
    before = snapshot(proj)
    with pytest.raises(SystemExit) as e:
        cli.main(argv)
    err = capsys.readouterr().err
    lines = [line for line in err.splitlines() if line.strip()]
    assert e.value.code == 2, err
    assert len(lines) == 1 and lines[0].startswith("error: "), err
    for text in case.says:
        assert text in lines[0], f"{text!r} not in {lines[0]!r}"
    after = {k: v for k, v in snapshot(proj).items() if not allowed(k, v, case.logs)}
    assert after == before, f"files written or changed: {set(after.items()) ^ set(before.items())}"
    assert not (proj.parent / "pwned").exists()  # nothing was unpickled


def test_the_folder_check_reports_every_problem_in_one_run(proj: Path, monkeypatch, capsys) -> None:
    """Five problems of four kinds across train/, test/ and unlabeled/: one run lists all of them, each line naming
    its file and the fix, exit status 2, nothing written, the user's files untouched."""
    monkeypatch.chdir(proj)
    images = proj / "images"
    (images / "train/cat/notes.txt").write_text("labels: cat\n")
    (images / "train/bird").mkdir()
    (images / "test/dog/broken.png").write_bytes(b"\x89PNG\r\n\x1a\n" + os.urandom(200))
    write_image(images / "test/fish/f0.png")
    (images / "unlabeled/u9.png").write_bytes(b"not a png")
    before = snapshot(proj)
    with pytest.raises(SystemExit) as e:
        cli.main(["download"])
    err = capsys.readouterr().err
    assert e.value.code == 2
    lines = [line.strip() for line in err.splitlines() if line.strip()]
    assert lines[0] == "error: images: 5 problems; nothing was written (fix them all and rerun):"
    expected = ["images/train/bird: class folder has no images; add PNG/JPEG files or remove the folder",
                "images/train/cat/notes.txt: not a PNG/JPEG image", "images/test/dog/broken.png: not a readable",
                "images/test: classes ['fish'] have test images but no training images",
                "images/unlabeled/u9.png: not a readable PNG/JPEG image"]
    assert len(lines) == 6
    for text in expected:
        assert sum(line.startswith(text) for line in lines[1:]) == 1, (text, lines)
    assert all("; " in line for line in lines[1:])  # each says what to do
    assert snapshot(proj) == before


def test_the_folder_report_is_capped(proj: Path, monkeypatch, capsys) -> None:
    monkeypatch.chdir(proj)
    for i in range(25):
        (proj / f"images/train/cat/bad{i:02d}.png").write_bytes(b"nope")
    with pytest.raises(SystemExit):
        cli.main(["download"])
    lines = [line.strip() for line in capsys.readouterr().err.splitlines() if line.strip()]
    assert lines[0].startswith("error: images: 25 problems;")
    assert len(lines) == 22 and lines[-1] == "... and 5 more"
    assert lines[1].startswith("images/train/cat/bad00.png: not a readable PNG/JPEG image")
