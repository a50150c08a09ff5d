"""Upstream archive readers (CIFAR-10/100 binary, SVHN .mat, STL-10 binary) and the archive fetcher.

Every test builds tiny archives in the exact upstream layouts, so nothing is downloaded; `fetch` is
exercised against a local HTTP server that supports Range requests.
"""

from __future__ import annotations

import dataclasses
import io
import tarfile
import threading
import urllib.request
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path

import numpy as np
import pytest

from realmix.errors import RealmixError
from realmix.params import DatasetParams
from realmix.sources import build_dataset, cifar, stl10, svhn
from realmix.sources.archive import ArchiveSpec, fetch, open_tar, verify_md5
from tests.helpers import C10_NAMES, _member, cifar10_archive, md5, one_line, rand_images, svhn_mat, write_tar

# -- CIFAR ---------------------------------------------------------------------------------------------


def collect(chunks) -> tuple[np.ndarray, np.ndarray]:
    parts = list(chunks)
    return np.concatenate([i for i, _ in parts]), np.concatenate([y for _, y in parts])


def test_cifar10_reader_layout_and_order(tmp_path: Path) -> None:
    rng = np.random.default_rng(0)
    path, truth = cifar10_archive(tmp_path / "c10.tar.gz", rng)
    raw = cifar.read_cifar10(path)
    assert raw.class_names == C10_NAMES
    assert list(raw.subsets) == ["train", "test"]
    for subset, n in [("train", 50), ("test", 20)]:
        images, labels = collect(raw.subsets[subset])
        assert images.shape == (n, 32, 32, 3) and images.dtype == np.uint8 and labels.dtype == np.int64
        np.testing.assert_array_equal(images, truth[subset][0])  # batches 1..5 in order, then test
        np.testing.assert_array_equal(labels, truth[subset][1])
    # Independent of the encoder above: record byte 1 + c*1024 + row*32 + col is pixel (row, col, c).
    with tarfile.open(path) as tf:
        record = tf.extractfile("cifar-10-batches-bin/data_batch_2.bin").read()[3073 * 4 : 3073 * 5]
    image = collect(raw.subsets["train"])[0][14]
    assert image[1, 2, 0] == record[1 + 0 * 1024 + 1 * 32 + 2]
    assert image[30, 5, 2] == record[1 + 2 * 1024 + 30 * 32 + 5]
    assert image[0, 31, 1] == record[1 + 1 * 1024 + 0 * 32 + 31]


