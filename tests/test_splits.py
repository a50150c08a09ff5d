import json

import numpy as np
import pytest

from realmix.errors import RealmixError
from realmix.splits import SplitName, create_split, select_labelled, unlabelled_order
from realmix.store import Store, StoreWriter
from tests.conftest import make_store


def original_create_split(labels, seed, size):
    """The original create_split.py selection, transcribed independently (global legacy numpy RNG)."""
    k = labels.max() + 1
    class_id = [[i for i in range(len(labels)) if labels[i] == c] for c in range(k)]
    train_stats = np.array([len(c) for c in class_id], np.float64)
    train_stats /= train_stats.max()
    if seed:
        np.random.seed(seed)
        for c in range(k):
            np.random.shuffle(class_id[c])
    npos = np.zeros(k, np.int64)
    label = []
    for _ in range(size):
        c = np.argmax(train_stats - npos / max(npos.max(), 1))
        label.append(class_id[c][npos[c]])
        npos[c] += 1
    label = set(label)
    fifo = [[] for _ in range(k)]
    npos = np.zeros(k, np.int64)
    unlabel = []
    for i in range(len(labels)):
        if i in label:
            continue
        fifo[labels[i]].append(i)
        while True:
            c = np.argmax(train_stats - npos / max(npos.max(), 1))
            if not fifo[c]:
                break
            unlabel.append(fifo[c].pop(0))
            npos[c] += 1
    for c in range(k):
        unlabel += fifo[c]
    return sorted(label), unlabel


@pytest.mark.parametrize("seed, size", [(0, 20), (1, 250), (3, 37)])
def test_matches_original_algorithm(seed, size):
    rng = np.random.default_rng(5)
    labels = rng.choice(10, 900, p=np.linspace(1, 2, 10) / np.linspace(1, 2, 10).sum())  # imbalanced
    ref_label, ref_unlabel = original_create_split(labels, seed, size)
    cand = np.arange(len(labels))
    stats = np.bincount(labels, minlength=10) / np.bincount(labels, minlength=10).max()
    label = select_labelled([cand[labels == c] for c in range(10)], size, seed)
    assert label.tolist() == ref_label
    rest = np.setdiff1d(cand, label)
    assert unlabelled_order(labels, rest, stats).tolist() == ref_unlabel


def test_cifar_like_250_gives_25_per_class_and_balanced_validation(tmp_path):
    labels = np.tile(np.arange(10), 100)  # 1000 images, 100 per class, balanced
    ds = make_store(tmp_path / "ds", {"train": labels, "test": np.arange(10)}, k=10)
    s = create_split(ds, tmp_path / "sp", seed=1, size=250, nvalid=100)
    assert s.name == "test.1@250-100" or s.name.endswith(".1@250-100")
    assert set(s.subset("label").class_counts.values()) == {25}
    assert set(s.subset("valid").class_counts.values()) == {10}  # class-balanced interleave
    assert s.subset("unlabel").count == 1000 - 250 - 100
    idx = json.loads((tmp_path / "sp" / "indices.json").read_text())
    assert len(set(idx["label"]) | set(idx["valid"]) | set(idx["unlabel"])) == 1000
    assert set(idx["sha256"]) == {"label", "valid", "unlabel"}
    # images are the ones the indices point at
    np.testing.assert_array_equal(s.subset("valid").images[:], ds.subset("train").images[np.array(idx["valid"])])
    # deterministic, and another seed differs
    s2 = create_split(ds, tmp_path / "sp2", seed=1, size=250, nvalid=100)
    assert s2.manifest["subsets"] == s.manifest["subsets"]
    s3 = create_split(ds, tmp_path / "sp3", seed=2, size=250, nvalid=100)
    assert s3.read_json("indices.json")["label"] != idx["label"]


def test_unknown_labels_never_become_validation(tmp_path):
    train = np.repeat(np.arange(3), 10)
    ds = make_store(tmp_path / "ds", {"train": train, "unlabeled": [-1] * 50, "test": [0, 1, 2]}, k=3)
    s = create_split(ds, tmp_path / "sp", seed=1, size=6, nvalid=24)
    assert (s.subset("valid").labels >= 0).all()
    assert s.subset("unlabel").count == 50 and (s.subset("unlabel").labels == -1).all()
    with pytest.raises(RealmixError, match="exceeds the 24 images of known class"):
        create_split(ds, tmp_path / "sp2", seed=1, size=6, nvalid=25)


def test_label_size_restricts_candidates(tmp_path):
    train = np.tile(np.arange(2), 20)
    ds = make_store(tmp_path / "ds", {"train": train, "test": [0, 1]}, k=2)
    s = create_split(ds, tmp_path / "sp", seed=3, size=6, nvalid=4, label_size=10)
    assert max(s.read_json("indices.json")["label"]) < 10


