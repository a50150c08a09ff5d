"""`predict_folder`: predictions of a trained run on a folder of user images, its outputs and its bad inputs."""

from __future__ import annotations

import csv
import dataclasses
import json
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from realmix import checkpoint as ckpt
from realmix import predict as predict_mod
from realmix.errors import RealmixError
from realmix.images import load_rgb
from realmix.inference import load_model, predict_outputs, predict_proba
from realmix.models import build_model
from realmix.openset import knn_distance, mahalanobis_distance
from realmix.predict import PredictResult, predict_folder
from realmix.train import Trainer
from tests.conftest import make_store, tree_hash, write_image
from tests.helpers import tiny_params

COMMA = 'x, "quoted".png'
# relative path -> true class ("" = none) of the folder `make_images` writes
EXPECTED = {
    "3_c2.png": "c2",
    "7_c0.jpg": "c0",
    "c0/a.png": "c0",
    "c0/b.jpg": "c0",
    "c0/c.png": "c0",
    "c1/d.png": "c1",
    "c1/e.JPEG": "c1",
    "c1/sub/f.png": "c1",
    "photo.png": "",
    "unlabeled/5_c1.png": "",
    "unlabeled/g.png": "",
    COMMA: "",
}


@pytest.fixture(scope="module")
def model_path(tmp_path_factory) -> Path:
    """A real 3-class model.pt on 8x8 images, trained for a few steps."""
    root = tmp_path_factory.mktemp("run")
    rng = np.random.default_rng(0)
    store = make_store(root / "toy.1@12-6", {
        "label": np.repeat(np.arange(3), 4), "unlabel": rng.integers(0, 3, 40), "valid": np.arange(6) % 3,
        "test": np.arange(9) % 3}, k=3, hw=8)
    Trainer(tiny_params(train={"train_kimg": 0.02}), "supervised", store, split_seed=1).fit(root / "out")
    return root / "out" / "model.pt"


def noise(path: Path, size: tuple[int, int], mode: str, seed: int) -> Path:
    """A random-noise image (so that images get different predictions) saved in `mode`."""
    rng = np.random.default_rng(seed)
    im = Image.fromarray(rng.integers(0, 256, (size[1], size[0], 3), dtype=np.uint8)).convert(mode)
    path.parent.mkdir(parents=True, exist_ok=True)
    im.save(path, format="JPEG" if path.suffix.lower() in (".jpg", ".jpeg") else "PNG")
    return path


def make_images(root: Path) -> Path:
    """Class folders, seed-named files, an unlabeled folder, odd names, several sizes and modes, hidden files."""
    specs = [("c0/a.png", (12, 10), "RGB"), ("c0/b.jpg", (8, 8), "L"), ("c0/c.png", (20, 5), "RGBA"),
             ("c1/d.png", (9, 9), "P"), ("c1/e.JPEG", (30, 30), "RGB"), ("c1/sub/f.png", (7, 11), "RGB"),
             ("3_c2.png", (16, 16), "RGB"), ("7_c0.jpg", (10, 12), "L"), ("unlabeled/g.png", (8, 8), "RGB"),
             ("unlabeled/5_c1.png", (8, 8), "RGB"), (COMMA, (13, 8), "RGBA"), ("photo.png", (8, 20), "RGB")]
    for i, (name, size, mode) in enumerate(specs):
        noise(root / name, size, mode, seed=i)
    write_image(root / ".hidden.png")  # hidden files and folders are not images to predict
    (root / ".git").mkdir()
    (root / ".git" / "config").write_text("x")
    return root


def read_csv(path: Path) -> list[dict[str, str]]:
    with open(path, newline="", encoding="utf-8") as f:
        return list(csv.DictReader(f))


def bad_file(root: Path, kind: str) -> Path:
    if kind == "corrupt":
        path = root / "c0" / "corrupt.png"
        path.write_bytes(np.random.default_rng(5).integers(0, 256, 300, dtype=np.uint8).tobytes())
    elif kind == "truncated":
        path = noise(root / "c1" / "truncated.png", (40, 40), "RGB", seed=9)
        path.write_bytes(path.read_bytes()[:400])
    else:
        path = root / "notes.txt"
        path.write_text("not an image")
    return path


