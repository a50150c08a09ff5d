"""Fashion-MNIST from its gzipped IDX files: the official files (md5) and Debian's re-compressed copies (sha256
of the decompressed contents), the download path, and every bad input through the `realmix` entry point.

Every test builds tiny IDX files (20 + 10 images of 28 x 28) in tmp_path; nothing is downloaded.
"""

from __future__ import annotations

import dataclasses
import gzip
import hashlib
import io
import shutil
import urllib.error
import urllib.request
from collections.abc import Callable
from pathlib import Path

import numpy as np
import pytest

from realmix import cli
from realmix.errors import RealmixError
from realmix.params import DatasetParams
from realmix.sources import build_dataset, fashion_mnist
from realmix.sources.fashion_mnist import BASE_URL, CLASS_NAMES, SPECS
from tests.conftest import ROOT
from tests.helpers import (
    FASHION_COUNTS,
    debian_gz,
    idx,
    install_fashion_mnist,
    md5,
    one_line,
    set_params,
    snapshot,
    tiny_contents,
)

FILES = {"train_images": "train", "train_labels": "train", "test_images": "test", "test_labels": "test"}


# -- reading -----------------------------------------------------------------------------------------------------
@pytest.mark.parametrize("form", ["official", "debian"])
def test_build_dataset_through_fetch(tmp_path: Path, monkeypatch: pytest.MonkeyPatch, form: str) -> None:
    archive_dir = tmp_path / "archives"
    arrays = install_fashion_mnist(archive_dir, monkeypatch, form)
    before = snapshot(archive_dir)
    decompressed = []
    real = gzip.GzipFile

    class Counting(real):
        def __init__(self, *args, **kwargs):
            decompressed.append(Path(kwargs["fileobj"].name).name)
            super().__init__(*args, **kwargs)

    monkeypatch.setattr(gzip, "GzipFile", Counting)
    p = DatasetParams(source="fashion_mnist", name="fashion", archive_dir=str(archive_dir), download=False,
                      img_size=32)  # img_size is ignored: the store keeps the native 28 x 28 x 1
    store = build_dataset(p, tmp_path / "store")
    assert sorted(decompressed) == sorted(s.filename for s in SPECS.values())  # each file decompressed once
    assert store.class_names == CLASS_NAMES
    assert store.image_shape == [28, 28, 1]
    assert {s: store.subset(s).count for s in store.subsets} == FASHION_COUNTS
    for subset in FASHION_COUNTS:
        images = store.subset(subset).images[:]
        assert images.shape == (FASHION_COUNTS[subset], 28, 28, 1) and images.dtype == np.uint8
        np.testing.assert_array_equal(images[..., 0], arrays[f"{subset}_images"])  # file order kept
        np.testing.assert_array_equal(store.subset(subset).labels, arrays[f"{subset}_labels"].astype(np.int64))
    # Independent of the encoder: byte 16 + i*784 + row*28 + col of the contents is pixel (row, col) of image i.
    raw = gzip.decompress((archive_dir / SPECS["train_images"].filename).read_bytes())
    image = store.subset("train").images[7]
    assert image[3, 25, 0] == raw[16 + 7 * 784 + 3 * 28 + 25] and image[27, 0, 0] == raw[16 + 7 * 784 + 27 * 28]
    assert store.subset("test").class_counts == {c: 1 for c in CLASS_NAMES}
    assert store.read_json("class_mapping.json")["0"] == "T-shirt_top"
    meta = store.meta
    assert meta["source"] == "fashion_mnist" and meta["upstream"]["test_labels"] == "t10k-labels-idx1-ubyte.gz"
    how = "md5" if form == "official" else "content sha256"
    value = {k: SPECS[k].md5 if form == "official" else SPECS[k].content_sha256 for k in SPECS}
    assert meta["verified"] == {SPECS[k].filename: f"{how} {value[k]}" for k in SPECS}
    assert snapshot(archive_dir) == before  # the archive files are only read


