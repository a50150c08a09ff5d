"""Open-set metrics of class-mismatch runs: out-of-class flags, AUROC of each score, admitted shares, their path
through evaluate into accuracy.json, the summary table and chart."""

from __future__ import annotations

import json

import numpy as np
import pytest
import torch
from PIL import Image

from realmix.evaluate import evaluate_run
from realmix.inference import Outputs, load_model
from realmix.openset import (
    Reference,
    admitted_shares,
    auroc,
    knn_distance,
    label_reference,
    mahalanobis_distance,
    ood_flags,
    outlier_scores,
    pool_metrics,
)
from realmix.preaugment import preaugment
from realmix.store import Store, original_positions
from realmix.summary import RunRef, aggregate, report, write_summary
from realmix.train import Trainer
from tests.helpers import Crafted, mismatch, tiny_params


def test_ood_flags_follow_the_mismatch_split(source, tmp_path):
    assert ood_flags(source) is None  # a plain split: its unlabelled classes are not a mismatch protocol
    for remap in (True, False):
        m = mismatch(source, tmp_path / f"m{remap}", remap)
        labels = source.subset("unlabel").labels
        kept = labels[np.isin(labels, [1, 2, 3, 4])]
        assert np.array_equal(ood_flags(m), kept >= 3)


def test_auroc_direction_and_undefined_cases():
    ood = np.array([False, False, True, True])
    assert auroc(np.array([0.1, 0.2, 0.8, 0.9]), ood) == 1.0  # out-of-class scored higher
    assert auroc(np.array([0.9, 0.8, 0.2, 0.1]), ood) == 0.0  # the wrong way round
    assert auroc(np.array([0.1, 0.8, 0.2, 0.9]), ood) == 0.75
    assert auroc(np.ones(3), np.zeros(3, bool)) is None and auroc(np.ones(3), np.ones(3, bool)) is None
    probs = np.array([[0.9, 0.1], [0.6, 0.4]])
    scores = outlier_scores(Outputs(probs, np.array([-3.0, -1.0]), np.array([[0.7, 0.1, 0.2], [0.1, 0.1, 0.8]])))
    np.testing.assert_allclose(scores["msp"], [0.1, 0.4])
    np.testing.assert_allclose(scores["energy"], [-3.0, -1.0])
    np.testing.assert_allclose(scores["open"], [0.2, 0.8])
    assert set(outlier_scores(Outputs(probs, np.zeros(2)))) == {"msp", "energy"}


def test_knn_distance_on_features_of_known_distance():
    """The kNN score is the Euclidean distance of normalised features to the k-th nearest labelled feature."""
    e1, e2 = np.eye(2, dtype=np.float32)
    bank = np.stack([e1, e2])
    diagonal = (e1 + e2) / np.sqrt(2)
    features = np.stack([e1, diagonal, -e1, -diagonal])
    np.testing.assert_allclose(knn_distance(features, bank), [0.0, np.sqrt(2 - np.sqrt(2)), np.sqrt(2), 2.0 *
                                                             np.sin(3 * np.pi / 8)], atol=1e-6)
    np.testing.assert_allclose(knn_distance(features, bank, k=2), [np.sqrt(2), np.sqrt(2 - np.sqrt(2)), 2.0,
                                                                   2.0 * np.sin(3 * np.pi / 8)], atol=1e-6)
    rng = np.random.default_rng(0)
    many = rng.normal(size=(50, 8)).astype(np.float32)
    many /= np.linalg.norm(many, axis=1, keepdims=True)
    ref = many[:7]
    np.testing.assert_array_equal(knn_distance(many, ref, chunk=3), knn_distance(many, ref))  # chunks change nothing
    with pytest.raises(ValueError, match="at least 2 labelled images"):
        knn_distance(many, ref[:1], k=2)
    out = Outputs(probs=np.full((4, 2), 0.5, np.float32), energy=np.zeros(4, np.float32), features=features)
    assert list(outlier_scores(out)) == ["msp", "energy"]  # no reference: no distance score
    assert list(outlier_scores(out, Reference(bank))) == ["msp", "energy", "knn"]  # no classes: no Mahalanobis
    assert list(outlier_scores(out, Reference(bank, np.array([0, 1])))) == ["msp", "energy", "knn", "maha"]


