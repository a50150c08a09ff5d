"""The paper presets parse, and their data stages run end to end at toy size on home-made archives."""

from __future__ import annotations

import dataclasses
import os

import numpy as np
import pytest
import yaml

from realmix import params, pipeline
from realmix.sources import cifar, fashion_mnist, svhn
from tests.conftest import ROOT
from tests.helpers import FASHION_COUNTS, cifar10_archive, install_fashion_mnist, md5, svhn_mat

PRESETS = sorted((ROOT / "presets").glob("*.yaml"))


def test_presets_exist_and_parse():
    assert {p.name for p in PRESETS} >= {"cifar10.yaml", "svhn.yaml", "mismatch_cifar10.yaml", "mismatch_digits.yaml",
                                         "fashion.yaml", "mismatch_fashion.yaml"}
    for path in PRESETS:
        p = params.load(path)
        cpu_sized = p.dataset.source in ("digits", "fashion_mnist")  # the others are the paper's GPU setups
        if not cpu_sized and p.dataset.source != "folder":  # folder.yaml: a user's images (tests/test_own_images.py)
            assert 250 in p.split.sizes and p.split.nvalid == 5000
        if path.name.startswith("mismatch_"):  # the study: supervised, MixMatch, FixMatch, IOMatch, RealMix
            levels = [0, 25, 50, 75, 100]
            assert p.mismatch.levels == levels if not cpu_sized else {0, 50, 100} <= set(p.mismatch.levels)
            assert sorted(p.mismatch.unlabelled_classes) == levels and len(p.split.seeds) >= 3
            assert p.train.mismatch_algorithms == ["supervised", "mixmatch", "fixmatch", "iomatch"]
            assert p.fixmatch.optimizer == p.iomatch.optimizer == "sgd" and p.fixmatch.lr_schedule == "cosine"
            assert p.train.mismatch_aug_algorithms == ["realmix"] and p.preaugment.mismatch_copies
            assert p.tsa == "linear_schedule" and p.realmix.ood_mask != "none"
            assert p.preaugment.mismatch_copies == [50]  # the paper's copies: cheap as a virtual pool
        if path.name == "cifar10.yaml":
            assert p.preaugment.copies == [50] and p.train.aug_algorithms == ["realmix"]
        assert p.preaugment.storage == "virtual"


def toy(path, tmp_path, **split):
    """The preset with toy split sizes and the archive dir pointed at tmp_path."""
    data = yaml.safe_load(path.read_text())
    data["dataset"].update(archive_dir=str(tmp_path / "archives"), download=False)
    data["split"].update(split)
    if data["mismatch"]["levels"]:
        data["mismatch"]["size"] = split["sizes"][0]
    data["preaugment"]["copies"] = data["preaugment"]["mismatch_copies"] = [2]
    data["train"].update(train_kimg=0.125, report_kimg=0.125, progress=False, eval_batch=64)
    return params.parse(data, require_all=True)


def train_toy(p, algorithm: str, data: str) -> dict:
    """A two-step run of the preset's model (WRN-28-2) and algorithm settings."""
    res = pipeline.train(p, algorithm, data)
    model = pipeline.run_dir(algorithm, data) / "model.pt"
    assert model.is_file() and 0 <= res["test/accuracy"] <= 100
    return res


@pytest.fixture
def in_tmp(tmp_path):
    old = os.getcwd()
    os.chdir(tmp_path)
    yield tmp_path
    os.chdir(old)