def test_real_specs_are_the_published_values() -> None:
    assert {s.filename: (s.md5, s.content_sha256[:8]) for s in SPECS.values()} == {
        "train-images-idx3-ubyte.gz": ("8d4fb7e6c68d591d4c3dfef9ec88bf0d", "c59f468a"),
        "train-labels-idx1-ubyte.gz": ("25c81989df183df01b3e8a0aad5dffbe", "bad3541b"),
        "t10k-images-idx3-ubyte.gz": ("bef4ecab320f06d8554ea6380940ec79", "5b4141f0"),
        "t10k-labels-idx1-ubyte.gz": ("bb300cfdad3c16e7a12a480ee83cd310", "0402a96d"),
    }
    assert all(s.url == BASE_URL + s.filename for s in SPECS.values())
    assert all("/" not in c and " " not in c for c in CLASS_NAMES) and len(set(CLASS_NAMES)) == 10


def test_parse_idx_checks_in_order(tmp_path: Path) -> None:
    path = tmp_path / "x.gz"
    images = np.zeros((2, 28, 28), np.uint8)
    assert fashion_mnist.parse_idx(path, idx(images), fashion_mnist.IMAGES_MAGIC).shape == (2, 28, 28)
    for data, says in [
        (b"\x00\x00", "too short for an IDX header"),
        (idx(images, 0x00000D03), "magic number 0x00000d03 is not 0x00000803"),
        (idx(images, 0x00000802), "declares 2 dimension(s), expected 3 for images"),
        (idx(images)[:12], "shorter than its 16-byte IDX header"),
        (idx(np.zeros((2, 28, 27), np.uint8)), "images are 28 x 27, expected 28 x 28"),
        (idx(images)[:-1], "ends early: 1567 data bytes for 2 images, expected 1568"),
        (idx(images) + b"\x00", "1 trailing bytes after the 2 images"),
    ]:
        with pytest.raises(RealmixError) as e:
            fashion_mnist.parse_idx(path, data, fashion_mnist.IMAGES_MAGIC)
        msg = one_line(e)
        assert says in msg and str(path) in msg and "delete it and get the official file again" in msg
    with pytest.raises(RealmixError, match=r"declares 3 dimension\(s\), expected 1 for labels"):
        fashion_mnist.parse_idx(path, idx(images), fashion_mnist.LABELS_MAGIC)


# -- downloading -------------------------------------------------------------------------------------------------
class FakeWeb:
    """Stands in for urllib.request.urlopen: serves `files` by URL, honours `Range: bytes=N-`, and can drop the
    connection after `cut` bytes of one URL's body (once), as a broken download does."""

    def __init__(self, files: dict[str, bytes]):
        self.files = files
        self.requests: list[tuple[str, str | None]] = []
        self.cut: dict[str, int] = {}

    def __call__(self, request: urllib.request.Request, timeout: float | None = None):
        url, rng = request.full_url, request.get_header("Range")
        self.requests.append((url, rng))
        data = self.files[url]
        start = int(rng.removeprefix("bytes=").split("-")[0]) if rng else 0
        body = data[start:]
        resp = io.BytesIO(body[: self.cut.pop(url)] if url in self.cut else body)
        resp.status = 206 if rng else 200
        resp.headers = {"Content-Length": str(len(body))}
        if rng:
            resp.headers["Content-Range"] = f"bytes {start}-{len(data) - 1}/{len(data)}"
        return resp


