"""The evaluate stage (test metrics, predictions, last-N medians) and the summary over seeds."""

from __future__ import annotations

import csv
import json

import numpy as np
import pytest
import torch
from PIL import Image

from realmix import checkpoint as ckpt
from realmix import pipeline
from realmix.errors import RealmixError
from realmix.evaluate import accuracy_history, evaluate_run, median_accuracies
from realmix.hardware import describe_device, pick_precision, precision_name
from realmix.params import parse
from realmix.summary import RunRef, aggregate, markdown_table, mismatch_table, report, write_summary
from realmix.train import Trainer
from tests.conftest import init_repo, make_store, run
from tests.helpers import tiny_params


def test_median_accuracies_hand_worked():
    m = median_accuracies(range(1, 26))  # 25 evaluations
    assert m == {"evaluations": 25, "last01": 25.0, "last10": 20.5, "last20": 15.5, "last50": None,
                 "error_rate": 84.5}
    assert median_accuracies([]) == {"evaluations": 0, "last01": None, "last10": None, "last20": None,
                                     "last50": None, "error_rate": None}
    assert median_accuracies([3.0, 1.0, 2.0] * 20)["last50"] == 2.0


def test_accuracy_history_keeps_order_and_skips_records_without_test():
    hist = [{"step": 1, "test/accuracy": 10.0}, {"step": 2}, {"step": 3, "test/accuracy": 30.0}]
    assert accuracy_history(hist) == [10.0, 30.0]
    assert accuracy_history([{"valid/accuracy": 5.0}, {"test/accuracy": 1.0}], "valid/accuracy") == [5.0]


@pytest.fixture(scope="module")
def trained(tmp_path_factory):
    tmp = tmp_path_factory.mktemp("run")
    rng = np.random.default_rng(0)
    st = make_store(tmp / "toy.1@12-6", {
        "label": np.repeat(np.arange(3), 4), "unlabel": rng.integers(0, 3, 40), "valid": np.arange(6) % 3,
        "test": np.array([0, 1, 2, 0, 1, 2, 0, 1, -1])}, k=3, hw=8)
    Trainer(tiny_params(), "supervised", st, split_seed=1).fit(tmp / "run")
    return tmp / "run", st


def test_evaluate_run_outputs(trained, tmp_path):
    run_dir, st = trained
    metrics_path = tmp_path / "m" / "accuracy.json"
    res = evaluate_run(run_dir, st, metrics_path, batch=7, device="cpu")
    probs = np.load(run_dir / "eval" / "predictions.npy")
    labels = st.subset("test").labels
    assert probs.shape == (9, 3) and np.allclose(probs.sum(1), 1, atol=1e-5)
    known = labels >= 0
    assert res["images"] == 8  # the unknown-class test image is predicted but not scored
    assert res["accuracy"] == pytest.approx(100 * (probs[known].argmax(1) == labels[known]).mean())
    cm = np.array(res["confusion_matrix"]["counts"])
    assert cm.sum() == 8 and np.trace(cm) == round(res["accuracy"] * 8 / 100)
    assert res["confusion_matrix"]["classes"] == ["c0", "c1", "c2"]
    rows = list(csv.DictReader((run_dir / "eval" / "predictions.csv").open()))
    assert len(rows) == 9 and rows[-1]["true"] == ""
    assert [r["predicted"] for r in rows] == [f"c{i}" for i in probs.argmax(1)]
    assert float(rows[0]["confidence"]) == pytest.approx(probs[0].max(), abs=1e-6)
    assert json.loads((run_dir / "eval" / "evaluation.json").read_text())["accuracy"] == res["accuracy"]
    # the evaluation used the EMA weights: the training loop's last EMA test accuracy is the same number
    history = ckpt.load(run_dir / "model.pt", expect=ckpt.MODEL_FORMAT)["history"]
    assert res["accuracy"] == pytest.approx(history[-1]["test/accuracy"], abs=1e-6)
    medians = json.loads(metrics_path.read_text())
    # what computed the figures: the run's precision (auto: bf16 on AVX512-BF16 CPUs, else fp32), CPU and threads
    precision = precision_name(pick_precision("auto", torch.device("cpu")))
    produced = {"precision": precision, "hardware": describe_device(torch.device("cpu")), "threads": 1}
    assert medians == {"run": str(run_dir), **produced, **median_accuracies(accuracy_history(history)),
                       "valid_last20": None}  # 3 evaluations: no median of 20
    assert {k: res[k] for k in produced} == produced
    assert medians["evaluations"] == 3 and medians["last20"] is None  # stated, not faked
    with Image.open(run_dir / "eval" / "accuracy.png") as im:
        assert im.format == "PNG" and im.size[0] > 300