def test_outputs_match_predict_proba(tmp_path, model_path):
    images = make_images(tmp_path / "images")
    res = predict_folder(model_path, images, tmp_path / "out", progress=False)
    assert isinstance(res, PredictResult) and res.images == 12 and res.skipped == []
    assert res.npy == tmp_path / "out" / "predictions.npy" and res.csv == tmp_path / "out" / "predictions.csv"
    probs = np.load(res.npy)
    assert probs.dtype == np.float32 and probs.shape == (12, 3)
    np.testing.assert_allclose(probs.sum(1), 1, rtol=1e-5)
    assert res.csv.read_text().splitlines()[0] == "path,predicted,confidence,true,msp,energy,knn,maha,out_of_class"
    rows = read_csv(res.csv)
    # sorted by relative path, forward slashes, hidden files left out, the comma/quote name round-trips
    assert [r["path"] for r in rows] == sorted(EXPECTED, key=lambda p: Path(p).parts)
    assert [r["predicted"] for r in rows] == [f"c{k}" for k in probs.argmax(1)]
    assert [r["confidence"] for r in rows] == [f"{p:.6f}" for p in probs.max(1)]
    assert not (tmp_path / "out" / "skipped.csv").exists()
    assert sorted(p.name for p in (tmp_path / "out").iterdir()) == ["predictions.csv", "predictions.npy"]

    model, record = load_model(model_path, "ema")
    order = [r["path"] for r in rows]
    picks = ["c0/c.png", COMMA]  # non-square RGBA images: exercises alpha compositing and padding
    by_hand = predict_proba(model, np.stack([load_rgb(images / p, 8, "pad") for p in picks]),
                            autocast_dtype=record.autocast_dtype)  # in the run's precision, as evaluate
    np.testing.assert_allclose(probs[[order.index(p) for p in picks]], by_hand, atol=1e-5)
    assert len({tuple(np.round(p, 5)) for p in probs}) > 1  # noise images: not one constant prediction


def test_weights_and_resize_are_honoured(tmp_path, model_path):
    images = make_images(tmp_path / "images")
    ema = np.load(predict_folder(model_path, images, tmp_path / "ema", progress=False).npy)
    raw = np.load(predict_folder(model_path, images, tmp_path / "raw", weights="raw", progress=False).npy)
    crop = np.load(predict_folder(model_path, images, tmp_path / "crop", resize="crop", progress=False).npy)
    assert not np.allclose(ema, raw) and not np.allclose(ema, crop)
    rows = [r["path"] for r in read_csv(tmp_path / "crop" / "predictions.csv")]
    model, record = load_model(model_path, "raw")
    amp = record.autocast_dtype
    i = rows.index("photo.png")
    np.testing.assert_allclose(
        raw[i], predict_proba(model, load_rgb(images / "photo.png", 8, "pad")[None], autocast_dtype=amp)[0], atol=1e-5)
    model, _ = load_model(model_path, "ema")
    np.testing.assert_allclose(
        crop[i], predict_proba(model, load_rgb(images / "photo.png", 8, "crop")[None], autocast_dtype=amp)[0],
        atol=1e-5)


def test_true_classes_and_accuracy(tmp_path, model_path):
    res = predict_folder(model_path, make_images(tmp_path / "images"), tmp_path / "out", progress=False)
    rows = read_csv(res.csv)
    assert {r["path"]: r["true"] for r in rows} == EXPECTED
    scored = [r for r in rows if r["true"]]
    assert res.labelled == len(scored) == 8
    assert res.accuracy == pytest.approx(100 * sum(r["predicted"] == r["true"] for r in scored) / 8)
    assert f"accuracy {res.accuracy:.1f} % on 8 labelled" in res.summary()
    assert res.unknown_classes == {} and "not scored" not in res.summary()


def test_folder_without_classes_has_no_accuracy(tmp_path, model_path):
    for i, name in enumerate(["a.png", "b.jpg", "unlabeled/3_c1.png", "misc/notes.png"]):
        noise(tmp_path / "images" / name, (8, 8), "RGB", seed=i)
    res = predict_folder(model_path, tmp_path / "images", tmp_path / "out", progress=False)
    assert res.images == 4 and res.accuracy is None and res.labelled == 0
    assert all(r["true"] == "" for r in read_csv(res.csv))
    assert "no accuracy" in res.summary()


