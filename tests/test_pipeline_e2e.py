"""End to end: the real DVC pipeline in a temporary repository, on toy sizes of the digits default."""

from __future__ import annotations

import json
import re
import shutil

import pytest
import torch

from realmix import checkpoint as ckpt
from realmix.hardware import describe_device, pick_precision, precision_name
from realmix.store import Store
from tests.conftest import init_repo, run
from tests.helpers import set_params

pytestmark = pytest.mark.e2e


# the runs the `repo` fixture plans
RUNS = ("runs/supervised/digits.1@30-100", "runs/supervised/digits.2@30-100", "runs/realmix/digits_aug2.1@30-100",
        "runs/realmix/digits_aug2.2@30-100")


def ran(output: str) -> set[str]:
    return set(re.findall(r"Running stage '([^']+)'", output))


@pytest.fixture
def repo(project):
    if shutil.which("git") is None:
        pytest.skip("git is required")
    set_params(project, split={"seeds": [1, 2], "sizes": [30], "nvalid": 100},
               mismatch={"levels": [0, 100]}, preaugment={"copies": [2], "mismatch_copies": []},
               model={"filters": 4, "repeat": 1},
               train={"algorithms": ["supervised"], "aug_algorithms": ["realmix"], "train_kimg": 0.25,
                      "report_kimg": 0.125, "save_kimg": 0.125, "batch": 16, "threads": 1})
    init_repo(project)
    return project


def test_repro_noop_and_partial_rerun(repo):
    first = run(["dvc", "repro"], repo)
    assert ran(first.stdout) == {
        "download", "rename", "split@1-30", "split@2-30",
        "mismatch@1-0", "mismatch@1-100", "mismatch@2-0", "mismatch@2-100",
        "preaugment@1-30-2", "preaugment@2-30-2",
        "train@1-30-supervised", "train@2-30-supervised", "train_aug@1-30-2-realmix", "train_aug@2-30-2-realmix",
        "evaluate@1-30-supervised", "evaluate@2-30-supervised", "evaluate_aug@1-30-2-realmix",
        "evaluate_aug@2-30-2-realmix", "summary",
    }
    run_dir = repo / "runs" / "realmix" / "digits_aug2.1@30-100"
    assert {p.name for p in run_dir.iterdir()} == {"checkpoints", "live", "model.pt", "tensorboard", "eval",
                                                   ".gitignore"}
    assert {p.name for p in (run_dir / "eval").iterdir()} == {"evaluation.json", "predictions.npy",
                                                              "predictions.csv", "accuracy.png", ".gitignore",
                                                              "unlabelled.csv", "grids"}
    assert (run_dir / "checkpoints" / ".gitignore").read_text() == "*\n"
    metrics = json.loads(run(["dvc", "metrics", "show", "--json"], repo).stdout)
    files = metrics[""]["data"]
    acc = files["metrics/runs/realmix/digits_aug2.1@30-100/accuracy.json"]["data"]
    # 2 evaluations per run at this toy size: the last-20 median is stated as missing (null), not made up
    assert acc["evaluations"] == 2 and "last20" not in acc and 0 <= acc["last01"] <= 100
    on_disk = json.loads((repo / "metrics/runs/realmix/digits_aug2.1@30-100/accuracy.json").read_text())
    assert on_disk["last20"] is None and on_disk["last01"] == acc["last01"]
    assert files["metrics/summary/realmix/digits_aug2@30-100.json"]["data"]["runs"] == 0
    assert set(files) == {f"metrics/runs/{r}/accuracy.json" for r in (
        "supervised/digits.1@30-100", "supervised/digits.2@30-100", "realmix/digits_aug2.1@30-100",
        "realmix/digits_aug2.2@30-100")} | {"metrics/summary/realmix/digits_aug2@30-100.json",
                                            "metrics/summary/supervised/digits@30-100.json"}
    # every figure says what computed it: the precision `auto` resolved to on this CPU, and the CPU kind
    precision = precision_name(pick_precision("auto", torch.device("cpu")))
    assert on_disk["precision"] == precision and on_disk["hardware"] == describe_device(torch.device("cpu"))
    evaluation = json.loads((run_dir / "eval" / "evaluation.json").read_text())
    assert (evaluation["precision"], evaluation["hardware"], evaluation["threads"]) == (
        precision, on_disk["hardware"], 1)
    results = run(["realmix", "results"], repo).stdout
    assert f"| supervised | digits@30-100 | 0/2 | {precision} | n/a |" in results
    assert "fewer than 20 evaluations" in results
    table = run(["realmix", "runs"], repo).stdout.splitlines()
    assert table[0].split()[:3] == ["run", "precision", "images"] and len(table) == 5
    row = next(r for r in table if r.startswith("realmix/digits_aug2.1@30-100 "))
    assert row.split()[1:3] == [precision, "256"] and "n/a (2 evals)" in row  # evaluated: 2 evaluations
    splits = repo / "data" / "splits"
    s = Store.open(splits / "digits.1@30-100")
    assert (s.subset("label").count, s.subset("valid").count, s.subset("test").count) == (30, 100, 500)
    aug = Store.open(splits / "digits_aug2.1@30-100")
    assert aug.subset("unlabel").count == 3 * s.subset("unlabel").count  # 2 copies + originals
    m = Store.open(splits / "digits6_mismatch100.2@30-100")
    assert m.num_classes == 6 and m.meta["ood_fraction"] == 1.0
    assert (repo / "data" / "rename_map.csv").read_text().startswith("old,new,class")
    run(["git", "add", "-A"], repo)
    run(["git", "commit", "-qm", "repro"], repo)

    again = run(["dvc", "repro"], repo)
    assert ran(again.stdout) == set() and "up to date" in again.stdout

    # changing one split seed reruns only what depends on that split
    set_params(repo, split={"seeds": [1, 3]})
    third = run(["dvc", "repro"], repo)
    assert ran(third.stdout) == {"split@3-30", "mismatch@3-0", "mismatch@3-100", "preaugment@3-30-2",
                                 "train@3-30-supervised", "train_aug@3-30-2-realmix", "evaluate@3-30-supervised",
                                 "evaluate_aug@3-30-2-realmix", "summary"}
    run(["git", "checkout", "params.yaml"], repo)

    # an experiment that changes only the augmentation reruns only the pre-augment stages
    exp = run(["dvc", "exp", "run", "-S", "preaugment.augment=cutout"], repo)
    assert ran(exp.stdout) == {"preaugment@1-30-2", "preaugment@2-30-2", "train_aug@1-30-2-realmix",
                               "train_aug@2-30-2-realmix", "evaluate_aug@1-30-2-realmix",
                               "evaluate_aug@2-30-2-realmix", "summary"}


