"""The README's "Your own images" section, followed line by line in a temporary DVC repository on a generated folder
in the seed's layout (spelled-out class names, mixed sizes, modes and formats; half of unlabeled/ out-of-class).

The only departure from the README is the run size: before `dvc repro` the test shrinks the image size, network and
training length of the preset to toy values (`TOY`), so that the walkthrough runs in about a minute; the
`slow`-marked variant runs it exactly as written.
"""

from __future__ import annotations

import csv
import json
import re
import shutil
from pathlib import Path

import numpy as np
import pytest
import yaml
from PIL import Image, ImageDraw

from tests.conftest import ROOT, init_repo, run, tree_hash

pytestmark = pytest.mark.e2e
CLASSES = ("circle", "square", "triangle")
PLACEHOLDER = "/data/my_images"  # the README's example path in its one-edit line
TOY = {"dataset": {"img_size": 16}, "model": {"filters": 4}, "preaugment": {"copies": [2]},
       "train": {"train_kimg": 0.25, "report_kimg": 0.125, "save_kimg": 0.125, "batch": 16, "threads": 1,
                 "progress": False}}


def readme_steps() -> list[str]:
    """The command lines of the README's own-images walkthrough (between its begin/end markers)."""
    text = (ROOT / "README.md").read_text()
    block = re.search(r"<!-- own-images:begin.*?-->\s*```sh\n(.*?)```\s*<!-- own-images:end -->", text, re.S)
    assert block, "README.md lost its own-images walkthrough markers"
    return [line for line in block.group(1).splitlines() if line.strip()]


def shape(kind: str, rng: np.random.Generator) -> Image.Image:
    w, h = int(rng.integers(20, 48)), int(rng.integers(20, 48))
    im = Image.new("RGB", (w, h), tuple(int(v) for v in rng.integers(0, 80, 3)))
    d = ImageDraw.Draw(im)
    fg = tuple(int(v) for v in rng.integers(150, 256, 3))
    s = min(w, h) * float(rng.uniform(0.5, 0.8))
    cx, cy = w / 2, h / 2
    box = (cx - s / 2, cy - s / 2, cx + s / 2, cy + s / 2)
    if kind == "circle":
        d.ellipse(box, fill=fg)
    elif kind == "square":
        d.rectangle(box, fill=fg)
    elif kind == "triangle":
        d.polygon([(cx, cy - s / 2), (cx - s / 2, cy + s / 2), (cx + s / 2, cy + s / 2)], fill=fg)
    else:  # out-of-class: a cross of two bars
        d.rectangle((cx - s / 2, cy - s / 8, cx + s / 2, cy + s / 8), fill=fg)
        d.rectangle((cx - s / 8, cy - s / 2, cx + s / 8, cy + s / 2), fill=fg)
    return im


def save(im: Image.Image, path: Path, i: int) -> None:
    """Mixed modes and formats, as a user's folder: RGB / grayscale / RGBA, PNG and JPEG."""
    path.parent.mkdir(parents=True, exist_ok=True)
    im = {0: im, 1: im.convert("L"), 2: im.convert("RGBA")}[i % 3]
    if i % 2:
        im.convert("L" if im.mode == "L" else "RGB").save(path.with_suffix(".jpg"), quality=90)
    else:
        im.save(path.with_suffix(".png"))


def make_user_folder(root: Path) -> Path:
    rng = np.random.default_rng(0)
    for split, n in (("train", 12), ("test", 4)):
        for c in CLASSES:
            for i in range(n):
                save(shape(c, rng), root / split / c / f"{c}_{i:02d}", i)
    for i in range(24):  # half in-class, half out-of-class crosses
        save(shape(CLASSES[i % 3] if i < 12 else "cross", rng), root / "unlabeled" / f"photo_{i:02d}", i)
    return root


def shrink(proj: Path) -> None:
    data = yaml.safe_load((proj / "params.yaml").read_text())
    for section, values in TOY.items():
        data[section].update(values)
    (proj / "params.yaml").write_text(yaml.safe_dump(data, sort_keys=False))


def follow_readme(proj: Path, folder: Path, *, toy: bool) -> dict[str, str]:
    """Run the walkthrough's lines in `proj`; returns each line's output."""
    outputs = {}
    for line in readme_steps():
        if toy and line.startswith("dvc repro"):
            shrink(proj)
        cmd = line.replace(PLACEHOLDER, str(folder))
        res = run(["bash", "-euo", "pipefail", "-c", cmd], proj, check=False)
        assert res.returncode == 0, f"README line failed: {line}\n{res.stdout}\n{res.stderr}"
        outputs[line] = res.stdout
    return outputs


@pytest.fixture
def user_project(project, tmp_path):
    shutil.copytree(ROOT / "presets", project / "presets")
    init_repo(project)
    return project, make_user_folder(tmp_path / "my images")


