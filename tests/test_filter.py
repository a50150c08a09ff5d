"""The filter step (realmix/pool_filter.py) and the filtered split it writes (realmix/store/filtered.py): a crafted
teacher keeps exactly the in-class images, the filtered split reads its source in place, pre-augmented copies are
made of the kept images only, and runs train and evaluate on it."""

from __future__ import annotations

import csv
import io
import json
from types import SimpleNamespace

import numpy as np
import pytest
from PIL import Image

from realmix import inference
from realmix.errors import RealmixError
from realmix.evaluate import evaluate_run
from realmix.openset import ood_flags, outlier_scores
from realmix.pool_filter import DROPPED_CSV, DROPPED_GRID, filter_of, filter_pool
from realmix.preaugment import preaugment
from realmix.report import cuts
from realmix.store import FilteredStore, Store, StoreWriter, VirtualStore, original_positions, write_filtered
from realmix.train import Trainer
from tests.helpers import Crafted, mismatch, tiny_params


def crafted_split(m: Store, path) -> Store:
    """The mismatch split `m` with its pool rewritten (in-class images bright, out-of-class dark) and bright
    validation images of several shades, so a confidence score separates the pool perfectly."""
    ood = ood_flags(m)
    with StoreWriter(path, m.class_names, name="crafted.1@12-6", meta=m.meta) as w:
        for name in m.subsets:
            images = np.asarray(m.subset(name).images[:]).copy()
            if name == "unlabel":
                images[:] = np.where(ood, 10, 245)[:, None, None, None]
            if name == "valid":
                images[:] = np.linspace(180, 250, len(images)).astype(np.uint8)[:, None, None, None]
            w.add(name, images, m.subset(name).labels)
    return Store.open(path)


@pytest.fixture
def teacher(monkeypatch, tmp_path):
    """A model.pt path whose `load_model` gives the crafted network (confident on bright images) for `split`."""
    def install(split: Store, *, heads: bool = False, data: str | None = None):
        record = SimpleNamespace(algorithm="supervised", data=data or split.name, class_names=split.class_names,
                                 autocast_dtype=None, label_features=None)
        monkeypatch.setattr(inference, "load_model", lambda path, weights="ema", device="cpu": (Crafted(heads), record))
        path = tmp_path / "teacher" / "model.pt"
        path.parent.mkdir(exist_ok=True)
        path.write_bytes(b"crafted")
        return path
    return install


def test_a_crafted_teacher_keeps_exactly_the_in_class_images(source, tmp_path, teacher):
    split = crafted_split(mismatch(source, tmp_path / "m"), tmp_path / "crafted")
    out = filter_pool(split, teacher(split), tmp_path / "f", name="crafted_filtered_supervised.1@12-6", score="msp",
                      keep=0.9, grid=8, batch=7, device="cpu")
    ood = ood_flags(split)
    assert isinstance(out, FilteredStore) and out.name == "crafted_filtered_supervised.1@12-6"
    pool = out.subset("unlabel")
    assert pool.count == int((~ood).sum()) == 16
    assert np.array_equal(np.asarray(pool.images[:]), np.asarray(split.subset("unlabel").images[:])[~ood])
    assert np.array_equal(pool.labels, split.subset("unlabel").labels[~ood]) and not ood_flags(out).any()
    names = split.row_names("unlabel")
    assert out.row_names("unlabel") == (None if names is None else [names[i] for i in np.flatnonzero(~ood)])
    for name in ("label", "valid", "test"):  # read from the source in place
        assert np.array_equal(np.asarray(out.subset(name).images[:]), np.asarray(split.subset(name).images[:]))
        assert np.array_equal(out.subset(name).labels, split.subset(name).labels)
    f = out.meta["filter"]
    assert f["teacher"] == "supervised" and f["score"] == "msp" and f["keep"] == 0.9
    assert (f["pool"], f["kept"], f["dropped"]) == (32, 16, 16) and f["ood_kept"] == 0.0 and f["in_dropped"] == 0.0
    # the cut is the report's: the 90 % quantile of the validation images' scores
    valid = inference.predict_outputs(Crafted(False), split.subset("valid").images, batch=7)
    assert f["cut"] == cuts(outlier_scores(valid), 0.9)["msp"]
    rows = list(csv.reader(io.StringIO((tmp_path / "f" / DROPPED_CSV).read_text())))
    assert rows[0] == ["file", "predicted", "score", "true"] and len(rows) == 17
    assert {r[3] for r in rows[1:]} == {"out-of-class"}
    assert [float(r[2]) for r in rows[1:]] == sorted((float(r[2]) for r in rows[1:]), reverse=True)
    with Image.open(tmp_path / "f" / DROPPED_GRID) as im:
        assert im.format == "PNG"
    summary, grid = filter_of(out)
    assert summary == f and grid == tmp_path / "f" / DROPPED_GRID and filter_of(split) is None
    # a teacher with the scale turned round (the crafted open head calls bright images out-of-class) keeps the dark
    dark = filter_pool(split, teacher(split, heads=True), tmp_path / "o", name="o.1@12-6", score="open", keep=0.9,
                       batch=7, device="cpu")
    assert dark.meta["filter"]["score"] == "open" and dark.meta["filter"]["ood_kept"] == 1.0