def test_unknown_class_folder_is_not_scored(tmp_path, model_path):
    images = make_images(tmp_path / "images")
    for i in range(3):
        noise(images / "zebra" / f"z{i}.png", (8, 8), "RGB", seed=20 + i)
    noise(images / "9_lion.png", (8, 8), "RGB", seed=30)
    res = predict_folder(model_path, images, tmp_path / "out", progress=False)
    rows = {r["path"]: r["true"] for r in read_csv(res.csv)}
    assert res.images == 16 and res.labelled == 8  # as without the unknown classes
    assert all(rows[p] == "" for p in ("zebra/z0.png", "zebra/z2.png", "9_lion.png"))
    assert res.unknown_classes == {"zebra": 3, "lion": 1}
    summary = res.summary()
    assert "zebra (3)" in summary and "lion (1)" in summary and "c0, c1, c2" in summary


@pytest.mark.parametrize("kind", ["corrupt", "truncated", "text"])
def test_bad_file_fails_and_writes_nothing(tmp_path, model_path, kind):
    images = make_images(tmp_path / "images")
    bad = bad_file(images, kind)
    out = tmp_path / "out"
    out.mkdir()
    (out / "mine.txt").write_text("the user's")
    with pytest.raises(RealmixError, match="on-error skip") as e:
        predict_folder(model_path, images, out, progress=False)
    assert str(bad) in str(e.value) and "\n" not in str(e.value)
    assert [p.name for p in out.iterdir()] == ["mine.txt"]  # nothing new, not even temporaries
    with pytest.raises(RealmixError):
        predict_folder(model_path, images, tmp_path / "new", progress=False)
    assert not (tmp_path / "new").exists()


def test_bad_files_are_skipped(tmp_path, model_path):
    images = make_images(tmp_path / "images")
    bad = [bad_file(images, kind) for kind in ("corrupt", "truncated", "text")]
    res = predict_folder(model_path, images, tmp_path / "out", on_error="skip", progress=False)
    assert res.images == 12 and len(np.load(res.npy)) == 12
    assert [r["path"] for r in read_csv(res.csv)] == sorted(EXPECTED, key=lambda p: Path(p).parts)
    assert sorted(p for p, _ in res.skipped) == sorted(bad)
    reasons = dict(res.skipped)
    assert "not a PNG/JPEG image" in reasons[bad[2]] and "readable" in reasons[bad[0]]
    assert "truncated" in reasons[bad[1]]
    assert res.skipped_csv == tmp_path / "out" / "skipped.csv"
    skipped = read_csv(res.skipped_csv)
    assert [r["path"] for r in skipped] == ["c0/corrupt.png", "c1/truncated.png", "notes.txt"]
    assert all(r["reason"] and str(images) not in r["reason"] for r in skipped)
    assert "(3 skipped" in res.summary()


def test_skip_across_chunks_matches_one_chunk(tmp_path, model_path, monkeypatch):
    images = make_images(tmp_path / "images")
    bad_file(images, "corrupt")
    whole = predict_folder(model_path, images, tmp_path / "whole", on_error="skip", progress=False)
    monkeypatch.setattr(predict_mod, "CHUNK", 5)  # the corrupt file falls inside the first chunk
    chunked = predict_folder(model_path, images, tmp_path / "chunked", on_error="skip", batch=2, progress=False)
    np.testing.assert_allclose(np.load(chunked.npy), np.load(whole.npy), atol=1e-6)
    assert chunked.skipped == whole.skipped
    a, b = read_csv(chunked.csv), read_csv(whole.csv)  # the same rows; batches of another size move the last digits
    assert [r["path"] for r in a] == [r["path"] for r in b] and a[0].keys() == b[0].keys()
    for key in ("confidence", "msp", "energy", "knn", "maha"):
        np.testing.assert_allclose([float(r[key]) for r in a], [float(r[key]) for r in b], rtol=1e-5, atol=1e-5)
    assert [(r["predicted"], r["out_of_class"]) for r in a] == [(r["predicted"], r["out_of_class"]) for r in b]


def test_everything_skipped_is_an_error(tmp_path, model_path):
    images = tmp_path / "images"
    images.mkdir()
    bad_file(images, "text")
    (images / "c0").mkdir()
    bad_file(images, "corrupt")
    with pytest.raises(RealmixError, match="nothing to predict"):
        predict_folder(model_path, images, tmp_path / "out", on_error="skip", progress=False)
    assert not (tmp_path / "out").exists()