def test_evaluate_run_bad_inputs(trained, tmp_path):
    run_dir, _ = trained
    other = make_store(tmp_path / "other", {"label": [0, 1], "test": [0, 1]}, k=2, hw=8)
    with pytest.raises(RealmixError, match="trained on classes"):
        evaluate_run(run_dir, other, tmp_path / "a.json", device="cpu")
    with pytest.raises(RealmixError, match="checkpoint not found"):
        evaluate_run(tmp_path / "nowhere", other, tmp_path / "a.json", device="cpu")
    (tmp_path / "bad").mkdir()
    (tmp_path / "bad" / "model.pt").write_bytes(b"not a checkpoint")
    with pytest.raises(RealmixError, match="not a readable checkpoint"):
        evaluate_run(tmp_path / "bad", other, tmp_path / "a.json", device="cpu")
    assert not (tmp_path / "a.json").exists() and not (tmp_path / "bad" / "eval").exists()


def refs(algorithm, setting, seeds, **kw):
    name, rest = setting.split("@")
    return [RunRef(algorithm, f"{name}.{s}@{rest}", setting, s, **kw) for s in seeds]


def test_aggregate_mean_and_sample_std_over_seeds():
    runs = refs("mixmatch", "d@30-100", [1, 2, 3]) + refs("supervised", "d@30-100", [1, 2])
    last20 = [80.0, 90.0, 100.0, 60.0, None]
    precision = ["bf16", "bf16", "bf16", "fp32", None]  # the last one made before runs recorded it
    medians = {r: {"last20": v, "evaluations": 32 if v else 5, **({"precision": pr} if pr else {})}
               for r, v, pr in zip(runs, last20, precision, strict=True)}
    rows = {r["algorithm"]: r for r in aggregate(runs, medians)}
    assert rows["mixmatch"]["last20"] == 90.0 and rows["mixmatch"]["last20_std"] == 10.0
    assert rows["mixmatch"]["error_rate"] == 10.0 and rows["mixmatch"]["runs"] == 3
    sup = rows["supervised"]
    assert sup["runs"] == 1 and sup["last20"] == 60.0 and sup["last20_std"] is None  # one value: no spread
    assert sup["missing"] == ["d.2@30-100"] and sup["evaluations"] == 5
    table = markdown_table(list(rows.values()))
    assert "| mixmatch | d@30-100 | 3/3 | bf16 | 90.00 ± 10.00 | 10.00 ± 10.00 |  |" in table
    assert "| supervised | d@30-100 | 1/2 | fp32+n/a | 60.00 | 40.00 |" in table  # not a fake "± 0.00"
    assert "1 run(s) with fewer than 20 evaluations" in table


