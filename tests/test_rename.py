import csv

import pytest
from PIL import Image

from realmix.errors import RealmixError
from realmix.rename import plan, rename_view
from tests.conftest import make_folder, tree_hash, write_image


def test_rename_view_is_a_copy_with_mapping(tmp_path):
    src = make_folder(tmp_path / "src", n_train=2, n_test=1, n_unlabeled=2)  # 4 + 2 + 2 = 8 files
    before = tree_hash(src)
    out, mapping = tmp_path / "data" / "renamed", tmp_path / "data" / "map.csv"
    items = rename_view(src, out, mapping, start=5, ext="png")
    assert tree_hash(src) == before  # the user's folder is never modified
    rows = list(csv.DictReader(mapping.open()))
    assert [r["old"] for r in rows] == sorted(str(p.relative_to(src)) for p in src.rglob("*.*"))
    assert rows[0] == {"old": "test/cat/cat0.png", "new": "test/05_cat.png", "class": "cat"}
    assert {r["new"] for r in rows if r["class"] == "unlabeled"} == {"unlabeled/11_unlabeled.png",
                                                                      "unlabeled/12_unlabeled.png"}
    assert len(items) == 8 and sorted(str(p.relative_to(out)) for p in out.rglob("*.png")) == sorted(
        r["new"] for r in rows)
    # a JPEG source converted to PNG keeps its pixels (within JPEG error)
    jpg = next(r for r in rows if r["old"].endswith(".jpg"))
    a, b = Image.open(src / jpg["old"]).convert("RGB"), Image.open(out / jpg["new"])
    assert b.format == "PNG" and a.size == b.size


def test_rename_numbering_width_and_keep_ext(tmp_path):
    src = tmp_path / "src"
    for i in range(3):
        write_image(src / "dog" / f"d{i}.jpg")
    items = plan(src, start=98, ext="keep")
    assert [r.new for r in items] == ["098_dog.jpg", "099_dog.jpg", "100_dog.jpg"]


def test_rename_bad_inputs(tmp_path):
    with pytest.raises(RealmixError, match="folder not found"):
        plan(tmp_path / "missing")
    write_image(tmp_path / "src" / "loose.png")
    with pytest.raises(RealmixError, match="put it in a class folder"):
        plan(tmp_path / "src")
    src = make_folder(tmp_path / "src2")
    with pytest.raises(RealmixError, match="inside the source folder"):
        rename_view(src, src / "out", tmp_path / "m.csv")
    (src / "train" / "cat" / "x.gif").write_bytes(b"GIF89a")
    before = tree_hash(src)
    with pytest.raises(RealmixError, match="x.gif: not a PNG/JPEG image"):
        rename_view(src, tmp_path / "out", tmp_path / "m.csv")
    assert not (tmp_path / "out").exists() and not (tmp_path / "m.csv").exists()
    assert tree_hash(src) == before
