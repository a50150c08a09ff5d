"""The out-of-class report (realmix/report.py): the validation cut, the CSV by file name, the PNG grids, the AUROC of
each score on a crafted class-mismatch split, names carried from the user's files through split and mismatch, and
the report's path through evaluate."""

from __future__ import annotations

import csv
import io
import json

import numpy as np
import pytest
from PIL import Image

from realmix.errors import RealmixError
from realmix.evaluate import evaluate_run
from realmix.inference import predict_outputs
from realmix.mismatch import filter_split
from realmix.openset import pool_metrics, score_pool
from realmix.params import ReportParams
from realmix.preaugment import preaugment
from realmix.report import AUTO_SCORE, MIN_SIDE, choose_score, cuts, write_report
from realmix.splits import create_split
from realmix.store import Store, StoreWriter
from realmix.train import Trainer
from tests.conftest import make_store
from tests.helpers import Crafted, mismatch, tiny_params


def test_the_cut_keeps_the_asked_share_of_validation_images():
    scores = {"msp": np.arange(20, dtype=np.float32) / 20, "energy": -np.arange(20, dtype=np.float32)}
    for keep in (0.5, 0.9, 0.95):
        cut = cuts(scores, keep)
        for name, s in scores.items():
            flagged = (s > cut[name]).mean()
            assert flagged <= 1 - keep + 1e-9 and cut[name] in s  # a validation value, at most 1 - keep above it
    assert cuts(scores, 0.9)["msp"] == pytest.approx(0.9)  # 18 of 20 at or below 0.9: 10 % flagged
    assert cuts({"msp": np.zeros(0)}, 0.95) is None and cuts({}, 0.95) is None


def crafted_split(split: Store, tmp_path) -> Store:
    """The mismatch split of test_openset with in-class (and validation) images bright, out-of-class ones dark."""
    m = mismatch(split, tmp_path / "m")
    ood = m.subset("unlabel").labels < 0
    with StoreWriter(tmp_path / "crafted", m.class_names, meta=m.meta) as w:
        for name in m.subsets:
            images = np.asarray(m.subset(name).images[:]).copy()
            value = np.where(ood, 10, 245) if name == "unlabel" else np.full(len(images), 240)
            images[:] = (value + np.arange(len(images)) % 5)[:, None, None, None]  # distinct brightness per image
            w.add(name, images, m.subset(name).labels)
        w.write_json("names.json", {"unlabel": [f"pool/img{i:03d}.png" for i in range(len(ood))]})
    return Store.open(tmp_path / "crafted")


