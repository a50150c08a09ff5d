"""EMA of the weights, classification metrics, seeded index streams and rotating checkpoints."""

from __future__ import annotations

import copy
import dataclasses
import math

import numpy as np
import pytest
import torch

from realmix import checkpoint as ckpt
from realmix.data_stream import IndexStream
from realmix.ema import EMA, pick_bn_stats, with_own_bn_stats
from realmix.errors import RealmixError
from realmix.metrics import classification_metrics, confusion_matrix
from tests.helpers import TINY_ARCH, K, state_equal, tiny


def perturb(model, seed):
    """Move every parameter and (by a train-mode forward) every BN running statistic."""
    g = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for p in model.parameters():
            p.add_(torch.randn(p.shape, generator=g))
        model.train()(torch.randn(5, 3, 8, 8, generator=g) * 2 + 1)


# -- EMA -------------------------------------------------------------------------------------------------
def test_ema_update_averages_parameters_and_copies_buffers():
    model = tiny()
    ema = EMA(model, 0.9, warmup=False)
    assert ema.current_decay() == 0.9
    for step in range(3):
        perturb(model, step)
        old = {k: v.clone() for k, v in ema.model.named_parameters()}
        ema.update()
        for name, p in model.named_parameters():
            expected = 0.9 * old[name] + 0.1 * p.detach()
            torch.testing.assert_close(ema.model.get_parameter(name), expected, rtol=0, atol=1e-6)
        src = dict(model.named_buffers())
        for name, b in ema.model.named_buffers():
            assert torch.equal(b, src[name]), name  # copied, not averaged
    assert ema.updates == 3
    assert not ema.model.training
    assert all(not p.requires_grad for p in ema.model.parameters())
    assert all(p.requires_grad for p in model.parameters())


def test_own_bn_stats_are_the_batch_statistics_of_the_model_itself():
    model = tiny()
    perturb(model, 0)  # running statistics of other weights
    images = np.random.default_rng(0).integers(0, 256, (10, 8, 8, 3), dtype=np.uint8)
    weights = copy.deepcopy(model.state_dict())
    out = with_own_bn_stats(model, images, batch=4, device=torch.device("cpu"))
    assert not out.training and out is not model
    assert all(torch.equal(v, weights[k]) for k, v in model.state_dict().items())  # the source is untouched
    own = out.state_dict()
    assert all(torch.equal(own[k], v) for k, v in weights.items() if "running" not in k and "num_batches" not in k)
    # the first BN sees the stem's output: its statistics must be those of that output over the 3 batches
    from realmix.models import to_input
    x = to_input(torch.from_numpy(images).permute(0, 3, 1, 2))
    bn = next(m for m in out.modules() if isinstance(m, torch.nn.BatchNorm2d))
    feats = []
    hook = next(m for m in model.modules() if isinstance(m, torch.nn.BatchNorm2d)).register_forward_hook(
        lambda m, i, o: feats.append(i[0].detach()))
    with torch.no_grad():
        model.eval()(x)
    hook.remove()
    chunks = feats[0].split(4)  # batches of 4, 4, 2, averaged with equal weight
    mean = torch.stack([c.mean((0, 2, 3)) for c in chunks]).mean(0)
    var = torch.stack([c.var((0, 2, 3), unbiased=True) for c in chunks]).mean(0)
    torch.testing.assert_close(bn.running_mean, mean, rtol=1e-4, atol=1e-5)
    torch.testing.assert_close(bn.running_var, var, rtol=1e-4, atol=1e-5)
    assert bn.momentum == next(m for m in model.modules() if isinstance(m, torch.nn.BatchNorm2d)).momentum
    # and the result is a pure function of (weights, images): no randomness is drawn
    again = with_own_bn_stats(model, images, batch=4, device=torch.device("cpu")).state_dict()
    assert all(torch.equal(again[k], v) for k, v in own.items())


def test_pick_bn_stats_prefers_accuracy_then_cross_entropy_then_the_first():
    labels = np.array([0, 1, 1])
    sure = np.array([[0.9, 0.1], [0.2, 0.8], [0.3, 0.7]])
    unsure = np.array([[0.6, 0.4], [0.4, 0.6], [0.45, 0.55]])  # same argmax, higher cross-entropy
    wrong = np.array([[0.9, 0.1], [0.9, 0.1], [0.9, 0.1]])  # a collapsed model: one class for every image
    assert pick_bn_stats({"recompute": wrong, "copy": unsure}, labels) == "copy"  # accuracy first
    assert pick_bn_stats({"recompute": unsure, "copy": sure}, labels) == "copy"  # then cross-entropy
    assert pick_bn_stats({"recompute": sure, "copy": sure.copy()}, labels) == "recompute"  # exact tie: the first
    assert pick_bn_stats({"copy": sure, "recompute": sure.copy()}, labels) == "copy"