@pytest.mark.parametrize("case, match", [
    ("empty", "no PNG/JPEG images found"),
    ("missing", "not found"),
    ("file", "not a folder"),
    ("out_inside", "inside the image folder"),
    ("out_same", "inside the image folder"),
    ("on_error", "choose one of: fail, skip"),
    ("weights", "choose one of: ema, raw"),
    ("resize", "choose one of: pad, stretch, crop"),
    ("batch", "positive integer"),
])
def test_bad_inputs(tmp_path, model_path, case, match):
    images = tmp_path / "images"
    images.mkdir()
    out = tmp_path / "out"
    kw = {}
    if case == "empty":
        write_image(images / ".hidden.png")  # hidden files do not count
        (images / "sub").mkdir()
    else:
        noise(images / "a.png", (8, 8), "RGB", seed=0)
    if case == "missing":
        images = tmp_path / "nope"
    elif case == "file":
        images = images / "a.png"
    elif case == "out_inside":
        out = images / "sub" / ".." / "results"
    elif case == "out_same":
        out = images
    elif case in ("on_error", "weights", "resize"):
        kw[case] = "bogus"
    elif case == "batch":
        kw["batch"] = 0
    before = tree_hash(tmp_path)
    with pytest.raises(RealmixError, match=match) as e:
        predict_folder(model_path, images, out, progress=False, **kw)
    assert "\n" not in str(e.value)
    assert tree_hash(tmp_path) == before and not (tmp_path / "out").exists()


def test_bad_model_file(tmp_path, model_path):
    images = make_images(tmp_path / "images")
    missing = tmp_path / "runs" / "model.pt"
    with pytest.raises(RealmixError, match="not found") as e:
        predict_folder(missing, images, tmp_path / "out", progress=False)
    assert str(missing) in str(e.value)
    corrupt = tmp_path / "corrupt.pt"
    corrupt.write_bytes(model_path.read_bytes()[:1000])
    with pytest.raises(RealmixError, match="not a readable checkpoint") as e:
        predict_folder(corrupt, images, tmp_path / "out", progress=False)
    assert str(corrupt) in str(e.value) and not (tmp_path / "out").exists()


def test_user_folder_is_left_byte_identical(tmp_path, model_path, capsys):
    images = make_images(tmp_path / "images")
    bad_file(images, "truncated")
    before = tree_hash(images)
    res = predict_folder(model_path, images, tmp_path / "out", on_error="skip", progress=True)
    assert tree_hash(images) == before and res.images == 12
    err = capsys.readouterr().err
    assert "loading" in err and "predicting" in err and "12/12" in err  # skipped files leave the bar's total
    with pytest.raises(RealmixError):
        predict_folder(model_path, images, tmp_path / "out2", progress=False)
    assert tree_hash(images) == before


def test_rerun_replaces_outputs(tmp_path, model_path):
    images = make_images(tmp_path / "images")
    bad = bad_file(images, "corrupt")
    out = tmp_path / "out"
    predict_folder(model_path, images, out, on_error="skip", progress=False)
    assert (out / "skipped.csv").exists()
    bad.unlink()
    (images / "c1" / "d.png").unlink()
    res = predict_folder(model_path, images, out, progress=False)
    assert res.images == 11 and len(np.load(res.npy)) == len(read_csv(res.csv)) == 11
    assert sorted(p.name for p in out.iterdir()) == ["predictions.csv", "predictions.npy"]  # stale list removed


def test_distance_scores_read_the_labelled_features_in_model_pt(tmp_path, model_path):
    """predict's knn and maha columns are the distances to model.pt's labelled-image features (and classes); a
    model.pt without them (an earlier version's) has no such column and refuses --score knn / maha in one line."""
    images = make_images(tmp_path / "images")
    res = predict_folder(model_path, images, tmp_path / "out", progress=False)
    rows = read_csv(res.csv)
    model, record = load_model(model_path, "ema")
    by_hand = predict_outputs(model, np.stack([load_rgb(images / r["path"], 8, "pad") for r in rows]),
                              autocast_dtype=record.autocast_dtype, features=True)
    np.testing.assert_allclose([float(r["knn"]) for r in rows],
                               knn_distance(by_hand.features, record.label_features.numpy()), atol=1e-4)
    np.testing.assert_allclose([float(r["maha"]) for r in rows], mahalanobis_distance(
        by_hand.features, record.label_features.numpy(), record.label_classes.numpy()), rtol=1e-3, atol=1e-3)
    no_classes = tmp_path / "no_classes.pt"
    dataclasses.replace(record, label_classes=None).save(no_classes)
    header = read_csv(predict_folder(no_classes, images, tmp_path / "nc", progress=False).csv)[0]
    assert "knn" in header and "maha" not in header
    with pytest.raises(RealmixError, match=r"no_classes.pt: --score maha needs the labelled images' features and"):
        predict_folder(no_classes, images, tmp_path / "nc2", progress=False, score="maha")
    older = tmp_path / "older.pt"
    dataclasses.replace(record, label_features=None).save(older)
    assert "knn" not in read_csv(predict_folder(older, images, tmp_path / "old", progress=False).csv)[0]
    with pytest.raises(RealmixError, match=r"older.pt: --score knn needs the labelled images' features"):
        predict_folder(older, images, tmp_path / "old2", progress=False, score="knn")