def test_the_filter_refuses_what_it_cannot_filter(source, tmp_path, teacher):
    m = mismatch(source, tmp_path / "m")
    with pytest.raises(RealmixError, match="no teacher model; train that run first"):
        filter_pool(m, tmp_path / "none" / "model.pt", tmp_path / "f", name="f", score="msp", keep=0.9, device="cpu")
    with pytest.raises(RealmixError, match=r"trained on other\.1@12-6, not on m; a teacher scores the pool"):
        filter_pool(m, teacher(m, data="other.1@12-6"), tmp_path / "f", name="f", score="msp", keep=0.9, device="cpu")
    with pytest.raises(RealmixError, match="filter.score=open is not a score of the teacher supervised"):
        filter_pool(m, teacher(m), tmp_path / "f", name="f", score="open", keep=0.9, device="cpu")
    aug = preaugment(m, tmp_path / "aug", copies=2, augment="cifar10", keep_originals=False, seed=1, cutout_prob=0.3,
                     shard_size=7, progress=False)
    with pytest.raises(RealmixError, match="a pre-augmented split cannot be filtered"):
        filter_pool(aug, teacher(aug), tmp_path / "f", name="f", score="msp", keep=0.9, device="cpu")
    with StoreWriter(tmp_path / "novalid", m.class_names, meta=m.meta) as w:
        for name in ("label", "unlabel", "test"):
            w.add(name, np.asarray(m.subset(name).images[:]), m.subset(name).labels)
    novalid = Store.open(tmp_path / "novalid")
    with pytest.raises(RealmixError, match="no validation images to place the filter's cut on; set split.nvalid"):
        filter_pool(novalid, teacher(novalid), tmp_path / "f", name="f", score="msp", keep=0.9, device="cpu")
    split = crafted_split(m, tmp_path / "crafted")
    with StoreWriter(tmp_path / "all_out", split.class_names, meta=split.meta) as w:  # every pool image dark
        for name in split.subsets:
            images = np.asarray(split.subset(name).images[:]).copy()
            if name == "unlabel":
                images[:] = 10
            w.add(name, images, split.subset(name).labels)
    all_out = Store.open(tmp_path / "all_out")
    with pytest.raises(RealmixError, match="the filtered pool would be empty .* raise filter.keep"):
        filter_pool(all_out, teacher(all_out), tmp_path / "f", name="f", score="msp", keep=0.9, device="cpu")
    assert not (tmp_path / "f").exists()