def test_ema_is_a_separate_copy():
    model = tiny()
    ema = EMA(model, 0.999, warmup=False)
    before = copy.deepcopy(ema.model.state_dict())
    perturb(model, 0)  # no update yet: the shadow must not move with the source
    assert all(torch.equal(before[k], v) for k, v in ema.model.state_dict().items())


def test_ema_warmup_decay_sequence():
    model = tiny()
    ema = EMA(model, 0.5, warmup=True)
    seen = []
    for _ in range(12):
        seen.append(ema.current_decay())
        ema.update()
    # min(0.5, (1 + t) / (10 + t)): 1/10, 2/11, ..., 8/17, then 9/18 = 0.5 and capped
    expected = [1 / 10, 2 / 11, 3 / 12, 4 / 13, 5 / 14, 6 / 15, 7 / 16, 8 / 17, 0.5, 0.5, 0.5, 0.5]
    assert seen == pytest.approx(expected, abs=1e-12)
    big = EMA(model, 0.999, warmup=True)
    big.updates = 10_000
    assert big.current_decay() == pytest.approx(min(0.999, 10_001 / 10_010))


def test_ema_warmup_first_update_uses_decay_0_1():
    model = tiny()
    ema = EMA(model, 0.999, warmup=True)
    old = {k: v.clone() for k, v in ema.model.named_parameters()}
    perturb(model, 3)
    ema.update()
    for name, p in model.named_parameters():
        torch.testing.assert_close(ema.model.get_parameter(name), 0.1 * old[name] + 0.9 * p.detach(),
                                   rtol=0, atol=1e-6)


def test_ema_state_dict_round_trip():
    model = tiny()
    ema = EMA(model, 0.9)
    for s in range(4):
        perturb(model, s)
        ema.update()
    state = copy.deepcopy(ema.state_dict())
    other = EMA(tiny(seed=5), 0.9)
    other.load_state_dict(state)
    assert other.updates == 4
    assert other.current_decay() == ema.current_decay()
    a, b = ema.model.state_dict(), other.model.state_dict()
    assert a.keys() == b.keys() and all(torch.equal(a[k], b[k]) for k in a)


# -- metrics ---------------------------------------------------------------------------------------------
def _hand_example():
    """4 classes a b c d; d never appears in the labels (but is predicted once).

    labels  0 0 0 1 1 2 2
    pred    0 0 1 1 2 2 3
    """
    labels = np.array([0, 0, 0, 1, 1, 2, 2])
    pred = np.array([0, 0, 1, 1, 2, 2, 3])
    probs = np.full((7, 4), 0.1)
    probs[np.arange(7), pred] = 0.7
    return probs, labels


def test_confusion_matrix():
    probs, labels = _hand_example()
    cm = confusion_matrix(labels, probs.argmax(1), 4)
    expected = np.array([[2, 1, 0, 0], [0, 1, 1, 0], [0, 0, 1, 1], [0, 0, 0, 0]])
    np.testing.assert_array_equal(cm, expected)


def test_classification_metrics_hand_computed():
    probs, labels = _hand_example()
    m = classification_metrics(probs, labels, ["a", "b", "c", "d"])
    # per class (a, b, c): precision 2/2, 1/2, 1/2; recall 2/3, 1/2, 1/2; F1 0.8, 0.5, 0.5; support 3, 2, 2
    expected = {
        "accuracy": 100 * 4 / 7,
        "loss": -(4 * math.log(0.7) + 3 * math.log(0.1)) / 7,
        "precision_macro": 2 / 3,
        "recall_macro": (2 / 3 + 0.5 + 0.5) / 3,
        "f1_macro": (0.8 + 0.5 + 0.5) / 3,
        "precision_weighted": (3 * 1 + 2 * 0.5 + 2 * 0.5) / 7,
        "recall_weighted": 4 / 7,
        "f1_weighted": (3 * 0.8 + 2 * 0.5 + 2 * 0.5) / 7,
        "class/a": 100 * 2 / 3,
        "class/b": 50.0,
        "class/c": 50.0,
    }
    assert set(m) == set(expected)  # no class/d: absent from the labels
    for k, v in expected.items():
        assert m[k] == pytest.approx(v, abs=1e-12), k
    assert all(math.isfinite(v) for v in m.values())


