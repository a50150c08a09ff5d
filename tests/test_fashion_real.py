"""Real data end to end: the Fashion-MNIST files of Debian's `dataset-fashion-mnist` through one `dvc repro` in a
temporary repository (download, split, the class-mismatch protocol, training, evaluation, summary), then
`realmix predict` on a folder of its images.

Marked `realdata` (not run by `make test`; `make test-realdata` runs it). Without the package's files it fails
with the download stage's one-line message saying how to get them; it is never skipped.
"""

from __future__ import annotations

import json

import numpy as np
import pytest
import yaml
from PIL import Image

from realmix.sources.fashion_mnist import CLASS_NAMES, DEBIAN_DIR
from realmix.store import Store
from tests.conftest import init_repo, run

pytestmark = pytest.mark.realdata

SPLIT = "fashion.1@60-100"
LEVELS = (0, 100)
RUNS = [(a, f"fashion6_mismatch{level}.1@60-100") for a in ("supervised", "mixmatch") for level in LEVELS]


@pytest.fixture
def repo(project):
    data = yaml.safe_load((project / "params.yaml").read_text())
    data["dataset"].update(source="fashion_mnist", name="fashion", archive_dir=DEBIAN_DIR, download=False)
    data["split"].update(seeds=[1], sizes=[60], nvalid=100)
    # the mismatch protocol on clothes: labelled tops, trousers, dresses, coats; footwear and bags are the
    # unknown classes swapped in at 100 %
    data["mismatch"] = {"name": "fashion6", "size": 60, "levels": list(LEVELS), "labelled_classes": [0, 1, 2, 3, 4, 6],
                        "unlabelled_classes": {0: [2, 3, 4, 6], 100: [5, 7, 8, 9]}, "remap": True}
    data["preaugment"].update(copies=[], mismatch_copies=[])
    data["model"].update(filters=4, repeat=1, scales=0)  # scales from the 28 px images: 3
    data["train"].update(algorithms=[], aug_algorithms=[], mismatch_algorithms=["supervised", "mixmatch"],
                         mismatch_aug_algorithms=[], batch=16, train_kimg=0.25, report_kimg=0.125, save_kimg=0.25,
                         eval_batch=500, threads=1, progress=False)
    (project / "params.yaml").write_text(yaml.safe_dump(data, sort_keys=False))
    return init_repo(project)


def test_fashion_mnist_repro(repo):
    res = run(["dvc", "repro"], repo, check=False)
    if res.returncode:  # e.g. the package is not installed: the stage's one-line message says what to do
        errors = [line for line in (res.stderr + res.stdout).splitlines() if line.startswith("error: ")]
        pytest.fail(errors[0] if errors else f"dvc repro failed:\n{res.stdout}\n{res.stderr}", pytrace=False)

    ds = Store.open(repo / "data" / "datasets" / "fashion")
    assert ds.image_shape == [28, 28, 1] and ds.class_names == CLASS_NAMES
    assert {s: ds.subset(s).count for s in ds.subsets} == {"train": 60_000, "test": 10_000}
    assert ds.subset("test").class_counts == {c: 1000 for c in CLASS_NAMES}
    assert len(ds.meta["verified"]) == 4

    split = Store.open(repo / "data" / "splits" / SPLIT)
    assert split.image_shape == [28, 28, 1] and split.subset("label").count == 60
    stores = {lvl: Store.open(repo / "data" / "splits" / f"fashion6_mismatch{lvl}.1@60-100") for lvl in LEVELS}
    assert stores[0].class_names == ["T-shirt_top", "Trouser", "Pullover", "Dress", "Coat", "Shirt"]
    assert [stores[lvl].meta["unlabelled_classes"] for lvl in LEVELS] == [[2, 3, 4, 6], [5, 7, 8, 9]]
    unl = {lvl: set(np.unique(s.subset("unlabel").labels[:]).tolist()) for lvl, s in stores.items()}
    assert unl[0] == {2, 3, 4, 5} and unl[100] == {-1}  # remapped: Shirt (6) is class 5; 100 %: all unknown
    for subset in ("label", "valid", "test"):
        assert np.array_equal(stores[0].subset(subset).images[:], stores[100].subset(subset).images[:])
    assert stores[0].subset("test").count == 6000

    for algorithm, data in RUNS:
        acc = json.loads((repo / "metrics" / "runs" / algorithm / data / "accuracy.json").read_text())
        assert acc["evaluations"] == 2 and 0 <= acc["last01"] <= 100, (algorithm, data, acc)
        assert (repo / "runs" / algorithm / data / "eval" / "accuracy.png").is_file()
    assert (repo / "metrics" / "summary.md").is_file()
    with Image.open(repo / "metrics" / "summary.png") as im:
        assert im.format == "PNG"

    # the trained model on a folder of the test images, saved as PNG files in class folders
    test = stores[0].subset("test")
    for i in range(12):
        folder = repo / "photos" / stores[0].class_names[int(test.labels[i])]
        folder.mkdir(parents=True, exist_ok=True)
        Image.fromarray(test.images[i][..., 0]).save(folder / f"{i}.png")
    out = run(["realmix", "predict", "--model", f"runs/mixmatch/{RUNS[-1][1]}/model.pt", "--images", "photos",
               "--out", "predictions"], repo).stdout
    assert "predicted 12 images" in out and "on 12 labelled" in out
    rows = (repo / "predictions" / "predictions.csv").read_text().splitlines()
    assert len(rows) == 13 and all(r.split(",")[1] in stores[0].class_names for r in rows[1:])
