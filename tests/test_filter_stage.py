"""The filter stage under `dvc repro` at toy size: a supervised teacher filters a class-mismatch split, MixMatch and
RealMix (on pre-augmented copies of the kept images) train on it, and changing the teacher reruns exactly what
depends on it."""

from __future__ import annotations

import json
import re
import shutil

import pytest
import yaml

from realmix.store import FilteredStore, Store, VirtualStore
from tests.conftest import ROOT, init_repo, run

pytestmark = pytest.mark.e2e

SPLIT = "digits6_mismatch50.1@30-100"
FILTERED = "digits6_mismatch50_filtered_supervised.1@30-100"
AUG = "digits6_mismatch50_filtered_supervised_aug2.1@30-100"


@pytest.fixture
def study(project):
    if shutil.which("git") is None:
        pytest.skip("git is required")
    data = yaml.safe_load((ROOT / "presets" / "mismatch_digits.yaml").read_text())
    data["split"]["seeds"] = [1]
    data["mismatch"]["levels"] = [50]
    data["preaugment"]["mismatch_copies"] = [2]
    data["model"].update(filters=4, repeat=1)
    data["train"].update(train_kimg=0.0625, report_kimg=0.03125, save_kimg=0.0625, batch=16, threads=1,
                         progress=False, mismatch_algorithms=["supervised", "mixmatch"], mismatch_aug_algorithms=[],
                         mismatch_filtered_algorithms=["mixmatch"], mismatch_filtered_aug_algorithms=["realmix"])
    data["filter"].update(mismatch_teachers=["supervised"], score="energy", keep=0.8)
    (project / "params.yaml").write_text(yaml.safe_dump(data, sort_keys=False))
    init_repo(project)
    return project


def ran(output: str) -> set[str]:
    return set(re.findall(r"Running stage '([^']+)'", output))


def test_the_filter_stage_feeds_the_filtered_runs_and_follows_its_teacher(study):
    first = ran(run(["dvc", "repro"], study).stdout)
    assert any(s.startswith("filter_mismatch@") for s in first)
    splits = study / "data" / "splits"
    filtered = Store.open(splits / FILTERED)
    assert isinstance(filtered, FilteredStore)
    info = filtered.meta["filter"]
    assert info["teacher"] == "supervised" and info["score"] == "energy" and info["keep"] == 0.8
    assert info["kept"] + info["dropped"] == info["pool"] == Store.open(splits / SPLIT).subset("unlabel").count
    assert 0 <= info["ood_kept"] <= 1 and 0 <= info["in_dropped"] <= 1
    assert (splits / FILTERED / "dropped.csv").read_text().count("\n") == info["dropped"] + 1
    aug = Store.open(splits / AUG)  # RealMix's copies are made of the kept images only
    assert isinstance(aug, VirtualStore) and isinstance(aug.source, FilteredStore)
    assert aug.subset("unlabel").count == info["kept"] * 3

    runs = {str(p.parent.relative_to(study / "runs")) for p in (study / "runs").glob("*/*/model.pt")}
    assert runs == {f"supervised/{SPLIT}", f"mixmatch/{SPLIT}", f"mixmatch/{FILTERED}", f"realmix/{AUG}"}
    for name in (f"mixmatch/{FILTERED}", f"realmix/{AUG}"):
        ev = json.loads((study / "runs" / name / "eval" / "evaluation.json").read_text())
        assert ev["filter"] == info and (study / "runs" / name / "eval" / "grids" / "dropped.png").is_file()
        acc = json.loads((study / "metrics" / "runs" / name / "accuracy.json").read_text())
        assert acc["filter_dropped"] == info["dropped"] and acc["filter_in_dropped"] == info["in_dropped"]
    md = (study / "metrics" / "summary.md").read_text()
    assert "| mixmatch filtered by supervised | " in md and "| realmix filtered by supervised (aug2) | " in md

    # the teacher's params change: its run, the filter and everything trained on the filtered split rerun; the
    # unfiltered MixMatch run and the data stages do not
    params = yaml.safe_load((study / "params.yaml").read_text())
    params["supervised"]["smoothing"] = 0.05
    (study / "params.yaml").write_text(yaml.safe_dump(params, sort_keys=False))
    second = ran(run(["dvc", "repro"], study).stdout)
    kinds = {s.split("@")[0] for s in second}
    assert kinds == {"train_mismatch", "evaluate_mismatch", "filter_mismatch", "preaugment_mismatch_filtered",
                     "train_mismatch_filtered", "train_mismatch_filtered_aug", "evaluate_mismatch_filtered",
                     "evaluate_mismatch_filtered_aug", "summary"}, second
    assert not any("mixmatch" in s for s in second if s.startswith(("train_mismatch@", "evaluate_mismatch@")))
    assert Store.open(splits / FILTERED).meta["filter"]["cut"] != info["cut"]