def test_cifar100_reader_uses_fine_labels(tmp_path: Path) -> None:
    rng = np.random.default_rng(1)
    names = [f"fine{i:02d}" for i in range(100)]
    data = {}
    truth = {}
    for subset, n in [("train", 200), ("test", 100)]:
        images = rand_images(rng, n)
        fine = rng.permutation(np.arange(n) % 100).astype(np.uint8)
        coarse = (fine // 5).astype(np.uint8)
        pixels = images.transpose(0, 3, 1, 2).reshape(n, -1)
        records = np.concatenate([coarse[:, None], fine[:, None], pixels], axis=1)
        data[f"./cifar-100-binary/{subset}.bin"] = records.tobytes()  # "./" prefixes as some tar tools write
        truth[subset] = (images, fine)
    data["./cifar-100-binary/fine_label_names.txt"] = ("\n".join(names) + "\n").encode()
    data["./cifar-100-binary/coarse_label_names.txt"] = b"\n".join(b"c%d" % i for i in range(20))
    path = write_tar(tmp_path / "c100.tar.gz", data)

    raw = cifar.read_cifar100(path)
    assert raw.class_names == names
    for subset in ("train", "test"):
        images, labels = collect(raw.subsets[subset])
        np.testing.assert_array_equal(images, truth[subset][0])
        np.testing.assert_array_equal(labels, truth[subset][1].astype(np.int64))
        assert labels.max() > 19  # fine, not coarse


def test_cifar10_build_dataset_through_fetch(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    archive_dir = tmp_path / "archives"
    archive_dir.mkdir()
    spec = cifar.SPECS["cifar10"]
    path, truth = cifar10_archive(archive_dir / spec.filename, np.random.default_rng(2))
    monkeypatch.setitem(cifar.SPECS, "cifar10", dataclasses.replace(spec, md5=md5(path.read_bytes())))
    p = DatasetParams(source="cifar10", name="cifar10", archive_dir=str(archive_dir), download=False)
    store = build_dataset(p, tmp_path / "store")
    assert store.class_names == C10_NAMES
    assert {s: store.subset(s).count for s in store.subsets} == {"train": 50, "test": 20}
    np.testing.assert_array_equal(store.subset("train").images[:], truth["train"][0])
    np.testing.assert_array_equal(store.subset("test").labels, truth["test"][1])
    assert store.subset("train").class_counts == {c: 5 for c in C10_NAMES}
    assert store.read_json("class_mapping.json")["9"] == "truck"
    assert store.meta["md5"] == md5(path.read_bytes())
    assert sorted(q.name for q in archive_dir.iterdir()) == [spec.filename]  # nothing else written there

    # The official md5 is checked: the home-made file fails it with both values named.
    monkeypatch.setitem(cifar.SPECS, "cifar10", spec)
    with pytest.raises(RealmixError) as e:
        build_dataset(p, tmp_path / "store2")
    msg = one_line(e)
    assert spec.md5 in msg and md5(path.read_bytes()) in msg and spec.filename in msg
    assert not (tmp_path / "store2").exists()


# -- SVHN ----------------------------------------------------------------------------------------------


def test_svhn_reader_orientation_and_label_10(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    rng = np.random.default_rng(3)
    x, y = svhn_mat(tmp_path / "train_32x32.mat", rng, 23)
    monkeypatch.setattr(svhn, "CHUNK", 10)  # exercise chunking: 10 + 10 + 3
    chunks = list(svhn.iter_mat(tmp_path / "train_32x32.mat"))
    assert [len(c[1]) for c in chunks] == [10, 10, 3]
    raw = svhn.read_svhn({"train": tmp_path / "train_32x32.mat"})
    assert [len(y) for _, y in raw.subsets["train"]] == [10, 10, 3]
    assert raw.class_names == [str(d) for d in range(10)]
    images, labels = collect(raw.subsets["train"])
    assert images.shape == (23, 32, 32, 3)
    assert images[7, 4, 9, 2] == x[4, 9, 2, 7]  # X[row, col, channel, i] -> image i at (row, col, channel)
    np.testing.assert_array_equal(images, x.transpose(3, 0, 1, 2))
    np.testing.assert_array_equal(labels, np.where(y == 10, 0, y))
    assert labels[9] == 0 and labels[0] == 1  # label 10 is the digit 0 (the original TF code made it 9)


def test_svhn_build_dataset_with_extra(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    rng = np.random.default_rng(4)
    counts = {"train": 12, "test": 7, "extra": 15}
    for subset, n in counts.items():
        spec = svhn.SPECS[subset]
        svhn_mat(tmp_path / spec.filename, rng, n)
        md5_here = md5((tmp_path / spec.filename).read_bytes())
        monkeypatch.setitem(svhn.SPECS, subset, dataclasses.replace(spec, md5=md5_here))
    p = DatasetParams(source="svhn", name="svhn", archive_dir=str(tmp_path), download=False, svhn_extra=True)
    store = build_dataset(p, tmp_path / "store")
    assert {s: store.subset(s).count for s in store.subsets} == counts
    assert store.subset("train").class_counts["0"] == 1  # one label 10 among 12

    p = dataclasses.replace(p, svhn_extra=False)
    assert sorted(build_dataset(p, tmp_path / "store_noextra").subsets) == ["test", "train"]


def test_svhn_corrupt_mat(tmp_path: Path) -> None:
    path = tmp_path / "train_32x32.mat"
    svhn_mat(path, np.random.default_rng(5), 8)
    path.write_bytes(path.read_bytes()[: path.stat().st_size // 2])
    with pytest.raises(RealmixError) as e:
        collect(svhn.read_svhn({"train": path}).subsets["train"])
    msg = one_line(e)
    assert str(path) in msg and "corrupt" in msg and "download it again" in msg


# -- STL-10 --------------------------------------------------------------------------------------------


def stl10_archive(path: Path, rng: np.random.Generator) -> tuple[Path, dict]:
    names = ["airplane", "bird", "car", "cat", "deer", "dog", "horse", "monkey", "ship", "truck"]
    files, truth = {}, {}
    for subset, n in [("train", 20), ("test", 10), ("unlabeled", 7)]:
        images = rand_images(rng, n, 96)
        # Upstream stores each channel column-major: bytes run down a column first.
        files[f"stl10_binary/{subset}_X.bin"] = images.transpose(0, 3, 2, 1).tobytes()
        if subset != "unlabeled":
            labels = rng.permutation(np.arange(n) % 10) + 1  # 1..10
            files[f"stl10_binary/{subset}_y.bin"] = labels.astype(np.uint8).tobytes()
            truth[subset] = (images, labels - 1)
        else:
            truth[subset] = (images, np.full(n, -1))
    files["stl10_binary/class_names.txt"] = ("\n".join(names) + "\n").encode()
    folds = [[int(v) for v in rng.permutation(20)[:4]] for _ in range(10)]
    files["stl10_binary/fold_indices.txt"] = "".join(" ".join(map(str, f)) + " \n" for f in folds).encode()
    write_tar(path, files)
    return path, {"names": names, "folds": folds, **truth}


def test_stl10_reader_column_major_and_folds(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    path, truth = stl10_archive(tmp_path / "stl.tar.gz", np.random.default_rng(6))
    monkeypatch.setattr(stl10, "CHUNK", 3)  # unlabeled arrives as 3 + 3 + 1
    raw = stl10.read_stl10(path)
    assert raw.class_names == truth["names"]
    assert raw.extras["folds.json"] == truth["folds"]
    assert [len(y) for _, y in raw.subsets["unlabeled"]] == [3, 3, 1]
    for subset in ("train", "test", "unlabeled"):
        images, labels = collect(raw.subsets[subset])
        np.testing.assert_array_equal(images, truth[subset][0])
        np.testing.assert_array_equal(labels, truth[subset][1])
    # Independent check of the layout: byte c*9216 + col*96 + row of image k is pixel (row, col, c).
    with tarfile.open(path) as tf:
        data = tf.extractfile("stl10_binary/test_X.bin").read()
    image = collect(raw.subsets["test"])[0][3]
    base = 3 * 27648
    assert image[5, 40, 0] == data[base + 0 * 9216 + 40 * 96 + 5]
    assert image[90, 2, 2] == data[base + 2 * 9216 + 2 * 96 + 90]


def test_stl10_build_dataset(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    spec = stl10.SPECS["stl10"]
    path, truth = stl10_archive(tmp_path / spec.filename, np.random.default_rng(7))
    monkeypatch.setitem(stl10.SPECS, "stl10", dataclasses.replace(spec, md5=md5(path.read_bytes())))
    p = DatasetParams(source="stl10", name="stl10", archive_dir=str(tmp_path), download=False)
    store = build_dataset(p, tmp_path / "store")
    assert store.image_shape == [96, 96, 3]
    assert {s: store.subset(s).count for s in store.subsets} == {"train": 20, "test": 10, "unlabeled": 7}
    assert store.subset("unlabeled").class_counts == {**{c: 0 for c in truth["names"]}, "<unknown>": 7}
    assert store.read_json("folds.json") == truth["folds"]
    np.testing.assert_array_equal(store.subset("train").images[:], truth["train"][0])


# -- tar safety and damage -----------------------------------------------------------------------------


@pytest.mark.parametrize(
    "member",
    [
        _member("../evil"),
        _member("cifar-10-batches-bin/../../evil"),
        _member("/tmp/evil"),
        _member("cifar-10-batches-bin/link", tarfile.SYMTYPE, "/etc/passwd"),
        _member("cifar-10-batches-bin/hard", tarfile.LNKTYPE, "cifar-10-batches-bin/batches.meta.txt"),
        _member("cifar-10-batches-bin/fifo", tarfile.FIFOTYPE),
        _member("cifar-10-batches-bin/dev", tarfile.CHRTYPE),
    ],
    ids=["dotdot", "inner-dotdot", "absolute", "symlink", "hardlink", "fifo", "chardev"],
)
def test_unsafe_members_are_refused(tmp_path: Path, member: tuple[tarfile.TarInfo, bytes]) -> None:
    path = tmp_path / "bad.tar.gz"
    with tarfile.open(path, "w:gz") as tf:
        info = tarfile.TarInfo("cifar-10-batches-bin/batches.meta.txt")
        info.size = 4
        tf.addfile(info, io.BytesIO(b"a\nb\n"))
        tf.addfile(member[0], io.BytesIO(member[1]))
    with pytest.raises(RealmixError) as e:
        cifar.read_cifar10(path)
    msg = one_line(e)
    assert "unsafe member" in msg and repr(member[0].name) in msg and str(path) in msg
    assert "re-download" in msg
    assert sorted(q.name for q in tmp_path.iterdir()) == ["bad.tar.gz"]  # nothing was extracted


@pytest.mark.parametrize("mode", ["w:gz", "w"])
def test_truncated_archive(tmp_path: Path, mode: str) -> None:
    path, _ = cifar10_archive(tmp_path / "c10.tar.gz", np.random.default_rng(8))
    if mode == "w":  # the same content as an uncompressed tar
        with tarfile.open(path) as src, tarfile.open(tmp_path / "c10.tar", "w") as dst:
            for m in src.getmembers():
                dst.addfile(m, src.extractfile(m))
        path = tmp_path / "c10.tar"
    data = path.read_bytes()
    path.write_bytes(data[: len(data) // 2])
    with pytest.raises(RealmixError) as e:
        raw = cifar.read_cifar10(path)
        for subset in raw.subsets.values():
            collect(subset)
    msg = one_line(e)
    assert str(path) in msg and "truncated" in msg and "corrupt" in msg and "download it again" in msg


def test_not_an_archive(tmp_path: Path) -> None:
    path = tmp_path / "c10.tar.gz"
    path.write_bytes(b"<html>404 not found</html>")
    with pytest.raises(RealmixError) as e:
        cifar.read_cifar10(path)
    assert "truncated or corrupt" in one_line(e)


def test_open_tar_streams_records(tmp_path: Path) -> None:
    path = write_tar(tmp_path / "a.tar", {"d/x.bin": bytes(range(200)) * 3, "d/odd.bin": b"12345"}, "w")
    with open_tar(path) as archive:
        chunks = list(archive.iter_records("./d/x.bin", 6, 40))
        assert [len(c) for c in chunks] == [40, 40, 20]
        assert np.concatenate(chunks).tobytes() == bytes(range(200)) * 3
        assert archive.read("d/odd.bin") == b"12345"
        with pytest.raises(RealmixError, match="multiple of the 2-byte record"):
            list(archive.iter_records("d/odd.bin", 2, 10))
        with pytest.raises(RealmixError, match="has no member 'd/missing.bin'"):
            archive.read("d/missing.bin")


# -- fetch ---------------------------------------------------------------------------------------------


class _Handler(BaseHTTPRequestHandler):
    """Serves `server.payload` at any path, honouring `Range: bytes=N-` unless told not to."""

    def do_GET(self) -> None:  # noqa: N802 - http.server's naming
        srv = self.server
        rng = self.headers.get("Range")
        srv.ranges.append(rng)
        if srv.payload is None:
            self.send_error(404)
            return
        data = srv.payload
        if rng and srv.honour_range:
            start = int(rng.removeprefix("bytes=").split("-")[0])
            if start >= len(data):
                self.send_response(416)
                self.send_header("Content-Range", f"bytes */{len(data)}")
                self.send_header("Content-Length", "0")
                self.end_headers()
                return
            body = data[start:]
            self.send_response(206)
            self.send_header("Content-Range", f"bytes {start}-{len(data) - 1}/{len(data)}")
        else:
            body = data
            self.send_response(200)
        self.send_header("Content-Length", str(len(body)))
        self.end_headers()
        # `cut`: the connection drops after that many body bytes (HTTP/1.0 closes it on return).
        self.wfile.write(body if srv.cut is None else body[: srv.cut])

    def log_message(self, *args) -> None:
        pass


@pytest.fixture
def server():
    srv = ThreadingHTTPServer(("127.0.0.1", 0), _Handler)
    srv.payload, srv.honour_range, srv.cut, srv.ranges = None, True, None, []
    thread = threading.Thread(target=srv.serve_forever, daemon=True)
    thread.start()
    srv.url = f"http://127.0.0.1:{srv.server_address[1]}/files/blob.tar.gz"
    yield srv
    srv.shutdown()
    srv.server_close()


PAYLOAD = bytes(np.random.default_rng(9).integers(0, 256, 300_000, dtype=np.uint8))


def test_fetch_resumes_from_part(tmp_path: Path, server) -> None:
    server.payload = PAYLOAD
    spec = ArchiveSpec("blob.tar.gz", server.url, md5(PAYLOAD))
    (tmp_path / "blob.tar.gz.part").write_bytes(PAYLOAD[:123_456])
    path = fetch(spec, tmp_path, download=True)
    assert path == tmp_path / "blob.tar.gz" and path.read_bytes() == PAYLOAD
    assert server.ranges == ["bytes=123456-"]
    assert sorted(q.name for q in tmp_path.iterdir()) == ["blob.tar.gz"]
    assert fetch(spec, tmp_path, download=True) == path and len(server.ranges) == 1  # present: no network


def test_fetch_restarts_when_range_is_ignored(tmp_path: Path, server) -> None:
    server.payload, server.honour_range = PAYLOAD, False
    spec = ArchiveSpec("blob.tar.gz", server.url, md5(PAYLOAD))
    (tmp_path / "blob.tar.gz.part").write_bytes(b"stale bytes that must not be kept")
    assert fetch(spec, tmp_path, download=True).read_bytes() == PAYLOAD
    assert server.ranges == ["bytes=33-"]


def test_fetch_complete_part_gets_416(tmp_path: Path, server) -> None:
    server.payload = PAYLOAD
    spec = ArchiveSpec("blob.tar.gz", server.url, md5(PAYLOAD))
    (tmp_path / "blob.tar.gz.part").write_bytes(PAYLOAD)
    assert fetch(spec, tmp_path, download=True).read_bytes() == PAYLOAD


def test_fetch_interrupted_keeps_only_part_then_resumes(tmp_path: Path, server) -> None:
    server.payload, server.cut = PAYLOAD, 100_000
    spec = ArchiveSpec("blob.tar.gz", server.url, md5(PAYLOAD))
    with pytest.raises(RealmixError) as e:
        fetch(spec, tmp_path, download=True)
    msg = one_line(e)
    assert server.url in msg and "100000 of 300000" in msg and f"in {tmp_path}" in msg
    assert sorted(q.name for q in tmp_path.iterdir()) == ["blob.tar.gz.part"]  # no final file
    assert (tmp_path / "blob.tar.gz.part").stat().st_size == 100_000

    server.cut = None
    assert fetch(spec, tmp_path, download=True).read_bytes() == PAYLOAD
    assert server.ranges == [None, "bytes=100000-"]
    assert sorted(q.name for q in tmp_path.iterdir()) == ["blob.tar.gz"]


def test_fetch_bad_checksum_removes_download(tmp_path: Path, server) -> None:
    server.payload = PAYLOAD
    spec = ArchiveSpec("blob.tar.gz", server.url, "0" * 32)
    with pytest.raises(RealmixError) as e:
        fetch(spec, tmp_path, download=True)
    msg = one_line(e)
    assert "0" * 32 in msg and md5(PAYLOAD) in msg and server.url in msg
    assert list(tmp_path.iterdir()) == []


def test_fetch_http_error(tmp_path: Path, server) -> None:
    spec = ArchiveSpec("blob.tar.gz", server.url, md5(PAYLOAD))
    with pytest.raises(RealmixError) as e:
        fetch(spec, tmp_path / "new", download=True)
    msg = one_line(e)
    assert "HTTP 404" in msg and server.url in msg
    assert f"place blob.tar.gz (md5 {md5(PAYLOAD)}, from {server.url}) in {tmp_path / 'new'}" in msg
    assert list((tmp_path / "new").iterdir()) == []


def test_fetch_connection_refused_keeps_part(tmp_path: Path, server) -> None:
    url = server.url
    server.shutdown()
    server.server_close()  # nothing listens on that port any more
    spec = ArchiveSpec("blob.tar.gz", url, md5(PAYLOAD))
    (tmp_path / "blob.tar.gz.part").write_bytes(PAYLOAD[:10])
    with pytest.raises(RealmixError) as e:
        fetch(spec, tmp_path, download=True)
    msg = one_line(e)
    assert url in msg and "resume" in msg and "place blob.tar.gz" in msg
    assert sorted(q.name for q in tmp_path.iterdir()) == ["blob.tar.gz.part"]


def test_fetch_without_download(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    def no_network(*args, **kwargs):
        raise AssertionError("the network must not be used when download is false")

    monkeypatch.setattr(urllib.request, "urlopen", no_network)
    spec = cifar.SPECS["cifar10"]
    with pytest.raises(RealmixError) as e:
        fetch(spec, tmp_path / "archives", download=False)
    msg = one_line(e)
    assert spec.filename in msg and str(tmp_path / "archives") in msg and spec.md5 in msg and spec.url in msg
    assert not (tmp_path / "archives").exists()


def test_fetch_existing_file_with_wrong_checksum(tmp_path: Path) -> None:
    (tmp_path / "blob.tar.gz").write_bytes(b"not it")
    spec = ArchiveSpec("blob.tar.gz", "http://127.0.0.1:9/blob.tar.gz", md5(PAYLOAD))
    with pytest.raises(RealmixError) as e:
        fetch(spec, tmp_path, download=True)
    msg = one_line(e)
    assert md5(PAYLOAD) in msg and md5(b"not it") in msg and "delete it" in msg
    assert (tmp_path / "blob.tar.gz").read_bytes() == b"not it"  # the user's file is left alone
    verify_md5(tmp_path / "blob.tar.gz", md5(b"not it").upper())