def test_class_balance_round_robin():
    cand = [np.arange(0, 50), np.arange(50, 55), np.arange(55, 100)]
    picked = select_labelled(cand, 30, 1, class_balance=True)
    counts = [int(((picked >= a[0]) & (picked <= a[-1])).sum()) for a in cand]
    assert counts == [13, 5, 12]  # round-robin; class 1 runs out at 5


def test_bad_sizes(tmp_path):
    ds = make_store(tmp_path / "ds", {"train": np.tile(np.arange(2), 10), "test": [0, 1]}, k=2)
    with pytest.raises(RealmixError, match="21 labels requested but only 20"):
        create_split(ds, tmp_path / "a", seed=1, size=21, nvalid=0)
    with pytest.raises(RealmixError, match="nvalid=10 must be smaller than the 10 unlabelled"):
        create_split(ds, tmp_path / "b", seed=1, size=10, nvalid=10)
    assert not (tmp_path / "a").exists() and not (tmp_path / "b").exists()


def test_duplicates_across_parts_fail_unless_allowed(tmp_path):
    img = np.full((1, 4, 4, 3), 7, np.uint8)
    rng = np.random.default_rng(0)
    with StoreWriter(tmp_path / "ds", ["a", "b"]) as w:
        w.add("train", np.concatenate([img, rng.integers(0, 255, (9, 4, 4, 3), dtype=np.uint8)]),
              np.tile([0, 1], 5))
        w.add("test", img, np.array([0]))  # the first train image again
    ds = Store.open(tmp_path / "ds")
    with pytest.raises(RealmixError, match="identical images found across parts.*allow_duplicates"):
        create_split(ds, tmp_path / "sp", seed=0, size=2, nvalid=2)
    s = create_split(ds, tmp_path / "sp", seed=0, size=2, nvalid=2, allow_duplicates=True)
    assert sum(s.meta["shared_images"].values()) == 1


def test_stl10_folds(tmp_path):
    labels = np.tile(np.arange(10), 120)
    make_store(tmp_path / "ds", {"train": labels, "test": np.arange(10)}, k=10, source="stl10")
    folds = [list(range(f, 1200, 10))[:1000] for f in range(10)]
    (tmp_path / "ds" / "folds.json").write_text(json.dumps(folds))
    s = create_split(Store.open(tmp_path / "ds"), tmp_path / "sp", seed=2, size=1000, nvalid=10)
    assert s.read_json("indices.json")["label"] == sorted(folds[2])


def test_split_name_parse():
    n = SplitName.parse("cifar10_aug50.3@450-50")
    assert (n.name, n.seed, n.size, n.nvalid) == ("cifar10_aug50", 3, 450, 50) and str(n) == "cifar10_aug50.3@450-50"
    for bad in ("cifar-10.1@250-1", "cifar10.1@250", "c.x@1-1"):
        with pytest.raises(RealmixError, match="not a split name"):
            SplitName.parse(bad)


def test_size_all_labels_every_training_image_but_the_validation_ones(tmp_path):
    from realmix.params import SplitParams, parse_section
    from realmix.splits import SplitName

    labels = np.repeat(np.arange(3), [10, 6, 4])
    data = make_store(tmp_path / "data", {"train": labels, "unlabeled": np.full(7, -1), "test": np.arange(6) % 3},
                      k=3, hw=8, seed=5)
    got = {}
    for seed in (1, 2):
        s = create_split(data, tmp_path / f"s{seed}", seed=seed, size="all", nvalid=6)
        assert s.name == f"{data.name}.{seed}@all-6" and SplitName.parse(s.name).size == "all"
        index = s.read_json("indices.json")
        assert sorted(index["label"] + index["valid"]) == list(range(20))  # every training image, once
        assert sorted(index["unlabel"]) == list(range(20, 27))  # the pool: the unlabeled/ images only
        assert np.bincount(s.subset("valid").labels, minlength=3).tolist() == [3, 2, 1]  # follows the class prior
        assert s.subset("label").count == 14 and s.meta["labelled"] == 14
        got[seed] = index["valid"]
    assert got[1] != got[2]  # seeded
    with pytest.raises(RealmixError, match=r"split\.nvalid=20 leaves no labelled images.*lower split\.nvalid"):
        create_split(data, tmp_path / "bad", seed=1, size="all", nvalid=20)
    assert not (tmp_path / "bad").exists()
    # a label count that leaves too few training images for validation names both fixes
    with pytest.raises(RealmixError, match=r"validation images are the labelled training images not taken as "
                                           r"labels.*split\.sizes: \[all\]"):
        create_split(data, tmp_path / "bad2", seed=1, size=18, nvalid=6)
    assert parse_section(SplitParams, {"sizes": ["all", 30]}, "split").sizes == ["all", 30]
    with pytest.raises(RealmixError, match=r"split\.sizes\[0\]='al' is not allowed; it must be an integer or all"):
        parse_section(SplitParams, {"sizes": ["al"]}, "split")
