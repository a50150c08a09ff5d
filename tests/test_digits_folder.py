import json

import numpy as np
import pytest
from PIL import Image

from realmix.errors import RealmixError
from realmix.params import DatasetParams
from realmix.sources import build_dataset
from realmix.sources.digits import images_uint8
from realmix.store import Store
from tests.conftest import make_folder, tree_hash, write_image


def test_digits_store(tmp_path):
    s = build_dataset(DatasetParams(source="digits", name="digits", digits_test=500), tmp_path / "d")
    train, test = s.subset("train"), s.subset("test")
    assert (train.count, test.count) == (1297, 500)
    assert s.image_shape == [32, 32, 3] and s.class_names == [str(i) for i in range(10)]
    # stratified: every class keeps roughly its share (174..183 per class overall -> 48..51 in test)
    assert all(48 <= n <= 52 for n in test.class_counts.values())
    img = train.images[0]
    assert img.dtype == np.uint8 and train.images[:].max() == 255 and (img[..., 0] == img[..., 2]).all()
    # deterministic: a rebuild gives identical arrays
    s2 = build_dataset(DatasetParams(source="digits", name="digits", digits_test=500), tmp_path / "d2")
    assert s.manifest["subsets"] == s2.manifest["subsets"]
    assert json.loads((tmp_path / "d" / "class_mapping.json").read_text())["3"] == "3"


def test_digits_upsampling_is_pixel_repetition():
    raw = np.arange(64).reshape(1, 8, 8) % 17
    up = images_uint8(raw, 16)
    assert up.shape == (1, 16, 16, 3)
    assert up[0, 2 * 3, 2 * 5, 1] == round(raw[0, 3, 5] * 255 / 16)


def test_folder_modes_sizes_and_mapping(tmp_path):
    root = make_folder(tmp_path / "f")
    write_image(root / "train" / "cat" / "gray.png", size=(40, 20), mode="L", color=(90, 90, 90))
    write_image(root / "train" / "dog" / "alpha.png", size=(7, 30), mode="RGBA", color=(10, 250, 10))
    before = tree_hash(root)
    p = DatasetParams(source="folder", name="pets", folder=str(root), img_size=16)
    s = build_dataset(p, tmp_path / "out")
    assert s.class_names == ["cat", "dog"]
    assert {n: s.subset(n).count for n in s.subsets} == {"train": 8, "test": 4, "unlabeled": 2}
    assert s.subset("unlabeled").labels.tolist() == [-1, -1]
    assert json.loads((tmp_path / "out" / "class_mapping.json").read_text()) == {"0": "cat", "1": "dog"}
    files = json.loads((tmp_path / "out" / "files.json").read_text())
    i = files["train"].index("train/cat/gray.png")
    gray = s.subset("train").images[i]
    assert gray.shape == (16, 16, 3)
    assert (gray[8, 8] == 90).all() and (gray[0, 0] == 0).all()  # 2:1 image padded with black rows
    assert tree_hash(root) == before  # the user's folder is untouched


def test_folder_flat_numbered_names(tmp_path):
    for split, names in (("train", ["0_cat", "1_cat", "2_dog"]), ("test", ["3_dog"])):
        for n in names:
            write_image(tmp_path / "f" / split / f"{n}.png")
    s = build_dataset(DatasetParams(source="folder", name="x", folder=str(tmp_path / "f")), tmp_path / "o")
    assert s.subset("train").labels.tolist() == [0, 0, 1]


def _break(root, kind):
    if kind == "missing_train":
        import shutil

        shutil.rmtree(root / "train")
    elif kind == "empty_class":
        (root / "train" / "bird").mkdir()
    elif kind == "non_image":
        (root / "train" / "cat" / "notes.txt").write_text("hello")
    elif kind == "corrupt":
        (root / "train" / "cat" / "bad.png").write_bytes(b"\x89PNG\r\n\x1a\n garbage")
    elif kind == "truncated":
        good = (root / "train" / "cat" / "cat0.png").read_bytes()
        (root / "train" / "cat" / "trunc.png").write_bytes(good[: len(good) // 2])
    elif kind == "test_only_class":
        write_image(root / "test" / "fox" / "a.png")
    elif kind == "stray_file":
        write_image(root / "train" / "loose.png")
    return root


@pytest.mark.parametrize(
    "kind, message",
    [
        ("missing_train", r"train: folder not found"),
        ("empty_class", r"train/bird: class folder has no images"),
        ("non_image", r"notes.txt: not a PNG/JPEG image"),
        ("corrupt", r"bad.png: not a readable PNG/JPEG image"),
        ("truncated", r"trunc.png: not a readable PNG/JPEG image"),
        ("test_only_class", r"classes \['fox'\] have test images but no training images"),
        ("stray_file", r"loose.png: file next to class folders"),
    ],
)
def test_folder_bad_inputs(tmp_path, kind, message):
    root = _break(make_folder(tmp_path / "f"), kind)
    before = tree_hash(root)
    with pytest.raises(RealmixError, match=message) as e:
        build_dataset(DatasetParams(source="folder", name="x", folder=str(root)), tmp_path / "out")
    assert "\n" not in str(e.value)
    assert not (tmp_path / "out").exists() and sorted(p.name for p in tmp_path.iterdir()) == ["f"]
    assert tree_hash(root) == before


def test_jpeg_and_png_pixels_survive(tmp_path):
    root = make_folder(tmp_path / "f", n_train=1, n_test=1, n_unlabeled=0)
    write_image(root / "train" / "cat" / "red.png", size=(16, 16), color=(255, 0, 0))
    s = build_dataset(DatasetParams(source="folder", name="x", folder=str(root), img_size=16), tmp_path / "o")
    files = Store.open(tmp_path / "o").read_json("files.json")["train"]
    red = s.subset("train").images[files.index("train/cat/red.png")]
    assert (red[..., 0] == 255).all() and (red[..., 1:] == 0).all()
    assert Image.open(root / "train" / "cat" / "red.png").size == (16, 16)
