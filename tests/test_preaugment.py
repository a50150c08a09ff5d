"""realmix.preaugment on tiny split stores: counts, labels, copied subsets, determinism, sharding, atomicity, and
the two storages (materialized, virtual) giving the same pool bit for bit."""

from __future__ import annotations

import hashlib
from pathlib import Path

import numpy as np
import pytest
import torch

from realmix import preaugment as pa
from realmix.augment import AUGMENTS
from realmix.data_stream import ImageBank, PoolBank, image_bank
from realmix.errors import RealmixError
from realmix.store import Store, StoreWriter, item_order, original_positions

CLASSES = ["a", "b", "c"]
SIZES = {"label": 6, "unlabel": 20, "valid": 5, "test": 7}
DEFAULTS = dict(copies=3, augment="cifar10", keep_originals=True, seed=1, cutout_prob=0.3, shard_size=1000,
                storage="materialized")


def make_split(path: Path, *, constant: bool = False, nvalid: int | None = SIZES["valid"]) -> Store:
    """Random 8x8 RGB images (or, with `constant`, unlabelled image i filled with the value 10*i + 5)."""
    rng = np.random.default_rng(0)
    with StoreWriter(path, CLASSES, name="tiny.1@6-5", meta={"split": {"seed": 1}}, shard_size=4) as w:
        for subset, n in {**SIZES, "valid": nvalid}.items():
            if n is None:
                continue
            images = rng.integers(0, 256, (n, 8, 8, 3), dtype=np.uint8)
            if constant and subset == "unlabel":
                images[:] = (np.arange(n, dtype=np.uint8) * 10 + 5)[:, None, None, None]
            labels = rng.integers(-1 if subset == "unlabel" else 0, len(CLASSES), n)
            w.add(subset, images, labels)
    return Store.open(path)


def run(src: Store, out: Path, **kw) -> Store:
    return pa.preaugment(src, out, **{**DEFAULTS, "progress": False, **kw})


def digests(images: np.ndarray) -> list[str]:
    return [hashlib.sha256(img.tobytes()).hexdigest() for img in images]


def shard_hashes(store: Store, subset: str) -> list[tuple[str, str]]:
    return [(s["sha256_images"], s["sha256_labels"]) for s in store.subset(subset).shards]


@pytest.mark.parametrize("keep", [True, False])
def test_counts_and_labels_follow_their_source(tmp_path, keep):
    src = make_split(tmp_path / "src", constant=True)
    out = run(src, tmp_path / "out", keep_originals=keep)
    n, copies = SIZES["unlabel"], DEFAULTS["copies"]
    pool = out.subset("unlabel")
    assert pool.count == n * (copies + keep)
    images, labels = pool.images[:], pool.labels
    # A mirrored/shifted constant image stays constant: its value identifies the source image.
    assert np.all(images == images[:, :1, :1, :1])
    source = (images[:, 0, 0, 0].astype(int) - 5) // 10
    assert np.bincount(source, minlength=n).tolist() == [copies + keep] * n
    assert np.array_equal(labels, src.subset("unlabel").labels[source])
    out.verify()


def test_other_subsets_are_copied_verbatim_and_meta_is_recorded(tmp_path):
    src = make_split(tmp_path / "src")
    out = run(src, tmp_path / "out")
    assert sorted(out.subsets) == ["label", "test", "unlabel", "valid"]
    for subset in ("label", "valid", "test"):
        assert out.manifest["subsets"][subset] == src.manifest["subsets"][subset]
        for s in out.subset(subset).shards:
            for key in ("images", "labels"):
                assert (out.path / s[key]).read_bytes() == (src.path / s[key]).read_bytes()
    assert out.class_names == CLASSES and out.name == "out"
    assert out.meta["split"] == {"seed": 1}  # the source's provenance is kept
    assert out.meta["preaugment"] == {
        **DEFAULTS,
        "draws": "splitmix64/1",
        "source": "tiny.1@6-5",
        "source_sha256": src.digest(),
    }
    assert run(src, tmp_path / "named", name="tiny_aug3.1@6-5").name == "tiny_aug3.1@6-5"


def test_validation_images_never_enter_the_pool(tmp_path):
    src = make_split(tmp_path / "src")
    out = run(src, tmp_path / "out", augment="none", copies=2)
    pool = set(digests(out.subset("unlabel").images[:]))
    assert pool == set(digests(src.subset("unlabel").images[:]))  # with "none": exactly the sources
    assert not pool & set(digests(src.subset("valid").images[:]))
    out = run(src, tmp_path / "out2")
    assert not set(digests(out.subset("unlabel").images[:])) & set(digests(out.subset("valid").images[:]))


def test_originals_kept_unaugmented_and_copies_spread(tmp_path):
    src = make_split(tmp_path / "src")
    out = run(src, tmp_path / "out", copies=5)
    images = out.subset("unlabel").images[:]
    positions = original_positions(out)
    assert np.array_equal(images[positions], src.subset("unlabel").images[:])  # each original, unaugmented
    pool = digests(images)
    originals = digests(src.subset("unlabel").images[:])
    # copies are augmented: on 8x8 images a copy equals its original only by chance (no flip, zero shift: 1/162)
    assert len(originals) <= sum(pool.count(d) for d in originals) <= len(originals) + 4
    assert sorted(positions.tolist()) != list(range(len(originals)))  # shuffled, not a block at the front