def test_write_summary(tmp_path):
    runs = (refs("mixmatch", "d@30-100", [1, 2]) + refs("realmix", "d6_mismatch0@30-100", [1, 2], mismatch=0)
            + refs("realmix", "d6_mismatch100@30-100", [1, 2], mismatch=100))
    for i, r in enumerate(runs):
        path = tmp_path / "runs" / r.algorithm / r.data / "accuracy.json"
        path.parent.mkdir(parents=True)
        path.write_text(json.dumps({**median_accuracies([50.0 + i] * 20), "precision": "fp32"}))
    rows = write_summary(runs, tmp_path / "runs", tmp_path)
    assert len(rows) == 3
    got = json.loads((tmp_path / "summary" / "realmix" / "d6_mismatch100@30-100.json").read_text())
    assert got == {"last20": 54.5, "last20_std": pytest.approx(0.7071067811865476), "error_rate": 45.5,
                   "error_rate_std": pytest.approx(0.7071067811865476), "runs": 2, "precision": "fp32"}
    md = (tmp_path / "summary.md").read_text()
    assert md.startswith("| algorithm | setting |") and md.count("| realmix | d6_mismatch") == 2
    # runs 2,3 are realmix at 0 % (52, 53), runs 4,5 at 100 % (54, 55)
    assert ("| algorithm | 0 % mismatch | 100 % mismatch |\n|---|---|---|\n"
            "| realmix | 52.50 ± 0.71 | 54.50 ± 0.71 |") in md
    with Image.open(tmp_path / "summary.png") as im:
        assert im.format == "PNG" and im.size[1] > 600  # two panels: by setting, and against mismatch
    (tmp_path / "runs" / "mixmatch" / "d.1@30-100" / "accuracy.json").unlink()
    with pytest.raises(RealmixError, match="accuracy.json: missing"):
        write_summary(runs, tmp_path / "runs", tmp_path)
    with pytest.raises(RealmixError, match="no runs are planned"):
        write_summary([], tmp_path / "runs", tmp_path)


def test_dvc_metrics_show_reads_the_metrics_without_a_failed_to_load_warning(tmp_path):
    """`dvc metrics show` takes a non-empty key named "error" anywhere in a metrics file for a load failure: with 20+
    evaluations (`make repro`) it warned "DVC failed to load some metrics for following revisions: ''"."""
    runs = refs("mixmatch", "d@30-100", [1, 2])
    for i, r in enumerate(runs):  # what evaluate writes: 32 evaluations, so every median and the error rate are set
        path = tmp_path / "metrics" / "runs" / r.algorithm / r.data / "accuracy.json"
        path.parent.mkdir(parents=True)
        path.write_text(json.dumps({"run": f"runs/{r.algorithm}/{r.data}", **median_accuracies([80.0 + i] * 32)}))
    write_summary(runs, tmp_path / "metrics" / "runs", tmp_path / "metrics")
    (tmp_path / "dvc.yaml").write_text("metrics:\n  - metrics/runs\n  - metrics/summary\n")
    init_repo(tmp_path)
    shown = run(["dvc", "metrics", "show", "--json"], tmp_path)
    assert "failed to load" not in shown.stderr
    files = json.loads(shown.stdout)[""]["data"]
    assert files["metrics/summary/mixmatch/d@30-100.json"]["data"]["error_rate"] == 19.5
    assert files["metrics/runs/mixmatch/d.1@30-100/accuracy.json"]["data"]["error_rate"] == 20.0
    assert "failed to load" not in run(["dvc", "metrics", "show"], tmp_path).stderr
    # the cause, pinned with the pinned DVC: the same file with its figure named "error" is reported as a failure
    bad = tmp_path / "metrics" / "runs" / "mixmatch" / "d.1@30-100" / "accuracy.json"
    bad.write_text(bad.read_text().replace('"error_rate"', '"error"'))
    assert "failed to load some metrics" in run(["dvc", "metrics", "show"], tmp_path).stderr


def test_mismatch_table_pivots_levels_per_algorithm():
    rows = [{"algorithm": a, "mismatch": m, "copies": c, "last20": v, "last20_std": 1.0}
            for a, m, c, v in [("supervised", 0, None, 70.0), ("supervised", 50, None, 70.0),
                               ("realmix", 0, 10, 90.0), ("realmix", 50, 10, 85.0), ("mixmatch", 50, None, 60.0),
                               ("mixmatch", None, None, 99.0)]]  # the last is a plain run: not in the pivot
    assert mismatch_table(rows).splitlines() == [
        "| algorithm | 0 % mismatch | 50 % mismatch |", "|---|---|---|",
        "| supervised | 70.00 ± 1.00 | 70.00 ± 1.00 |", "| realmix (aug10) | 90.00 ± 1.00 | 85.00 ± 1.00 |",
        "| mixmatch |  | 60.00 ± 1.00 |"]
    assert mismatch_table(rows[-1:]) == ""