def test_grayscale_model(tmp_path, model_path):
    """A model with 1-channel input gets L images with a trailing channel axis."""
    record = ckpt.ModelRecord.load(model_path)
    net = build_model(record.arch, 3, [8, 8, 1])
    gray = tmp_path / "gray.pt"
    dataclasses.replace(record, num_classes=3, image_shape=[8, 8, 1], model=net.state_dict(),
                        raw_model=net.state_dict()).save(gray)
    images = make_images(tmp_path / "images")
    res = predict_folder(gray, images, tmp_path / "out", progress=False)
    probs = np.load(res.npy)
    assert probs.shape == (12, 3)
    model, _ = load_model(gray, "ema")
    rows = [r["path"] for r in read_csv(res.csv)]
    rgb = load_rgb(images / "c0" / "a.png", 8, "pad")
    by_hand = np.asarray(Image.fromarray(rgb).convert("L"))[None, ..., None]
    np.testing.assert_allclose(probs[rows.index("c0/a.png")], predict_proba(model, by_hand)[0], atol=1e-5)


def test_summary_text():
    res = PredictResult(images=120, skipped=[(Path("a/b.png"), "bad")], accuracy=93.33, labelled=118,
                        npy=Path("out/predictions.npy"), csv=Path("out/predictions.csv"),
                        skipped_csv=Path("out/skipped.csv"))
    assert res.summary() == ("predicted 120 images (1 skipped, see out/skipped.csv) -> out/predictions.csv; "
                             "accuracy 93.3 % on 118 labelled")
    unknown = PredictResult(images=2, skipped=[], accuracy=None, labelled=0, npy=Path("o/p.npy"), csv=Path("o/p.csv"),
                            unknown_classes={"zebra": 2}, model_classes=["c0", "c1"])
    assert unknown.summary().splitlines() == [
        "predicted 2 images -> o/p.csv; no true classes known, so no accuracy (use class folders or {n}_{class} "
        "file names)",
        "not scored: 2 images whose folder/name class the model does not know: zebra (2); model classes: c0, c1"]


def test_cli_predict_and_its_errors(tmp_path, model_path, capsys):
    from realmix.cli import main

    images = tmp_path / "images"
    for i, cls in enumerate(["c0", "c1", "c2"]):  # the seed's test/<class>/ layout is scored by the parent folder
        noise(images / "test" / cls / f"{i}.png", (8, 8), "RGB", i)
    main(["predict", "--model", str(model_path), "--images", str(images), "--out", str(tmp_path / "out")])
    out = capsys.readouterr().out
    assert out.startswith("predicted 3 images") and "accuracy" in out and "on 3 labelled" in out
    assert len(read_csv(tmp_path / "out" / "predictions.csv")) == 3
    (images / "notes.txt").write_text("x")
    with pytest.raises(SystemExit) as e:
        main(["predict", "--model", str(model_path), "--images", str(images), "--out", str(tmp_path / "o2")])
    err = capsys.readouterr().err.strip().splitlines()
    assert e.value.code == 2 and len(err) == 1 and err[0].startswith("error: ") and "notes.txt" in err[0]
    assert not (tmp_path / "o2").exists()