def test_deterministic_and_seed_dependent(tmp_path):
    src = make_split(tmp_path / "src")
    a = run(src, tmp_path / "a")
    b = run(src, tmp_path / "b")
    c = run(src, tmp_path / "c", seed=2)
    assert shard_hashes(a, "unlabel") == shard_hashes(b, "unlabel")
    assert a.manifest["subsets"] == b.manifest["subsets"]
    assert shard_hashes(a, "unlabel") != shard_hashes(c, "unlabel")


@pytest.mark.parametrize("augment", ["cifar10", "color", "cutout"])
def test_shard_size_and_writer_thread_do_not_change_content(tmp_path, augment):
    src = make_split(tmp_path / "src")
    one = run(src, tmp_path / "one", augment=augment)
    many = run(src, tmp_path / "many", augment=augment, shard_size=7)
    fg = run(src, tmp_path / "fg", augment=augment, shard_size=7, background_write=False)
    assert len(one.subset("unlabel").shards) == 1
    assert [s["count"] for s in many.subset("unlabel").shards] == [7] * 11 + [3]
    assert np.array_equal(one.subset("unlabel").images[:], many.subset("unlabel").images[:])
    assert np.array_equal(one.subset("unlabel").labels, many.subset("unlabel").labels)
    assert many.manifest["subsets"] == fg.manifest["subsets"]


def test_content_is_independent_of_chunking_across_chunks(tmp_path, monkeypatch):
    """With several augmentation chunks, shard boundaries that cut chunks still give the same pool."""
    monkeypatch.setattr(pa, "CHUNK", 16)
    src = make_split(tmp_path / "src")
    one = run(src, tmp_path / "one")
    many = run(src, tmp_path / "many", shard_size=5)
    assert np.array_equal(one.subset("unlabel").images[:], many.subset("unlabel").images[:])


def test_missing_or_empty_valid(tmp_path):
    out = run(make_split(tmp_path / "src", nvalid=None), tmp_path / "out")
    assert sorted(out.subsets) == ["label", "test", "unlabel"]
    out = run(make_split(tmp_path / "src0", nvalid=0), tmp_path / "out0")
    assert out.subset("valid").count == 0 and out.subset("unlabel").count == 80


@pytest.mark.parametrize("background", [True, False])
def test_failure_midway_leaves_no_output(tmp_path, monkeypatch, background):
    src = make_split(tmp_path / "src")
    calls = []
    real = StoreWriter.add_shard

    def flaky(self, subset, images, labels):
        calls.append(subset)
        if len(calls) == 3:
            raise OSError("disk full")
        return real(self, subset, images, labels)

    monkeypatch.setattr(StoreWriter, "add_shard", flaky)
    with pytest.raises(OSError, match="disk full"):
        run(src, tmp_path / "out", shard_size=7, background_write=background)
    assert sorted(p.name for p in tmp_path.iterdir()) == ["src"]  # no output, no temporary left behind


def test_bad_arguments(tmp_path):
    src = make_split(tmp_path / "src")
    with pytest.raises(RealmixError, match="unknown augment"):
        run(src, tmp_path / "out", augment="mirror")
    with pytest.raises(RealmixError, match="copies"):
        run(src, tmp_path / "out", copies=0)
    with pytest.raises(RealmixError, match="cutout_prob"):
        run(src, tmp_path / "out", cutout_prob=1.5)
    with StoreWriter(tmp_path / "raw", CLASSES) as w:
        w.add("train", np.zeros((2, 8, 8, 3), np.uint8), np.zeros(2, np.int64))
    with pytest.raises(RealmixError, match="no 'unlabel' subset"):
        run(Store.open(tmp_path / "raw"), tmp_path / "out")
    assert not (tmp_path / "out").exists()