def test_a_filtered_split_reads_its_source_and_refuses_a_changed_one(source, tmp_path):
    m = mismatch(source, tmp_path / "m")
    kept = np.array([5, 1, 7, 1])  # unordered, repeated: stored once each, ascending
    f = write_filtered(m, tmp_path / "f", kept, name="f.1@12-6", meta={"filter": {"kept": 3}})
    assert np.array_equal(f.kept, [1, 5, 7]) and f.subset("unlabel").count == 3
    assert np.array_equal(np.asarray(f.subset("unlabel").images[[2, 0]]),
                          np.asarray(m.subset("unlabel").images[[7, 1]]))
    assert np.asarray(f.subset("unlabel").images[1]).shape == tuple(m.image_shape)
    assert sum(f.manifest["subsets"]["unlabel"]["class_counts"].values()) == 3
    other = write_filtered(m, tmp_path / "g", np.array([1, 5]), name="g", meta={})
    assert other.digest() != f.digest() and f.digest() == Store.open(tmp_path / "f").digest()
    with pytest.raises(RealmixError, match="kept positions outside the 32 images"):
        write_filtered(m, tmp_path / "bad", np.array([32]), name="bad", meta={})
    assert not (tmp_path / "bad").exists()
    np.save(tmp_path / "g" / "kept.npy", np.array([1, 6]))
    with pytest.raises(RealmixError, match="kept.npy: content does not match the manifest hash; rerun filter"):
        Store.open(tmp_path / "g")
    (tmp_path / "m").rename(tmp_path / "m_old")
    with pytest.raises(RealmixError, match="its source split .* is not readable"):
        Store.open(tmp_path / "f")
    mismatch(source, tmp_path / "m", remap=False)  # other labels: another content
    with pytest.raises(RealmixError, match="changed since it was filtered; rerun filter"):
        Store.open(tmp_path / "f")


def test_pre_augmented_copies_of_a_filtered_split_hold_only_the_kept_images(source, tmp_path):
    m = mismatch(source, tmp_path / "m")
    f = write_filtered(m, tmp_path / "f", np.arange(0, 32, 3), name="f.1@12-6", meta={"filter": {"kept": 11}})
    kw = dict(copies=3, augment="cifar10", keep_originals=True, seed=2, cutout_prob=0.3, shard_size=7, progress=False)
    virtual = preaugment(f, tmp_path / "v", storage="virtual", **kw)
    materialized = preaugment(f, tmp_path / "mat", storage="materialized", **kw)
    assert isinstance(virtual, VirtualStore) and isinstance(virtual.source, FilteredStore)
    assert virtual.subset("unlabel").count == materialized.subset("unlabel").count == 11 * 4
    assert np.array_equal(np.asarray(virtual.subset("unlabel").images[:]),
                          np.asarray(materialized.subset("unlabel").images[:]))
    originals = np.asarray(virtual.subset("unlabel").images[original_positions(virtual)])
    assert np.array_equal(originals, np.asarray(f.subset("unlabel").images[:]))
    assert np.array_equal(np.asarray(virtual.subset("label").images[:]), np.asarray(m.subset("label").images[:]))
    assert virtual.row_names("unlabel") == f.row_names("unlabel")
    assert filter_of(virtual)[0] == {"kept": 11}


def test_runs_train_and_evaluate_on_a_filtered_pool(source, tmp_path):
    """A real (tiny) supervised teacher filters the pool; RealMix trains on pre-augmented copies of what it kept and
    its evaluation reports what the filter dropped."""
    m = mismatch(source, tmp_path / "m")
    Trainer(tiny_params(), "supervised", m, split_seed=1).fit(tmp_path / "teacher")
    f = filter_pool(m, tmp_path / "teacher" / "model.pt", tmp_path / "f", name="m_filtered_supervised.1@12-6",
                    score="energy", keep=0.5, batch=7, device="cpu")
    info = f.meta["filter"]
    assert info["kept"] + info["dropped"] == 32 and 0 < info["kept"] < 32
    aug = preaugment(f, tmp_path / "aug", copies=2, augment="cifar10", keep_originals=True, seed=1, cutout_prob=0.3,
                     shard_size=7, progress=False, storage="virtual")
    run = tmp_path / "run"
    trainer = Trainer(tiny_params(tsa="linear_schedule"), "realmix", aug, split_seed=1)
    bank = trainer.feed.unlabel_bank  # the copies of the kept images only, computed from them
    assert len(bank) == info["kept"] * 3 and len(bank.source) == info["kept"]
    kept_images = np.asarray(f.subset("unlabel").images[:])
    assert np.array_equal(bank.source.gather(np.arange(info["kept"])).permute(0, 2, 3, 1).numpy(), kept_images)
    trainer.fit(run)
    result = evaluate_run(run, aug, tmp_path / "accuracy.json", batch=7, device="cpu")
    assert result["filter"] == info
    with Image.open(run / "eval" / "grids" / "dropped.png") as im:
        assert im.format == "PNG"
    got = json.loads((tmp_path / "accuracy.json").read_text())
    assert got["filter_dropped"] == info["dropped"] and got["filter_ood_kept"] == info["ood_kept"]