@pytest.mark.parametrize("heads", [False, True])
def test_report_on_a_crafted_mismatch_split(source, tmp_path, heads):  # noqa: F811
    store = crafted_split(source, tmp_path)
    model = Crafted(heads)
    pool = score_pool(model, store, batch=7)
    valid = predict_outputs(model, store.subset("valid").images, batch=7, open_head=True)
    test = store.subset("test")
    test_labels = test.labels.copy()
    probs = predict_outputs(model, test.images).probs  # Crafted predicts class 0 for bright images
    out = tmp_path / "eval"
    out.mkdir()
    summary = write_report(model, pool, valid, test.images, test_labels, probs, [f"t{i}" for i in range(9)],
                           store.class_names, out, ReportParams(grid=10, per_class=3))
    ood = pool.ood
    assert ood.sum() == 16 and len(ood) == 32
    # closed-set scores find the dark out-of-class images perfectly; the crafted open head says the opposite
    metrics = pool_metrics(model, store, [], scored=pool)
    assert metrics["auroc_msp"] == 1.0 and metrics["auroc_energy"] == 1.0
    assert summary["score"] == ("open" if heads else "msp")
    if heads:
        assert metrics["auroc_open"] == 0.0 and summary["flagged_ood"] == 0.0
    else:
        assert "auroc_open" not in metrics
        assert summary["flagged_ood"] == 1.0 and summary["flagged_in"] == 0.0 and summary["flagged"] == 16
        # the out-of-class grid lists the 10 most likely out-of-class images: all out-of-class
        assert all(ood[int(n[8:11])] for n in summary["grids"]["out_of_class"])
    assert summary["validation_images"] == 6 and summary["scored"] == 32 and summary["keep"] == 0.95

    rows = list(csv.DictReader(io.StringIO((out / "unlabelled.csv").read_text())))
    assert [r["file"] for r in rows] == sorted(pool.names) and len(rows) == 32
    assert set(rows[0]) == {"file", "predicted", "confidence", "msp", "energy", "knn", "maha", "out_of_class",
                            "true"} | ({"open"} if heads else set())
    by_file = {r["file"]: r for r in rows}
    for i, name in enumerate(pool.names):
        r = by_file[name]
        assert (r["true"] == "out-of-class") == bool(ood[i])
        assert r["out_of_class"] == str(int(float(r[summary["score"]]) > summary["cuts"][summary["score"]]))
        assert float(r["msp"]) == pytest.approx(1 - float(r["confidence"]), abs=2e-6)

    side = 8 * -(-MIN_SIDE // 8)  # 8 px images scaled up to 64 px cells, 2 px padding
    sizes = {}
    for name in ("out_of_class", "confident", "mistakes"):
        with Image.open(out / "grids" / f"{name}.png") as im:
            sizes[name] = im.size
    assert sizes["out_of_class"] == (8 * (side + 2) + 2, 2 * (side + 2) + 2)  # 10 images, 8 per row
    assert sizes["confident"] == (3 * (side + 2) + 2, 3 * (side + 2) + 2)  # a row per class, 3 per row


def test_mistakes_grid_holds_the_most_confident_wrong_test_images(source, tmp_path):  # noqa: F811
    store = crafted_split(source, tmp_path)
    model = Crafted(False)
    pool = score_pool(model, store)
    test = store.subset("test")
    labels = test.labels  # 0, 1, 2 repeated; Crafted says 0 with a confidence that grows with brightness
    probs = predict_outputs(model, test.images).probs
    out = tmp_path / "eval"
    out.mkdir()
    summary = write_report(model, pool, None, test.images, labels, probs, [f"t{i}" for i in range(9)],
                           store.class_names, out, ReportParams(grid=4))
    wrong = [i for i in range(9) if labels[i] != 0]
    expected = sorted(wrong, key=lambda i: -probs[i].max())[:4]
    assert [m["file"] for m in summary["grids"]["mistakes"]] == [f"t{i}" for i in expected]
    assert all(m["predicted"] == store.class_names[0] for m in summary["grids"]["mistakes"])
    # no validation images: no cut, so nothing is flagged and the CSV's flag column is empty
    assert summary["cuts"] is None and summary["flagged"] is None
    assert all(r["out_of_class"] == "" for r in csv.DictReader(io.StringIO((out / "unlabelled.csv").read_text())))


def test_auto_is_the_best_measured_score_where_the_model_offers_it():
    """auto = maha (the studies' best, README); a model whose outputs lack it (no reference) falls back to the
    method's own score: IOMatch's open head, else msp."""
    assert choose_score("auto", Crafted(False), ["msp", "energy", "knn", "maha"]) == "maha"
    assert choose_score("auto", Crafted(False), ["msp", "energy"]) == "msp"
    assert choose_score("auto", Crafted(True), ["msp", "energy", "open"]) == "open"
    assert choose_score("energy", Crafted(False), ["msp", "energy"]) == "energy"


def test_open_score_needs_an_open_head(source, tmp_path):  # noqa: F811
    store = crafted_split(source, tmp_path)
    model = Crafted(False)
    out = tmp_path / "eval"
    out.mkdir()
    with pytest.raises(RealmixError, match=r"report\.score=open .* no open-set head"):
        write_report(model, score_pool(model, store), None, store.subset("test").images, store.subset("test").labels,
                     predict_outputs(model, store.subset("test").images).probs, ["t"] * 9, store.class_names, out,
                     ReportParams(score="open"))


def test_names_follow_the_rows_through_split_and_mismatch(tmp_path):
    labels = np.repeat(np.arange(3), 10)
    data = make_store(tmp_path / "data", {"train": labels, "test": np.arange(6) % 3}, k=3, hw=8, seed=3)
    files = {"train": [f"train/c{y}/f{i:02d}.png" for i, y in enumerate(labels)],
             "test": [f"test/c{i % 3}/t{i}.png" for i in range(6)]}
    (data.path / "files.json").write_text(json.dumps(files))
    split = create_split(data, tmp_path / "s", seed=1, size=6, nvalid=6)
    index = json.loads((split.path / "indices.json").read_text())
    for subset in ("label", "valid", "unlabel"):
        assert split.row_names(subset) == [files["train"][i] for i in index[subset]]
        rows = np.asarray(split.subset(subset).images[:])
        assert np.array_equal(rows, np.asarray(data.subset("train").images[index[subset]]))
    assert split.row_names("test") == files["test"]
    m = filter_split(split, tmp_path / "m", name="m", labelled_classes=[0, 1], unlabelled_classes=[1, 2], level=50)
    kept = [n for n, y in zip(split.row_names("unlabel"), split.subset("unlabel").labels, strict=True) if y in (1, 2)]
    assert m.row_names("unlabel") == kept and len(kept) == m.subset("unlabel").count
    # a dataset without files.json names rows by its own subset and index
    plain = make_store(tmp_path / "plain", {"train": labels, "test": np.arange(6) % 3}, k=3, hw=8, seed=3)
    assert create_split(plain, tmp_path / "ps", seed=1, size=6, nvalid=6).row_names("test")[:2] == ["test/0", "test/1"]


def test_evaluate_writes_the_report(source, tmp_path):  # noqa: F811
    m = mismatch(source, tmp_path / "m")
    run = tmp_path / "run"
    Trainer(tiny_params(), "supervised", m, split_seed=1).fit(run)
    evaluate_run(run, m, tmp_path / "accuracy.json", batch=5, device="cpu", report=ReportParams(keep=0.5))
    got = json.loads((tmp_path / "accuracy.json").read_text())
    for key in ("auroc_msp", "auroc_energy", "flagged_ood", "flagged_in"):
        assert 0 <= got[key] <= 1, key
    evaluation = json.loads((run / "eval" / "evaluation.json").read_text())
    ev = evaluation["out_of_class"]
    assert ev["keep"] == 0.5 and ev["validation_images"] == m.subset("valid").count
    assert ev["score"] == AUTO_SCORE == "maha" and set(ev["cuts"]) == {"msp", "energy", "knn", "maha"}
    assert evaluation["open_set"]["auroc_energy"] == got["auroc_energy"]
    assert (ev["flagged_ood"], ev["flagged_in"]) == (got["flagged_ood"], got["flagged_in"])
    assert len((run / "eval" / "unlabelled.csv").read_text().splitlines()) == 1 + m.subset("unlabel").count
    assert sorted(p.name for p in (run / "eval" / "grids").iterdir()) == [
        "confident.png", "mistakes.png", "out_of_class.png"]


@pytest.mark.parametrize("storage", ["materialized", "virtual"])
def test_a_pre_augmented_pool_is_scored_on_its_originals_by_source_name(source, tmp_path, storage):  # noqa: F811
    """Both storages: the report scores each source image once, under its source name and out-of-class flag."""
    m = mismatch(source, tmp_path / "m")
    names = {"unlabel": [f"unlabeled/u{i:02d}.png" for i in range(m.subset("unlabel").count)],
             "test": [f"test/t{i}.png" for i in range(m.subset("test").count)]}
    (m.path / "names.json").write_text(json.dumps(names))
    aug = preaugment(m, tmp_path / f"aug_{storage}", copies=2, augment="cifar10", keep_originals=True, seed=4,
                     cutout_prob=0.0, shard_size=64, storage=storage, progress=False)
    assert aug.row_names("unlabel") == names["unlabel"] and aug.row_names("test") == names["test"]
    model = Crafted(heads=False)
    plain, pooled = score_pool(model, m), score_pool(model, aug)
    assert pooled.names == names["unlabel"] and pooled.scored_on == "originals of the pre-augmented pool"
    assert np.array_equal(pooled.images, plain.images) and np.array_equal(pooled.ood, plain.ood)
    assert np.array_equal(pooled.outputs.probs, plain.outputs.probs)