def test_download_resumes_and_checks_md5(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    # the official files, as the server has them
    official = install_fashion_mnist(tmp_path / "upstream", monkeypatch, "official")
    web = FakeWeb({s.url: (tmp_path / "upstream" / s.filename).read_bytes() for s in SPECS.values()})
    monkeypatch.setattr(urllib.request, "urlopen", web)
    archive_dir = tmp_path / "archives"
    p = DatasetParams(source="fashion_mnist", name="fashion", archive_dir=str(archive_dir), download=True)
    first = SPECS["train_images"]
    web.cut[first.url] = 5000  # the connection drops mid-file
    with pytest.raises(RealmixError) as e:
        build_dataset(p, tmp_path / "store")
    msg = one_line(e)
    assert f"could not download {first.url}" in msg and "got 5000 of" in msg and "apt-get install" in msg
    assert sorted(q.name for q in archive_dir.iterdir()) == [first.filename + ".part"]
    assert not (tmp_path / "store").exists()

    store = build_dataset(p, tmp_path / "store")  # resumes the .part, downloads the other three
    assert (first.url, "bytes=5000-") in web.requests
    assert [u for u, _ in web.requests].count(first.url) == 2 and len(web.requests) == 5
    assert sorted(q.name for q in archive_dir.iterdir()) == sorted(s.filename for s in SPECS.values())
    np.testing.assert_array_equal(store.subset("train").images[..., 0], official["train_images"])
    assert set(store.meta["verified"].values()) == {f"md5 {s.md5}" for s in SPECS.values()}

    # A download must be the official file: the same contents compressed otherwise are refused and removed.
    shutil.rmtree(archive_dir)
    web.files[first.url] = debian_gz(tiny_contents()[0]["train_images"])
    with pytest.raises(RealmixError) as e:
        build_dataset(p, tmp_path / "store2")
    msg = one_line(e)
    assert first.url in msg and f"official file has md5 {first.md5}" in msg and "the download was removed" in msg
    assert list(archive_dir.iterdir()) == [] and not (tmp_path / "store2").exists()


# -- bad inputs through the entry point --------------------------------------------------------------------------
@pytest.fixture
def proj(tmp_path: Path) -> Path:
    proj = tmp_path / "proj"
    proj.mkdir()
    shutil.copy(ROOT / "params.yaml", proj / "params.yaml")
    set_params(proj, dataset={"source": "fashion_mnist", "name": "fashion", "archive_dir": "archives",
                              "download": False})
    return proj


def with_content(key: str, data: bytes, form: str = "official") -> Callable[[Path, pytest.MonkeyPatch], None]:
    """One file's decompressed contents replaced, the checksums made to match it (so the parser sees it)."""
    def setup(proj: Path, mp: pytest.MonkeyPatch) -> None:
        install_fashion_mnist(proj / "archives", mp, form, {key: data})
    return setup


def truncated(form: str, match_md5: bool) -> Callable[[Path, pytest.MonkeyPatch], None]:
    def setup(proj: Path, mp: pytest.MonkeyPatch) -> None:
        install_fashion_mnist(proj / "archives", mp, form)
        path = proj / "archives" / SPECS["train_images"].filename
        path.write_bytes(path.read_bytes()[:3000])
        if match_md5:  # only a home-made spec can match a truncated file: then the reader meets the damage
            mp.setitem(SPECS, "train_images", dataclasses.replace(SPECS["train_images"], md5=md5(path.read_bytes())))
    return setup


def wrong_checksum(proj: Path, mp: pytest.MonkeyPatch) -> None:
    install_fashion_mnist(proj / "archives", mp, "debian")
    other = tiny_contents(seed=1)[0]["test_images"]  # a valid IDX file, but not the one the specs describe
    (proj / "archives" / SPECS["test_images"].filename).write_bytes(debian_gz(other))


def missing(proj: Path, mp: pytest.MonkeyPatch) -> None:
    install_fashion_mnist(proj / "archives", mp, "official")
    for key in ("train_labels", "test_images"):
        (proj / "archives" / SPECS[key].filename).unlink()


def offline(proj: Path, mp: pytest.MonkeyPatch) -> None:
    missing(proj, mp)
    set_params(proj, dataset={"download": True})

    def no_network(*args, **kwargs):
        raise urllib.error.URLError(OSError(-3, "Temporary failure in name resolution"))

    mp.setattr(urllib.request, "urlopen", no_network)


IMAGES = tiny_contents()[1]
TRAIN_IMAGES = "archives/train-images-idx3-ubyte.gz"
TRAIN_LABELS = "archives/train-labels-idx1-ubyte.gz"
FIX = "delete it and get the official file again"
TRUNCATED = (TRAIN_IMAGES, "truncated or corrupt", "delete it and get it again")
ALL_FILES = tuple(s.filename for s in SPECS.values())
GET = ("apt-get install dataset-fashion-mnist", "dataset.archive_dir: /usr/share/datasets/fashion-mnist", BASE_URL)

CASES = {
    "truncated gz": (truncated("official", False), TRUNCATED),
    "truncated gz, md5 matching": (truncated("official", True), TRUNCATED),
    "truncated gz, debian copy": (truncated("debian", False), TRUNCATED),
    "wrong magic number": (with_content("train_images", idx(IMAGES["train_images"], 0x00000D03)),
                           (TRAIN_IMAGES, "magic number 0x00000d03 is not 0x00000803", FIX)),
    "labels file as images": (with_content("train_images", idx(IMAGES["train_labels"]), "debian"),
                              (TRAIN_IMAGES, "declares 1 dimension(s), expected 3", FIX)),
    "images of another size": (with_content("test_images", idx(np.zeros((10, 32, 32), np.uint8))),
                               ("archives/t10k-images-idx3-ubyte.gz", "images are 32 x 32, expected 28 x 28", FIX)),
    "trailing bytes": (with_content("train_images", idx(IMAGES["train_images"]) + b"\x00" * 10),
                       (TRAIN_IMAGES, "10 trailing bytes after the 20 images", FIX)),
    "count mismatch": (with_content("train_labels", idx(IMAGES["train_labels"][:19])),
                       (TRAIN_LABELS, "19 labels but train-images-idx3-ubyte.gz holds 20 images", FIX)),
    "label outside 0-9": (with_content("train_labels", idx(np.r_[IMAGES["train_labels"][:5], 10,
                                                                 IMAGES["train_labels"][6:]])),
                          (TRAIN_LABELS, "label 10 of image 5 is outside 0..9", FIX)),
    "wrong checksum": (wrong_checksum, ("archives/t10k-images-idx3-ubyte.gz", "md5 is", "sha256",
                                        "delete it and get it again")),
    "missing files": (missing, ("archives: Fashion-MNIST needs", *ALL_FILES, "dataset.download is false", *GET)),
    "offline": (offline, ("archives: Fashion-MNIST needs", *ALL_FILES, "could not download", "name resolution",
                          *GET)),
}


@pytest.mark.parametrize("case", CASES, ids=list(CASES))
def test_bad_input(case: str, proj: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture) -> None:
    setup, says = CASES[case]
    monkeypatch.chdir(proj)
    setup(proj, monkeypatch)
    capsys.readouterr()
    before = snapshot(proj)
    with pytest.raises(SystemExit) as e:
        cli.main(["--params", "params.yaml", "download"])
    err = capsys.readouterr().err
    lines = [line for line in err.splitlines() if line.strip()]
    assert e.value.code == 2, err
    assert len(lines) == 1 and lines[0].startswith("error: "), err
    for text in says:
        assert text in lines[0], f"{text!r} not in {lines[0]!r}"
    assert snapshot(proj) == before and not (proj / "data").exists()
    if case == "wrong checksum":  # both checks named, with both values each
        spec, gz = SPECS["test_images"], (proj / "archives" / SPECS["test_images"].filename).read_bytes()
        for value in (spec.md5, md5(gz), spec.content_sha256, hashlib.sha256(gzip.decompress(gz)).hexdigest()):
            assert value in lines[0]


# -- every stage on 1-channel 28 x 28 images ---------------------------------------------------------------------
def test_every_stage_at_native_size(proj: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture
                                    ) -> None:
    """The tiny store (28 x 28 x 1) through split, mismatch, pre-augmentation (cifar10 and svhn), training with the
    scales computed from 28 px, evaluation, summary (tables and charts) and `realmix predict` on a folder."""
    from PIL import Image

    from realmix import params, pipeline
    from realmix.inference import load_model
    from realmix.store import Store

    monkeypatch.chdir(proj)
    install_fashion_mnist(proj / "archives", monkeypatch)
    set_params(proj, split={"seeds": [1], "sizes": [10], "nvalid": 2},
               mismatch={"name": "fashion6", "size": 10, "levels": [0], "labelled_classes": [0, 1, 2, 3, 4, 6],
                         "unlabelled_classes": {0: [2, 3, 4, 6]}},
               preaugment={"copies": [2], "mismatch_copies": [], "augment": "cifar10"},
               model={"filters": 4, "repeat": 1, "scales": 0},
               train={"algorithms": ["mixmatch"], "aug_algorithms": ["realmix"], "mismatch_algorithms": ["supervised"],
                      "mismatch_aug_algorithms": [], "batch": 4, "train_kimg": 0.0078125, "report_kimg": 0.00390625,
                      "save_kimg": 0.0078125, "eval_batch": 16, "progress": False, "threads": 1, "device": "cpu"})
    p = params.load("params.yaml")
    assert pipeline.download(p).image_shape == [28, 28, 1]
    split = pipeline.split(p, 1, 10)
    assert split.image_shape == [28, 28, 1] and split.subset("label").count == 10
    assert pipeline.mismatch(p, 1, 0).class_names == ["T-shirt_top", "Trouser", "Pullover", "Dress", "Coat", "Shirt"]
    for augment in ("svhn", "cifar10"):  # the last one stays for training
        set_params(proj, preaugment={"augment": augment})
        aug = pipeline.preaugment(params.load("params.yaml"), "fashion.1@10-2", 2)
        assert aug.image_shape == [28, 28, 1] and aug.subset("unlabel").count == 3 * split.subset("unlabel").count
        copies = aug.subset("unlabel").images[:]
        assert not np.array_equal(copies[: len(copies) // 3], copies[len(copies) // 3 : 2 * len(copies) // 3])
    for algorithm, data in (("mixmatch", "fashion.1@10-2"), ("realmix", "fashion_aug2.1@10-2"),
                            ("supervised", "fashion6_mismatch0.1@10-2")):
        assert pipeline.train(p, algorithm, data)["step"] == 8
        assert 0 <= pipeline.evaluate(p, algorithm, data)["accuracy"] <= 100
    model, record = load_model(pipeline.run_dir("mixmatch", "fashion.1@10-2") / "model.pt")
    assert record.image_shape == [28, 28, 1] and model.stem.in_channels == 1
    assert len(model.blocks) == 3  # scales = ceil(log2 28) - 2: 28 -> 14 -> 7
    assert len(pipeline.summary(p)) == 3 and Path("metrics/summary.png").is_file()
    assert Path("runs/realmix/fashion_aug2.1@10-2/eval/accuracy.png").is_file()

    test = Store.open("data/datasets/fashion").subset("test")
    for i in range(3):
        folder = Path("photos") / CLASS_NAMES[int(test.labels[i])]
        folder.mkdir(parents=True, exist_ok=True)
        Image.fromarray(test.images[i][..., 0]).save(folder / f"{i}.png")  # grayscale, native size
    Image.new("RGB", (40, 30), (200, 30, 40)).save("photos/other.jpg")  # colour, another size
    capsys.readouterr()
    cli.main(["predict", "--model", "runs/mixmatch/fashion.1@10-2/model.pt", "--images", "photos", "--out", "pred"])
    out = capsys.readouterr().out
    assert "predicted 4 images" in out and "on 3 labelled" in out
    rows = Path("pred/predictions.csv").read_text().splitlines()
    assert len(rows) == 5 and all(r.split(",")[1] in CLASS_NAMES for r in rows[1:])