def test_predict_agrees_with_evaluate_image_by_image_in_the_runs_precision(tmp_path):
    """A run trained in bf16: `evaluate` (store images) and `realmix predict` (the same images as PNG files) give
    the same probabilities, so the same label for every image."""
    from realmix.evaluate import evaluate_run

    rng = np.random.default_rng(3)
    store = make_store(tmp_path / "toy.1@12-6", {
        "label": np.repeat(np.arange(3), 4), "unlabel": rng.integers(0, 3, 40), "valid": np.arange(6) % 3,
        "test": np.arange(60) % 3}, k=3, hw=8)
    run = tmp_path / "run"
    Trainer(tiny_params(train={"precision": "bf16"}), "supervised", store, split_seed=1).fit(run)
    assert ckpt.load(run / "model.pt", expect=ckpt.MODEL_FORMAT)["precision"] == "torch.bfloat16"
    evaluate_run(run, store, tmp_path / "accuracy.json", batch=7, device="cpu")
    images = np.asarray(store.subset("test").images[:])
    folder = tmp_path / "images"
    folder.mkdir()
    for i, im in enumerate(images):
        Image.fromarray(im).save(folder / f"{i:03d}.png")
    predict_folder(run / "model.pt", folder, tmp_path / "pred", batch=7, device="cpu", progress=False)
    evaluated = np.load(run / "eval" / "predictions.npy")
    predicted = np.load(tmp_path / "pred" / "predictions.npy")
    np.testing.assert_array_equal(predicted, evaluated)
    # in fp32 the same weights give slightly different probabilities: the precision is what made them agree
    model, _ = load_model(run / "model.pt")
    assert not np.array_equal(predict_proba(model, images, batch=7), evaluated)


def test_predict_scores_and_flags_out_of_class_images_as_the_runs_report(tmp_path):
    """`realmix predict` on the split's unlabelled images (as PNG files) gives the report's scores and, with the cut
    the run's evaluate chose on its validation images, the report's out_of_class flags.

    Tolerance, stated: predict scores in batches of 256 and the report in batches of 7 (train.eval_batch). In fp32
    CPU kernels may choose another blocking for another batch size, so the two may differ in the last printed
    digit (seen on an AVX2-only AMD EPYC: energy -1.464176 vs -1.464175); they agree to 1e-5, and a flag may
    differ only where the score lies within that of the cut."""
    from realmix.evaluate import evaluate_run
    from realmix.params import ReportParams

    rng = np.random.default_rng(4)
    store = make_store(tmp_path / "toy.1@12-6", {
        "label": np.repeat(np.arange(3), 4), "unlabel": rng.integers(0, 3, 40), "valid": np.arange(12) % 3,
        "test": np.arange(9) % 3}, k=3, hw=8)
    run = tmp_path / "run"
    Trainer(tiny_params(), "supervised", store, split_seed=1).fit(run)
    folder = tmp_path / "images"
    folder.mkdir()
    for i, im in enumerate(np.asarray(store.subset("unlabel").images[:])):
        Image.fromarray(im).save(folder / f"{i:03d}.png")
    # before evaluate there is no cut: the scores are written, the flag column stays empty, the summary says why
    res = predict_folder(run / "model.pt", folder, tmp_path / "pre", progress=False)
    assert res.flagged is None and "no out-of-class report" in res.summary()
    assert {r["out_of_class"] for r in read_csv(res.csv)} == {""}

    evaluate_run(run, store, tmp_path / "accuracy.json", batch=7, device="cpu", report=ReportParams(keep=0.5))
    report = {r["file"]: r for r in read_csv(run / "eval" / "unlabelled.csv")}
    for score in ("report", "energy"):
        res = predict_folder(run / "model.pt", folder, tmp_path / score, progress=False, score=score)
        rows = read_csv(res.csv)
        assert len(rows) == 40
        chosen = json.loads((run / "eval" / "evaluation.json").read_text())["out_of_class"]
        own, cut = chosen["score"], chosen["cuts"][chosen["score"]]
        for r in rows:
            rep = report[f"unlabel/{int(r['path'][:3])}"]
            for name in ("msp", "energy", "knn", "maha"):
                assert float(r[name]) == pytest.approx(float(rep[name]), rel=1e-4, abs=1e-4), (r["path"], name)
            assert r["predicted"] == rep["predicted"]
            if score == "report" and abs(float(r[own]) - cut) > 1e-4:  # the report's own score and cut
                assert r["out_of_class"] == rep["out_of_class"]
        flagged = sum(int(r["out_of_class"]) for r in rows)
        assert res.flagged == flagged and f"{flagged} of 40 flagged" in res.summary()
    assert 0 < res.flagged < 40  # keep 0.5: the cut sits inside the scores' range
    with pytest.raises(RealmixError, match="--score open needs an open-set head"):
        predict_folder(run / "model.pt", folder, tmp_path / "open", progress=False, score="open")