def test_tsa_experiment_metrics_diff_and_plots(repo):
    run(["dvc", "repro"], repo)
    assert "failed to load" not in run(["dvc", "metrics", "show"], repo).stderr
    run(["git", "add", "-A"], repo)
    run(["git", "commit", "-qm", "repro"], repo)
    sup = repo / "runs" / "supervised" / "digits.1@30-100" / "model.pt"
    real = repo / "runs" / "realmix" / "digits_aug2.1@30-100" / "model.pt"
    sup_before = ckpt.load(sup, expect=ckpt.MODEL_FORMAT)["model"]
    real_before = ckpt.load(real, expect=ckpt.MODEL_FORMAT)["model"]
    exp = run(["dvc", "exp", "run", "-S", "tsa=linear_schedule"], repo)
    # tsa is declared by every train stage; runs it does not affect resume at their end without retraining,
    # rewrite the same model.pt, and so are not re-evaluated
    # (summary reruns only if a re-evaluated run's accuracy.json changed: at this toy size it may not)
    assert ran(exp.stdout) - {"summary"} == {"train@1-30-supervised", "train@2-30-supervised",
                                             "train_aug@1-30-2-realmix", "train_aug@2-30-2-realmix",
                                             "evaluate_aug@1-30-2-realmix", "evaluate_aug@2-30-2-realmix"}
    assert "starting from scratch" in exp.stderr + exp.stdout
    sup_after = ckpt.load(sup, expect=ckpt.MODEL_FORMAT)["model"]
    real_after = ckpt.load(real, expect=ckpt.MODEL_FORMAT)["model"]
    assert all(torch.equal(sup_before[k], sup_after[k]) for k in sup_before)
    assert not all(torch.equal(real_before[k], real_after[k]) for k in real_before)
    tsa = repo / "runs/realmix/digits_aug2.1@30-100/live/plots/metrics/train/tsa_threshold.tsv"
    assert tsa.exists()
    shown = run(["dvc", "exp", "show", "--json"], repo).stdout
    assert "linear_schedule" in shown

    diff = json.loads(run(["dvc", "metrics", "diff", "--all", "--json"], repo).stdout)
    rm = diff["metrics/runs/realmix/digits_aug2.1@30-100/accuracy.json"]
    assert rm["evaluations"]["old"] == rm["evaluations"]["new"] == 2 and "new" in rm["last01"]
    sup_diff = diff["metrics/runs/supervised/digits.1@30-100/accuracy.json"]
    assert all(v["old"] == v["new"] for v in sup_diff.values())  # not retrained, not re-evaluated
    table = run(["dvc", "metrics", "diff", "--all"], repo).stdout
    assert "HEAD" in table and "workspace" in table and "last01" in table

    # the views: PNGs (offline), each run's dvclive histories and test confusion matrix (vega), nothing else
    shown = run(["dvc", "plots", "show", "--json"], repo)
    assert "failed to load" not in shown.stderr
    out = json.loads(shown.stdout)
    assert not out.get("errors")
    plots = out["data"]
    kinds = {name: {r["type"] for r in rs} for name, rs in plots.items()}
    images = {name for name, k in kinds.items() if k == {"image"}}
    grids = ("out_of_class", "confident", "mistakes")  # the out-of-class report's image grids
    assert images == {"metrics/summary.png"} | {f"{r}/eval/accuracy.png" for r in RUNS} | {
        f"{r}/eval/grids/{g}.png" for r in RUNS for g in grids}
    vega = set(plots) - images
    assert all(kinds[name] == {"vega"} for name in vega)
    curves = {name for name in vega if re.fullmatch(r"runs/[^/]+/[^/]+/live/plots/metrics/.+\.tsv", name)}
    assert vega - curves == {f"{r}/eval/predictions.csv" for r in RUNS}  # no binaries, no stray JSON or CSV
    run_dir = "runs/realmix/digits_aug2.1@30-100"
    assert {f"{run_dir}/live/plots/metrics/{m}.tsv" for m in ("test/accuracy", "train/loss", "train/tsa_threshold")
            } <= curves
    accuracy = plots[f"{run_dir}/live/plots/metrics/test/accuracy.tsv"][0]["content"]
    assert accuracy["encoding"]["x"]["field"] == "step" and '"field": "accuracy"' in json.dumps(accuracy)
    confusion = json.dumps(plots[f"{run_dir}/eval/predictions.csv"][0]["content"])
    assert '"x": {"field": "predicted"' in confusion and '"y": {"field": "true"' in confusion
    run(["dvc", "plots", "show", "-o", "plots_html"], repo)
    page = (repo / "plots_html" / "index.html").read_text()
    assert page.count("<img") == len(images)  # the PNGs need nothing else
    assert "https://cdn.jsdelivr.net/npm/vega@" in page  # the vega views load their library from a CDN
    # `dvc plots diff` overlays the revisions in one chart per history (the PNGs side by side)
    diff = json.loads(run(["dvc", "plots", "diff", "HEAD", "--json"], repo).stdout)["data"]
    assert set(diff[f"{run_dir}/live/plots/metrics/test/accuracy.tsv"][0]["revisions"]) == {"HEAD", "workspace"}
    assert len(diff["metrics/summary.png"]) == 2
    run(["dvc", "plots", "diff", "HEAD", "-o", "diff_html"], repo)
    assert (repo / "diff_html" / "index.html").read_text().count("<img") == 2 * len(images)

    # the trained models as a DVC model-registry artifact, fetched by version (a GTO-style Git tag)
    from dvc.repo import Repo

    with Repo(str(repo)) as dvc_repo:
        artifact = dvc_repo.artifacts.read()["dvc.yaml"]["models"]
    assert (artifact.path, artifact.type) == ("runs", "model")
    run(["git", "tag", "-a", "models@v0.0.1", "-m", "models", "HEAD"], repo)
    run(["dvc", "artifacts", "get", ".", "models", "-o", "got"], repo)
    got = repo / "got"
    assert {str(p.relative_to(got)) for p in got.glob("*/*/model.pt")} == {f"{r[5:]}/model.pt" for r in RUNS}
    assert not list(got.glob("*/*/checkpoints"))  # local only (cache: false)


def test_bad_param_fails_the_stage_with_one_line(repo):
    set_params(repo, dataset={"name": "bad-name"})
    res = run(["dvc", "repro", "download"], repo, check=False)
    assert res.returncode != 0
    line = next(x for x in res.stderr.splitlines() if x.startswith("error: "))
    assert "dataset.name='bad-name'" in line and "use letters, digits and '_'" in line
    assert not (repo / "data" / "datasets").exists() or not any((repo / "data" / "datasets").iterdir())


def test_cli_help_and_stage_errors(repo):
    out = run(["realmix", "--help"], repo).stdout
    for cmd in ("download", "rename", "split", "mismatch", "preaugment", "train", "evaluate", "summary", "results",
                "datasets", "runs"):
        assert cmd in out
    res = run(["python", "stages/split.py", "--seed", "1", "--size", "30"], repo, check=False)
    assert res.returncode == 2 and res.stderr.strip().startswith("error: data/datasets/digits: not a dataset store")