def test_cifar10_preset_at_toy_size(in_tmp, monkeypatch):
    (in_tmp / "archives").mkdir()
    spec = cifar.SPECS["cifar10"]
    path, _ = cifar10_archive(in_tmp / "archives" / spec.filename, np.random.default_rng(0))
    monkeypatch.setitem(cifar.SPECS, "cifar10", dataclasses.replace(spec, md5=md5(path.read_bytes())))
    p = toy(ROOT / "presets" / "cifar10.yaml", in_tmp, seeds=[1], sizes=[20], nvalid=10)
    assert pipeline.download(p).subset("train").count == 50
    s = pipeline.split(p, 1, 20)
    assert str(pipeline.split_name(p, 1, 20)) == "cifar10.1@20-10"
    assert set(s.subset("label").class_counts.values()) == {2}
    for level in p.mismatch.levels:
        m = pipeline.mismatch(p, 1, level)
        assert m.class_names == ["bird", "cat", "deer", "dog", "frog", "horse"]
        assert m.subset("label").count == 12
    aug = pipeline.preaugment(p, "cifar6_mismatch50.1@20-10", 2)
    assert aug.name == "cifar6_mismatch50_aug2.1@20-10"
    assert p.model.filters == 32 and p.model.repeat == 4 and p.tsa == "linear_schedule"
    res = train_toy(p, "realmix", "cifar6_mismatch50_aug2.1@20-10")
    assert res["step"] == 128 and "train/tsa_threshold" in res and "train/ood_kept" in res


def test_svhn_preset_at_toy_size(in_tmp, monkeypatch):
    (in_tmp / "archives").mkdir()
    for subset, n in (("train", 60), ("test", 20)):
        spec = svhn.SPECS[subset]
        svhn_mat(in_tmp / "archives" / spec.filename, np.random.default_rng(1), n)
        monkeypatch.setitem(svhn.SPECS, subset, dataclasses.replace(
            spec, md5=md5((in_tmp / "archives" / spec.filename).read_bytes())))
    p = toy(ROOT / "presets" / "svhn.yaml", in_tmp, seeds=[2], sizes=[20], nvalid=10)
    assert pipeline.download(p).name == "svhn_noextra"
    s = pipeline.split(p, 2, 20)
    assert s.subset("label").count == 20 and s.subset("valid").count == 10
    aug = pipeline.preaugment(p, "svhn_noextra.2@20-10", 2)
    assert aug.subset("unlabel").count == 3 * s.subset("unlabel").count
    assert p.train.augment == "svhn" and p.mixmatch.w_match == 250
    train_toy(p, "mixmatch", "svhn_noextra.2@20-10")


def test_fashion_presets_at_toy_size(in_tmp, monkeypatch):
    """The 10-class benchmark and the mismatch study of Fashion-MNIST on tiny IDX files (28 x 28 x 1)."""
    monkeypatch.setitem(FASHION_COUNTS, "train", 100)  # room for 20 labels, 10 validation, a pool
    install_fashion_mnist(in_tmp / "archives", monkeypatch)
    p = toy(ROOT / "presets" / "fashion.yaml", in_tmp, seeds=[1], sizes=[20], nvalid=10)
    store = pipeline.download(p)
    assert store.image_shape == [28, 28, 1] and store.class_names == fashion_mnist.CLASS_NAMES
    assert p.mismatch.levels == [] and p.train.algorithms == ["supervised", "mixmatch"]
    pipeline.split(p, 1, 20)
    pipeline.preaugment(p, "fashion.1@20-10", 2)
    train_toy(p, "realmix", "fashion_aug2.1@20-10")

    m = toy(ROOT / "presets" / "mismatch_fashion.yaml", in_tmp, seeds=[1], sizes=[20], nvalid=10)
    assert m.mismatch.labelled_classes == [0, 1, 2, 3, 4, 6]
    assert m.mismatch.unlabelled_classes == {0: [2, 3, 4, 6], 25: [5, 3, 4, 6], 50: [5, 7, 4, 6], 75: [5, 7, 8, 6],
                                             100: [5, 7, 8, 9]}
    for level in (0, 100):
        s = pipeline.mismatch(m, 1, level)
        assert s.class_names == ["T-shirt_top", "Trouser", "Pullover", "Dress", "Coat", "Shirt"]
        unlabelled = set(np.unique(s.subset("unlabel").labels).tolist())
        assert unlabelled == ({2, 3, 4, 5} if level == 0 else {-1})  # remapped ids; out-of-class = unknown
    train_toy(m, "mixmatch", "fashion6_mismatch100.1@20-10")