def test_mahalanobis_distance_weighs_directions_by_the_shared_class_covariance():
    """Two classes spread along x, tight along y: a point one unit off a class mean along y is farther than one
    unit along x, each class mean is at distance 0, and the values are the shared Ledoit-Wolf precision's."""
    from sklearn.covariance import LedoitWolf

    rng = np.random.default_rng(0)
    spread = rng.normal(size=(40, 2)) * np.array([2.0, 0.2])
    means = np.array([[5.0, 0.0], [-5.0, 0.0]])
    labels = np.repeat([0, 1], 20)
    bank = spread + means[labels]
    class_means = np.stack([bank[labels == c].mean(0) for c in (0, 1)])
    along_x, along_y = class_means[0] + [1.0, 0.0], class_means[0] + [0.0, 1.0]
    d = mahalanobis_distance(np.stack([class_means[0], class_means[1], along_x, along_y]), bank, labels)
    assert d[0] == pytest.approx(0, abs=1e-6) and d[1] == pytest.approx(0, abs=1e-6) and d[3] > 4 * d[2]
    precision = LedoitWolf(assume_centered=True).fit(bank - class_means[labels]).precision_
    assert d[3] == pytest.approx(np.sqrt(precision[1, 1]), rel=1e-5)
    assert d[2] == pytest.approx(np.sqrt(precision[0, 0]), rel=1e-5)
    many = rng.normal(size=(30, 2))
    np.testing.assert_array_equal(mahalanobis_distance(many, bank, labels, chunk=7),
                                  mahalanobis_distance(many, bank, labels))  # chunks change nothing


def test_pool_metrics_on_a_crafted_mismatch_split(source, tmp_path):
    m = mismatch(source, tmp_path / "m")
    ood = ood_flags(m)
    # rewrite the pool: in-class images bright, out-of-class images dark
    from realmix.store import StoreWriter

    with StoreWriter(tmp_path / "crafted", m.class_names, meta=m.meta) as w:
        for name in m.subsets:
            images = np.asarray(m.subset(name).images[:]).copy()
            if name == "unlabel":
                images[:] = np.where(ood, 10, 245)[:, None, None, None]
            w.add(name, images, m.subset(name).labels)
    crafted = Store.open(tmp_path / "crafted")
    history = [{"train/ood_admitted": 0.25, "train/in_admitted": 0.5}, {"train/ood_admitted": 0.75,
                                                                         "train/in_admitted": 1.0}]
    plain = pool_metrics(Crafted(False), crafted, history, batch=7)
    assert plain["auroc"] == plain["auroc_msp"] == 1.0 and plain["score"] == "msp" and "auroc_open" not in plain
    assert 0 <= plain["auroc_knn"] <= 1  # every network offers the kNN score (its pooled features)
    assert plain["ood_admitted"] == 0.5 and plain["in_admitted"] == 0.75
    assert plain["unlabelled_ood"] == int(ood.sum()) == 16 and plain["unlabelled_scored"] == 32
    headed = pool_metrics(Crafted(True), crafted, history, batch=7)
    assert headed["score"] == "open" and headed["auroc"] == headed["auroc_open"] == 0.0
    assert headed["auroc_msp"] == 1.0
    assert pool_metrics(Crafted(False), source, history) is None  # not a mismatch split
    assert admitted_shares([{"train/loss": 1.0}]) == {"ood_admitted": None, "in_admitted": None}


def test_a_pre_augmented_pool_is_scored_on_its_originals(source, tmp_path):
    m = mismatch(source, tmp_path / "m")
    aug = preaugment(m, tmp_path / "aug", copies=3, augment="cifar10", keep_originals=True, seed=2, cutout_prob=0.3,
                     shard_size=7, progress=False)
    pos = original_positions(aug)
    pool = aug.subset("unlabel")
    assert np.array_equal(np.asarray(pool.images[pos]), np.asarray(m.subset("unlabel").images[:]))
    assert np.array_equal(ood_flags(aug)[pos], ood_flags(m))
    none = preaugment(m, tmp_path / "aug0", copies=2, augment="cifar10", keep_originals=False, seed=2,
                      cutout_prob=0.3, shard_size=7, progress=False)
    assert original_positions(none) is None and original_positions(m) is None


