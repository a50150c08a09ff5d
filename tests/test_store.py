import json

import numpy as np
import pytest

from realmix.errors import RealmixError
from realmix.store import Store, StoreWriter
from tests.conftest import make_store


def test_roundtrip_shards_and_manifest(tmp_path):
    s = make_store(tmp_path / "s", {"train": [0, 1, 1, -1, 2, 0, 0], "test": [2, 2]}, k=3, shard_size=3)
    assert sorted(s.subsets) == ["test", "train"]
    train = s.subset("train")
    assert train.count == 7 and len(train.shards) == 3
    assert train.class_counts == {"c0": 3, "c1": 2, "c2": 1, "<unknown>": 1}
    assert s.image_shape == [4, 4, 3]
    assert train.labels.tolist() == [0, 1, 1, -1, 2, 0, 0]
    full = np.concatenate([im for im, _ in train.iter_shards()])
    idx = np.array([6, 0, 4, 3])
    np.testing.assert_array_equal(train.images[idx], full[idx])
    np.testing.assert_array_equal(train.images[2:5], full[2:5])
    np.testing.assert_array_equal(train.images[5], full[5])
    assert isinstance(train.images.parts[0], np.memmap)  # reads are memory-mapped
    manifest = json.loads((tmp_path / "s" / "manifest.json").read_text())
    assert all(len(sh["sha256_images"]) == 64 for sh in manifest["subsets"]["train"]["shards"])
    s.verify()


def test_verify_detects_tampering(tmp_path):
    s = make_store(tmp_path / "s", {"train": [0, 1]}, k=2)
    f = tmp_path / "s" / s.subset("train").shards[0]["images"]
    a = np.load(f)
    a[0, 0, 0, 0] ^= 1
    np.save(f, a)
    with pytest.raises(RealmixError, match="does not match"):
        Store.open(tmp_path / "s").verify()


def test_failed_write_leaves_nothing_and_keeps_old(tmp_path):
    make_store(tmp_path / "s", {"train": [0]}, k=2)
    before = (tmp_path / "s" / "manifest.json").read_text()
    with pytest.raises(ValueError), StoreWriter(tmp_path / "s", ["a", "b"]) as w:
        w.add("train", np.zeros((1, 2, 2, 3), np.uint8), np.array([0]))
        w.add("train", np.zeros((1, 2, 2, 3), np.uint8), np.array([5]))  # label out of range
    assert (tmp_path / "s" / "manifest.json").read_text() == before
    assert sorted(p.name for p in tmp_path.iterdir()) == ["s"]  # no temporary left behind


def test_bad_arrays_rejected(tmp_path):
    with StoreWriter(tmp_path / "s", ["a"]) as w:
        with pytest.raises(ValueError, match="uint8"):
            w.add("x", np.zeros((1, 2, 2, 3), np.float32), np.array([0]))
        with pytest.raises(ValueError, match="labels"):
            w.add("x", np.zeros((2, 2, 2, 3), np.uint8), np.array([0]))
        w.add("x", np.zeros((1, 2, 2, 3), np.uint8), np.array([0]))
        with pytest.raises(ValueError, match="shape"):
            w.add("y", np.zeros((1, 3, 3, 3), np.uint8), np.array([0]))


def test_copy_subset_is_byte_identical(tmp_path):
    src = make_store(tmp_path / "a", {"test": [0, 1, 2]}, k=3, shard_size=2)
    with StoreWriter(tmp_path / "b", src.class_names) as w:
        w.copy_subset("test", src.subset("test"))
    b = Store.open(tmp_path / "b")
    np.testing.assert_array_equal(b.subset("test").images[:], src.subset("test").images[:])
    assert b.subset("test").class_counts == src.subset("test").class_counts
    b.verify()


def test_open_errors_are_one_line(tmp_path):
    with pytest.raises(RealmixError, match="not a dataset store") as e:
        Store.open(tmp_path)
    assert "\n" not in str(e.value)
    (tmp_path / "manifest.json").write_text("{not json")
    with pytest.raises(RealmixError, match="unreadable manifest"):
        Store.open(tmp_path)