def test_classification_metrics_agree_with_sklearn_on_present_classes():
    from sklearn.metrics import f1_score, precision_score, recall_score

    rng = np.random.default_rng(0)
    labels = rng.integers(0, 5, 200)
    probs = rng.dirichlet(np.ones(5), 200)
    m = classification_metrics(probs, labels, list("abcde"))
    pred = probs.argmax(1)
    for avg in ("macro", "weighted"):
        assert m[f"precision_{avg}"] == pytest.approx(precision_score(labels, pred, average=avg, zero_division=0))
        assert m[f"recall_{avg}"] == pytest.approx(recall_score(labels, pred, average=avg, zero_division=0))
        assert m[f"f1_{avg}"] == pytest.approx(f1_score(labels, pred, average=avg, zero_division=0))
    assert m["accuracy"] == pytest.approx(100 * (pred == labels).mean())


def test_classification_metrics_perfect_and_empty():
    probs = np.eye(3)[[0, 1, 2, 1]]
    m = classification_metrics(probs, np.array([0, 1, 2, 1]), ["x", "y", "z"])
    assert m["accuracy"] == 100.0 and m["f1_macro"] == 1.0 and m["class/y"] == 100.0
    assert m["loss"] == pytest.approx(0.0, abs=1e-9)
    assert classification_metrics(np.zeros((0, 3)), np.array([], np.int64), ["x", "y", "z"]) == {}


# -- index streams ---------------------------------------------------------------------------------------
def test_index_stream_every_pass_is_a_permutation():
    s = IndexStream(10, np.random.default_rng(0))
    drawn = np.concatenate([s.next(k) for k in (3, 4, 7, 1, 5, 10, 3, 7)])  # 40 = 4 passes
    passes = drawn.reshape(4, 10)
    for p in passes:
        assert sorted(p.tolist()) == list(range(10))
    assert len({tuple(p) for p in passes}) > 1  # a fresh permutation per pass
    assert len(s.next(25)) == 25


def test_index_stream_resume_mid_pass():
    s = IndexStream(9, np.random.default_rng(42))
    s.next(13)  # into the second pass
    state = copy.deepcopy(s.state_dict())
    expected = np.concatenate([s.next(4) for _ in range(8)])  # runs through more pass boundaries
    r = IndexStream(9, np.random.default_rng(7))  # another seed: everything comes from the state
    r.next(5)
    r.load_state_dict(state)
    got = np.concatenate([r.next(4) for _ in range(8)])
    np.testing.assert_array_equal(got, expected)
    with pytest.raises(ValueError):
        IndexStream(8, np.random.default_rng(0)).load_state_dict(state)


def test_index_stream_resume_at_pass_end_and_seeded():
    s = IndexStream(6, np.random.default_rng(1))
    s.next(6)  # exactly at the end of the pass
    state = copy.deepcopy(s.state_dict())
    expected = s.next(15)
    r = IndexStream(6, np.random.default_rng(2))
    r.load_state_dict(state)
    np.testing.assert_array_equal(r.next(15), expected)
    np.testing.assert_array_equal(IndexStream(6, np.random.default_rng(3)).next(20),
                                  IndexStream(6, np.random.default_rng(3)).next(20))
    with pytest.raises(ValueError):
        IndexStream(0, np.random.default_rng(0))


# -- checkpoints -----------------------------------------------------------------------------------------
def _state(i):
    return {"format": ckpt.CKPT_FORMAT, "images": i, "w": torch.full((3,), float(i))}


def test_checkpoint_dir_keeps_only_the_last(tmp_path):
    d = ckpt.CheckpointDir(tmp_path / "checkpoints", keep=2)
    assert d.list() == [] and d.latest() is None
    for i in (64, 128, 1024, 192):  # 1024 > 192 numerically: names are zero-padded so they sort
        d.save(_state(i), i)
    names = [p.name for p in d.list()]
    assert names == ["ckpt-000000000192.pt", "ckpt-000000001024.pt"]
    assert sorted(p.name for p in (tmp_path / "checkpoints").glob("ckpt-*")) == names
    path, state = d.latest()
    assert path.name == "ckpt-000000001024.pt" and state["images"] == 1024
    assert torch.equal(state["w"], torch.full((3,), 1024.0))
    d.clear()
    assert d.list() == []


