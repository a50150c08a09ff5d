"""The class-mismatch study preset runs as one `dvc repro` in a temporary repository, at toy size."""

from __future__ import annotations

import json
import re
import shutil

import numpy as np
import pytest
import yaml
from PIL import Image

from realmix import checkpoint as ckpt
from realmix.store import Store
from tests.conftest import ROOT, init_repo, run

pytestmark = pytest.mark.e2e


@pytest.fixture
def study(project):
    if shutil.which("git") is None:
        pytest.skip("git is required")
    data = yaml.safe_load((ROOT / "presets" / "mismatch_digits.yaml").read_text())
    data["split"]["seeds"] = [1]
    data["mismatch"]["levels"] = [0, 50]
    data["preaugment"]["mismatch_copies"] = [2]
    data["model"].update(filters=4, repeat=1)
    # 16 steps of batch 16 with an evaluation every step: 20+ evaluations, so the last-20 medians exist
    data["train"].update(train_kimg=0.3125, report_kimg=0.015625, save_kimg=0.3125, batch=16, threads=1,
                         progress=False)
    for method in ("fixmatch", "iomatch"):
        data[method]["mu"] = 2
    (project / "params.yaml").write_text(yaml.safe_dump(data, sort_keys=False))
    init_repo(project)
    return project


def test_mismatch_study_is_one_repro(study):
    run(["dvc", "repro"], study)
    algorithms = ("supervised", "mixmatch", "fixmatch", "iomatch")
    runs = {f"{a}/digits6_mismatch{lvl}.1@30-100" for a in algorithms for lvl in (0, 50)}
    runs |= {f"realmix/digits6_mismatch{lvl}_aug2.1@30-100" for lvl in (0, 50)}
    assert {str(p.parent.relative_to(study / "runs")) for p in (study / "runs").glob("*/*/model.pt")} == runs

    # every level shares the labelled, validation and test images; only the unlabelled classes change
    stores = {lvl: Store.open(study / "data" / "splits" / f"digits6_mismatch{lvl}.1@30-100") for lvl in (0, 50)}
    for subset in ("label", "valid", "test"):
        assert np.array_equal(stores[0].subset(subset).images[:], stores[50].subset(subset).images[:])
    unl = {lvl: set(np.unique(s.subset("unlabel").labels[:]).tolist()) for lvl, s in stores.items()}
    assert unl[0] == {2, 3, 4, 5} and unl[50] == {-1, 4, 5}  # digits 6 and 7 are unknown classes at 50 %
    # so the supervised baseline is the same model at every level
    sup = [ckpt.load(study / "runs" / r / "model.pt", expect=ckpt.MODEL_FORMAT)["model"]
           for r in sorted(runs) if r.startswith("supervised/")]
    assert all(np.array_equal(sup[0][k].numpy(), sup[1][k].numpy()) for k in sup[0])

    md = (study / "metrics" / "summary.md").read_text()
    pivot = md[md.index("| algorithm | 0 % mismatch | 50 % mismatch |"):].splitlines()
    names = ["| supervised", "| mixmatch", "| fixmatch", "| iomatch", "| realmix (aug2)"]
    assert [line.split(" | ")[0] for line in pivot[2:7]] == names
    cells = [c for line in pivot[2:7] for c in line.strip("| ").split(" | ")[1:]]
    # one seed: every median exists, and no spread is shown for it (no fake "± 0.00")
    assert len(cells) == 10 and all(re.fullmatch(r"\d+\.\d\d", c.strip()) for c in cells), cells
    assert pivot[2].split(" | ")[1] == pivot[2].split(" | ")[2].rstrip(" |")  # supervised: same at both levels
    got = json.loads((study / "metrics/summary/realmix/digits6_mismatch50_aug2@30-100.json").read_text())
    assert got["runs"] == 1 and 0 <= got["last20"] <= 100

    # open-set figures: AUROC of each run's own score at 50 % (undefined at 0 %: no out-of-class image), the
    # admitted out-of-class share of every SSL method; none for supervised (no unlabelled loss)
    for algorithm in algorithms:
        acc = json.loads((study / f"metrics/runs/{algorithm}/digits6_mismatch50.1@30-100/accuracy.json").read_text())
        assert 0 <= acc["auroc"] <= 1
        assert (acc["ood_admitted"] is None) == (algorithm == "supervised")
        assert acc["auroc_open" if algorithm == "iomatch" else "auroc_msp"] == acc["auroc"]
        zero = json.loads((study / f"metrics/runs/{algorithm}/digits6_mismatch0.1@30-100/accuracy.json").read_text())
        assert zero["auroc"] is None and zero["ood_admitted"] is None
    got = json.loads((study / "metrics/summary/iomatch/digits6_mismatch50@30-100.json").read_text())
    assert 0 <= got["auroc"] <= 1 and 0 <= got["ood_admitted"] <= 1
    table = md[md.index("AUROC of the run's own"):].splitlines()
    assert table[2].startswith("| algorithm | 0 % mismatch | 50 % mismatch |")
    assert any(line.startswith("| iomatch | n/a | ") for line in table)
    with Image.open(study / "metrics" / "summary.png") as im:
        assert im.format == "PNG"
    assert run(["realmix", "results"], study).stdout == md