def check_walkthrough(proj: Path, folder: Path, outputs: dict[str, str]) -> None:
    params = yaml.safe_load((proj / "params.yaml").read_text())
    assert params["dataset"]["folder"] == str(folder)  # the one edit took
    split = proj / "data" / "splits" / "mydata.1@all-20"
    manifest = json.loads((split / "manifest.json").read_text())["subsets"]
    assert manifest["valid"]["count"] == 20 and manifest["label"]["count"] == 36 - 20  # every other label used
    assert manifest["unlabel"]["count"] == 24  # the pool is unlabeled/

    # the report: one row per unlabelled file, by the user's file names, and its grids
    unlabelled = sorted(str(p.relative_to(folder)) for p in (folder / "unlabeled").iterdir())
    for algorithm in ("supervised", "mixmatch", "realmix"):
        data = "mydata_aug{}.1@all-20".format(params["preaugment"]["copies"][0]) if algorithm == "realmix" \
            else "mydata.1@all-20"
        ev = proj / "runs" / algorithm / data / "eval"
        with open(ev / "unlabelled.csv", newline="") as f:
            rows = list(csv.DictReader(f))
        assert [r["file"] for r in rows] == unlabelled
        assert {r["out_of_class"] for r in rows} <= {"0", "1"} and {r["true"] for r in rows} == {""}
        for grid in ("out_of_class", "confident", "mistakes"):
            with Image.open(ev / "grids" / f"{grid}.png") as im:
                assert im.format == "PNG" and min(im.size) >= 64
        # one number per run: evaluate's accuracy is the final evaluation the summary's medians start from
        evaluation = json.loads((ev / "evaluation.json").read_text())
        medians = json.loads((proj / "metrics" / "runs" / algorithm / data / "accuracy.json").read_text())
        assert evaluation["accuracy"] == pytest.approx(medians["last01"], abs=1e-9), algorithm
        listed = next(line for line in outputs["realmix runs"].splitlines() if f"{algorithm}/{data}" in line)
        assert f"{evaluation['accuracy']:.2f}" in listed.split()[5], listed
        assert listed.split()[1] == evaluation["precision"] == medians["precision"], listed  # what computed it
    # the preset's filtered MixMatch run: trained on the images the supervised run calls in-class, and its report
    # says which were dropped
    filtered = proj / "data" / "splits" / "mydata_filtered_supervised.1@all-20"
    with open(filtered / "dropped.csv", newline="") as f:
        dropped = [r["file"] for r in csv.DictReader(f)]
    ev = proj / "runs" / "mixmatch" / filtered.name / "eval"
    with open(ev / "unlabelled.csv", newline="") as f:
        kept = [r["file"] for r in csv.DictReader(f)]
    assert kept and sorted(kept + dropped) == unlabelled  # every pool file is either trained on or dropped
    assert json.loads((ev / "evaluation.json").read_text())["filter"]["dropped"] == len(dropped)
    with Image.open(ev / "grids" / "dropped.png") as im:
        assert im.format == "PNG"
    for setting in ("| supervised | mydata@all-20 |", "| mixmatch | mydata@all-20 |", "| realmix | mydata_aug",
                    "| mixmatch | mydata_filtered_supervised@all-20 |"):
        assert setting in outputs["realmix results"]
    head = outputs["head -5 runs/mixmatch/mydata.1@all-20/eval/unlabelled.csv"].splitlines()
    assert head[0] == "file,predicted,confidence,msp,energy,knn,maha,out_of_class,true" and len(head) == 5
    assert run(["dvc", "status"], proj).stdout.strip() == "Data and pipelines are up to date."


def test_readme_own_images_walkthrough(user_project):
    proj, folder = user_project
    before = tree_hash(folder)
    outputs = follow_readme(proj, folder, toy=True)
    check_walkthrough(proj, folder, outputs)
    assert tree_hash(folder) == before  # the user's files are only read


@pytest.mark.slow
def test_readme_own_images_walkthrough_as_written(user_project):
    proj, folder = user_project
    outputs = follow_readme(proj, folder, toy=False)
    check_walkthrough(proj, folder, outputs)


def test_the_placeholder_path_fails_with_the_fix(user_project):
    """Skipping the one edit stops the pipeline at once: DVC names the missing folder (it checks a stage's
    dependencies before running it), and `realmix download` says which param to set."""
    proj, _ = user_project
    shutil.copy(proj / "presets" / "folder.yaml", proj / "params.yaml")
    res = run(["dvc", "repro"], proj, check=False)
    assert res.returncode != 0 and "failed to reproduce 'download'" in res.stderr
    assert "path/to/your/images" in res.stderr and not (proj / "data" / "datasets").exists()
    res = run(["realmix", "download"], proj, check=False)
    assert res.returncode == 2 and res.stderr.strip().splitlines() == [
        "error: dataset.folder='path/to/your/images': folder not found; set it to your dataset root"]
