import numpy as np
import pytest

from realmix.errors import RealmixError
from realmix.mismatch import filter_split
from tests.conftest import make_store


@pytest.fixture
def split(tmp_path):
    return make_store(tmp_path / "sp", {
        "label": np.tile(np.arange(10), 3),
        "valid": np.tile(np.arange(10), 2),
        "unlabel": np.tile(np.arange(10), 20),
        "test": np.tile(np.arange(10), 4),
    }, k=10)


def test_remapped_mismatch_50(tmp_path, split):
    s = filter_split(split, tmp_path / "m", name="c6_mismatch50.1@30-20", labelled_classes=[2, 3, 4, 5, 6, 7],
                     unlabelled_classes=[0, 1, 6, 7], remap=True, level=50)
    assert s.class_names == ["c2", "c3", "c4", "c5", "c6", "c7"]
    assert s.subset("label").count == 18 and set(s.subset("label").labels.tolist()) == set(range(6))
    assert s.subset("valid").count == 12 and (s.subset("valid").labels >= 0).all()  # no OOD in validation
    assert s.subset("test").count == 24
    u = s.subset("unlabel").labels
    assert len(u) == 80 and (u == -1).sum() == 40 and set(u[u >= 0].tolist()) == {4, 5}  # 6,7 -> 4,5
    assert s.meta["ood_fraction"] == 0.5 and s.meta["ood_classes"] == [0, 1]
    # images are carried over unchanged, in order
    src_u = split.subset("unlabel")
    sel = np.isin(src_u.labels, [0, 1, 6, 7])
    np.testing.assert_array_equal(s.subset("unlabel").images[:], src_u.images[:][sel])


def test_keep_original_ids(tmp_path, split):
    s = filter_split(split, tmp_path / "m", name="x", labelled_classes=[2, 3], unlabelled_classes=[0, 3],
                     remap=False)
    assert s.num_classes == 10 and set(s.subset("unlabel").labels.tolist()) == {0, 3}
    assert set(s.subset("label").labels.tolist()) == {2, 3}


def test_bad_class_ids_and_unknown_pool(tmp_path, split):
    with pytest.raises(RealmixError, match=r"mismatch.unlabelled_classes has class ids \[12\]"):
        filter_split(split, tmp_path / "m", name="x", labelled_classes=[1], unlabelled_classes=[12])
    unk = make_store(tmp_path / "u", {"label": [0], "unlabel": [-1, 0], "test": [0]}, k=2)
    with pytest.raises(RealmixError, match="unknown class"):
        filter_split(unk, tmp_path / "m", name="x", labelled_classes=[0], unlabelled_classes=[0])
    assert not (tmp_path / "m").exists()