def test_checkpoint_latest_skips_a_truncated_newest(tmp_path, capsys):
    d = ckpt.CheckpointDir(tmp_path, keep=5)
    d.save(_state(10), 10)
    good = d.save(_state(20), 20)
    newest = tmp_path / "ckpt-000000000030.pt"
    data = good.read_bytes()
    newest.write_bytes(data[: len(data) // 2])  # truncated copy of a valid checkpoint
    (tmp_path / "ckpt-000000000040.pt").write_bytes(b"\x00garbage\xff" * 10)
    path, state = d.latest()
    assert path == good and state["images"] == 20
    err = capsys.readouterr().err
    assert "ckpt-000000000030.pt" in err and "ckpt-000000000040.pt" in err


def test_checkpoint_load_errors(tmp_path):
    with pytest.raises(RealmixError, match="not found"):
        ckpt.load(tmp_path / "missing.pt")
    foreign = tmp_path / "foreign.pt"
    torch.save({"weights": torch.zeros(2)}, foreign)
    with pytest.raises(RealmixError, match="format"):
        ckpt.load(foreign)
    text = tmp_path / "text.pt"
    text.write_text("hello")
    with pytest.raises(RealmixError):
        ckpt.load(text)
    model_file = tmp_path / "model.pt"
    ckpt.save(model_file, {"format": ckpt.MODEL_FORMAT})
    with pytest.raises(RealmixError):
        ckpt.load(model_file)  # a model file is not a checkpoint
    assert ckpt.load(model_file, expect=ckpt.MODEL_FORMAT)["format"] == ckpt.MODEL_FORMAT


def test_check_compatible(tmp_path):
    state = {"num_classes": 10, "arch": dict(TINY_ARCH)}
    ckpt.check_compatible(state, dict(TINY_ARCH), 10, tmp_path)
    with pytest.raises(RealmixError, match="10 classes but this run has 6"):
        ckpt.check_compatible(state, dict(TINY_ARCH), 6, tmp_path)
    with pytest.raises(RealmixError, match="model") as e:
        ckpt.check_compatible(state, {**TINY_ARCH, "filters": 8}, 10, tmp_path)
    assert "'filters': 8" in str(e.value) and "'filters': 4" in str(e.value)


def test_model_record_round_trip_and_older_files(tmp_path):
    """model.pt is read and written by ModelRecord only: the file keeps every earlier version's keys and their
    order (precision as the dtype's name), an older file without the later keys reads with their defaults, and
    one without weights is refused in one line."""
    net = tiny()
    record = ckpt.ModelRecord(algorithm="mixmatch", data="toy.1@12-6", arch=dict(TINY_ARCH), num_classes=K,
                              class_names=["a", "b", "c"], image_shape=[8, 8, 3], images=48, precision="bf16",
                              model=net.state_dict(), raw_model=net.state_dict(),
                              history=[{"step": 48, "test/accuracy": 50.0}], hardware="cpu AVX2", threads=1)
    path = tmp_path / "model.pt"
    record.save(path)
    raw = ckpt.load(path, expect=ckpt.MODEL_FORMAT)
    assert list(raw) == ["format", "algorithm", "data", "arch", "num_classes", "class_names", "image_shape",
                         "input", "images", "precision", "hardware", "threads", "fast_path", "world_size",
                         "fingerprint", "model", "ema_bn", "raw_model", "metrics", "history", "label_features",
                         "label_classes"]
    assert raw["precision"] == "torch.bfloat16" and raw["metrics"] == {"step": 48, "test/accuracy": 50.0}
    back = ckpt.ModelRecord.load(path)
    assert back.autocast_dtype == torch.bfloat16 and back.hardware == "cpu AVX2" and back.history == record.history
    assert state_equal(back.model, record.model)

    old = {k: v for k, v in raw.items() if k not in ("hardware", "threads", "fast_path", "ema_bn", "precision")}
    ckpt.save(path, old)
    older = ckpt.ModelRecord.load(path)
    assert older.precision == "fp32" and older.autocast_dtype is None and older.hardware is None
    assert older.fast_path == {} and older.threads is None

    ckpt.save(path, {k: v for k, v in raw.items() if k != "raw_model"})
    with pytest.raises(RealmixError, match=r"model.pt: model file lacks raw_model; it is damaged: retrain"):
        ckpt.ModelRecord.load(path)
    with pytest.raises(ValueError, match="precision"):
        dataclasses.replace(record, precision="fp16")