def test_gains_are_paired_with_supervised_by_level_and_seed():
    """Seed 1's labelled set is easy, seed 2's hard: the unpaired spread is large, the paired gain is not."""
    runs = (refs("supervised", "d6_mismatch50@30-100", [1, 2], mismatch=50)
            + refs("mixmatch", "d6_mismatch50@30-100", [1, 2], mismatch=50)
            + refs("mixmatch", "d6_mismatch50_filtered_supervised@30-100", [1, 2], mismatch=50, filtered="supervised")
            + refs("supervised", "d6_mismatch100@30-100", [1], mismatch=100)
            + refs("mixmatch", "d6_mismatch100@30-100", [1, 2], mismatch=100)
            + refs("mixmatch", "d@30-100", [1, 2]))  # a plain split: no baseline to pair with
    last20 = [90.0, 60.0, 93.0, 62.0, 89.0, 61.0, 90.0, 88.0, 0.0, 95.0, 70.0]
    medians = {r: {"last20": v, "evaluations": 32} for r, v in zip(runs, last20, strict=True)}
    rows = {(r["algorithm"], r["setting"]): r for r in aggregate(runs, medians)}
    mm = rows["mixmatch", "d6_mismatch50@30-100"]
    assert (mm["gain"], mm["gain_std"], mm["gain_above"], mm["gain_seeds"]) == (2.5, pytest.approx(0.7071, abs=1e-4),
                                                                               2, 2)
    assert mm["last20_std"] > 20  # what the pairing removes
    filtered = rows["mixmatch", "d6_mismatch50_filtered_supervised@30-100"]
    assert (filtered["gain"], filtered["gain_above"]) == (0.0, 1)  # -1 and +1: one seed above
    at100 = rows["mixmatch", "d6_mismatch100@30-100"]
    assert (at100["gain"], at100["gain_std"], at100["gain_seeds"]) == (-2.0, None, 1)  # seed 2 has no baseline
    assert "gain" not in rows["supervised", "d6_mismatch50@30-100"] and "gain" not in rows["mixmatch", "d@30-100"]
    text = report(list(rows.values()))
    assert ("| algorithm | 50 % mismatch | 100 % mismatch |\n|---|---|---|\n"
            "| mixmatch | +2.50 ± 0.71 (2/2 seeds above) | -2.00 (0/1 seeds above) |\n"
            "| mixmatch filtered by supervised | +0.00 ± 1.41 (1/2 seeds above) |  |") in text


def test_planned_runs_follow_the_train_matrices():
    p = parse({"split": {"seeds": [1, 2], "sizes": [30], "nvalid": 100},
               "preaugment": {"copies": [10], "mismatch_copies": [10]},
               "mismatch": {"name": "digits6", "levels": [0, 100], "size": 30},
               "train": {"algorithms": ["supervised", "mixmatch"], "aug_algorithms": ["realmix"],
                         "mismatch_algorithms": ["supervised"], "mismatch_aug_algorithms": ["realmix"]}})
    runs = pipeline.planned_runs(p)
    assert [(r.algorithm, r.data) for r in runs if r.seed == 1] == [
        ("supervised", "digits.1@30-100"), ("mixmatch", "digits.1@30-100"), ("realmix", "digits_aug10.1@30-100"),
        ("supervised", "digits6_mismatch0.1@30-100"), ("realmix", "digits6_mismatch0_aug10.1@30-100"),
        ("supervised", "digits6_mismatch100.1@30-100"), ("realmix", "digits6_mismatch100_aug10.1@30-100")]
    assert len(runs) == 14
    r = next(r for r in runs if r.data == "digits6_mismatch100_aug10.2@30-100")
    assert (r.setting, r.mismatch, r.copies, r.seed) == ("digits6_mismatch100_aug10@30-100", 100, 10, 2)