@pytest.mark.parametrize("algorithm", ["iomatch", "realmix"])
def test_evaluate_writes_the_open_set_metrics_of_a_mismatch_run(source, tmp_path, algorithm):
    m = mismatch(source, tmp_path / "m")
    run = tmp_path / "run"
    Trainer(tiny_params(iomatch={"mu": 2}), algorithm, m, split_seed=1).fit(run)
    result = evaluate_run(run, m, tmp_path / "accuracy.json", batch=5, device="cpu")
    got = json.loads((tmp_path / "accuracy.json").read_text())
    own = "open" if algorithm == "iomatch" else "msp"
    assert result["open_set"]["score"] == own and got["auroc"] == got[f"auroc_{own}"]
    assert 0 <= got["auroc"] <= 1 and 0 <= got["auroc_msp"] <= 1
    assert 0 <= got["ood_admitted"] <= 1 and 0 <= got["in_admitted"] <= 1 and 0 <= got["auroc_knn"] <= 1
    assert 0 <= got["auroc_maha"] <= 1
    # model.pt carries the distance scores' reference: the saved EMA model's features of the labelled images
    model, record = load_model(run / "model.pt")
    label = m.subset("label")
    bank = label_reference(model, label.images, label.labels, batch=5, autocast_dtype=record.autocast_dtype)
    np.testing.assert_allclose(record.label_features.numpy(), bank.features, atol=1e-5)
    assert np.array_equal(record.label_classes.numpy(), label.labels)
    assert record.label_features.shape == (label.count, model.fc.in_features)
    history = [r for r in torch.load(run / "model.pt", weights_only=True)["history"]]
    assert all("train/ood_admitted" in r for r in history)
    assert json.loads((run / "eval" / "evaluation.json").read_text())["open_set"]["unlabelled_ood"] == 16
    # a plain split gets no open-set figures
    plain = tmp_path / "plain"
    Trainer(tiny_params(), "mixmatch", source, split_seed=1).fit(plain)
    evaluate_run(plain, source, tmp_path / "plain.json", batch=5, device="cpu")
    assert "auroc" not in json.loads((tmp_path / "plain.json").read_text())


def test_summary_aggregates_and_tabulates_the_open_set_figures(tmp_path):
    runs = [RunRef(a, f"m{lvl}.{s}@30-100", f"m{lvl}@30-100", s, mismatch=lvl)
            for a in ("fixmatch", "iomatch") for lvl in (0, 50) for s in (1, 2)]
    medians = {}
    for r in runs:
        med = {"last20": 70.0 + r.seed, "evaluations": 32}
        if r.mismatch == 50:
            med.update(auroc=0.6 if r.algorithm == "fixmatch" else 0.8 + 0.1 * r.seed, ood_admitted=0.5,
                       in_admitted=0.9)
        medians[r] = med
    rows = {(r["algorithm"], r["mismatch"]): r for r in aggregate(runs, medians)}
    assert rows["iomatch", 50]["auroc"] == pytest.approx(0.95)
    assert rows["iomatch", 50]["auroc_std"] == pytest.approx(np.std([0.9, 1.0], ddof=1))
    assert rows["iomatch", 0]["auroc"] is None
    md = report(list(rows.values()))
    assert "AUROC of the run's own out-of-class score" in md and "| iomatch | n/a | 0.95 ± 0.07 |" in md
    assert "| fixmatch | n/a | 50.00 ± 0.00 |" in md  # admitted share in percent
    # write_summary: the per-setting JSON carries them, the chart gets the open-set panels
    for r in runs:
        path = tmp_path / "metrics" / r.algorithm / r.data / "accuracy.json"
        path.parent.mkdir(parents=True)
        path.write_text(json.dumps(medians[r]))
    write_summary(runs, tmp_path / "metrics", tmp_path / "out")
    got = json.loads((tmp_path / "out" / "summary" / "iomatch" / "m50@30-100.json").read_text())
    assert got["auroc"] == pytest.approx(0.95) and got["ood_admitted"] == 0.5
    assert "auroc" not in json.loads((tmp_path / "out" / "summary" / "iomatch" / "m0@30-100.json").read_text())
    with Image.open(tmp_path / "out" / "summary.png") as im:
        assert im.size[1] == 1200  # three panels of 4 inches at 100 dpi: accuracy, AUROC, admitted share