# -- the two storages --------------------------------------------------------------------------------------
@pytest.mark.parametrize("augment", AUGMENTS)
def test_virtual_and_materialized_pools_are_byte_identical(tmp_path, monkeypatch, augment):
    monkeypatch.setattr(pa, "CHUNK", 7)  # several compute batches on both sides, cut differently from the shards
    src = make_split(tmp_path / "src")
    kw = dict(augment=augment, cutout_prob=0.6, keep_originals=augment != "cutout")
    m = run(src, tmp_path / "m", shard_size=9, **kw)
    v = run(src, tmp_path / "v", storage="virtual", **kw)
    assert isinstance(v, pa.VirtualStore) and not isinstance(m, pa.VirtualStore)
    mp, vp = m.subset("unlabel"), v.subset("unlabel")
    images = mp.images[:]
    assert vp.count == mp.count == len(images) and vp.class_counts == mp.class_counts
    assert np.array_equal(vp.images[:], images)  # every item, byte for byte
    order = np.random.default_rng(3).permutation(len(images))[:25]  # any items, in any order, alone
    assert np.array_equal(vp.images[order], images[order])
    assert all(np.array_equal(vp.images[int(i)], images[i]) for i in order[:5])
    assert np.array_equal(vp.labels, mp.labels)
    sources = src.subset("unlabel").images[:]
    unaugmented = sources[item_order(1, len(images)) % 20]  # position p holds a copy of source image item % n
    assert np.array_equal(images, unaugmented) == (augment == "none")
    for subset in ("label", "valid", "test"):
        assert np.array_equal(v.subset(subset).images[:], m.subset(subset).images[:])
        assert np.array_equal(v.subset(subset).labels, m.subset(subset).labels)
    assert v.data_id() == m.data_id() != src.data_id()
    assert v.meta["preaugment"]["storage"] == "virtual" and m.meta["preaugment"]["storage"] == "materialized"
    if kw["keep_originals"]:
        positions = original_positions(v)
        assert np.array_equal(positions, original_positions(m))
        assert np.array_equal(vp.images[positions], sources)


def test_the_pool_is_computed_from_its_recipe_not_stored(tmp_path):
    src = make_split(tmp_path / "src")
    v = run(src, tmp_path / "v", storage="virtual", copies=50)
    assert sorted(p.name for p in v.path.iterdir()) == ["class_mapping.json", "manifest.json"]
    assert (v.path / "manifest.json").stat().st_size < 10_000
    assert v.subset("unlabel").count == 20 * 51
    v.verify()
    pool = v.subset("unlabel").images[:]
    other = run(src, tmp_path / "other", storage="virtual", copies=50, seed=2)
    assert not np.array_equal(other.subset("unlabel").images[:], pool)
    assert other.data_id() != v.data_id()
    # the source is found relative to the pool: the two move together (e.g. into a DVC experiment's copy)
    moved = tmp_path / "moved"
    moved.mkdir()
    for name in ("src", "v"):
        (tmp_path / name).rename(moved / name)
    assert np.array_equal(Store.open(moved / "v").subset("unlabel").images[:], pool)


def test_a_virtual_pool_refuses_a_changed_or_missing_source(tmp_path):
    src = make_split(tmp_path / "src")
    run(src, tmp_path / "v", storage="virtual")
    make_split(tmp_path / "src2", constant=True)
    (tmp_path / "src").rename(tmp_path / "old")
    with pytest.raises(RealmixError, match="source split .* is not readable"):
        Store.open(tmp_path / "v")
    (tmp_path / "src2").rename(tmp_path / "src")
    with pytest.raises(RealmixError, match="changed since this virtual pool was written; rerun preaugment"):
        Store.open(tmp_path / "v")


def test_virtual_bad_arguments(tmp_path):
    src = make_split(tmp_path / "src")
    with pytest.raises(RealmixError, match="unknown storage 'disk'; choose one of: materialized, virtual"):
        run(src, tmp_path / "out", storage="disk")
    v = run(src, tmp_path / "v", storage="virtual")
    with pytest.raises(RealmixError, match="is itself a virtual pre-augmented split"):
        run(v, tmp_path / "vv", storage="virtual")
    assert not (tmp_path / "out").exists() and not (tmp_path / "vv").exists()


@pytest.mark.parametrize("device_bytes", [1 << 30, 0], ids=["source-on-device", "source-on-host"])
def test_pool_bank_gathers_the_materialized_images(tmp_path, device_bytes):
    """The training loop's view: a virtual pool gathered per batch equals the materialized pool's bank."""
    src = make_split(tmp_path / "src")
    m = run(src, tmp_path / "m", augment="color")
    v = run(src, tmp_path / "v", augment="color", storage="virtual")
    cpu = torch.device("cpu")
    vb = image_bank(v.subset("unlabel").images, cpu, device_bytes)
    mb = image_bank(m.subset("unlabel").images, cpu, device_bytes)
    assert isinstance(vb, PoolBank) and isinstance(mb, ImageBank) and len(vb) == len(mb) == 80
    for idx in (np.array([79, 0, 5, 5, 33]), np.random.default_rng(1).permutation(80)):
        a, b = vb.gather(idx, torch.from_numpy(idx)), mb.gather(idx, torch.from_numpy(idx))
        assert torch.equal(a, b) and a.stride() == b.stride()
        assert torch.equal(vb.gather(idx), b)


@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA GPU")
@pytest.mark.parametrize("augment", AUGMENTS)
def test_pool_computed_on_cuda_equals_the_materialized_pool(tmp_path, augment):
    src = make_split(tmp_path / "src")
    m = run(src, tmp_path / "m", augment=augment, cutout_prob=0.6)
    v = run(src, tmp_path / "v", augment=augment, cutout_prob=0.6, storage="virtual")
    idx = np.random.default_rng(0).permutation(80)
    gpu = image_bank(v.subset("unlabel").images, torch.device("cuda")).gather(idx)
    assert np.array_equal(gpu.permute(0, 2, 3, 1).cpu().numpy(), m.subset("unlabel").images[idx])
