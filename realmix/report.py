"""The out-of-class report of a run's unlabelled images: which of them look like none of the labelled classes.

Every unlabelled image is scored with each out-of-class score the run's model offers (realmix/openset.py:
`msp` = 1 - max softmax, `energy` = -logsumexp(logits), `knn` = the distance to the nearest labelled image's
features, `maha` = the Mahalanobis distance to the nearest labelled class, `open` = IOMatch's open head; higher =
more likely out-of-class). The cut of each score is chosen on the validation images, which are all of known,
labelled classes: the value below which `keep` (e.g. 95 %) of them fall. An unlabelled image above the cut of the
chosen score (`report.score`; `auto` = AUTO_SCORE, see choose_score) is flagged out-of-class.
Written into the run's eval/ folder:

    unlabelled.csv            file, predicted, confidence, one column per score, out_of_class (1/0), true class
    grids/out_of_class.png    the `grid` unlabelled images most likely out-of-class, most likely first
    grids/confident.png       per class (one row each, class order), its `per_class` most confident unlabelled images
    grids/mistakes.png        the `grid` test images predicted wrong with the highest confidence

Grids read left to right, top to bottom; evaluation.json's `out_of_class` lists the file in every cell.
"""

from __future__ import annotations

import csv
import io
from pathlib import Path
from typing import Any

import numpy as np
import torch

from .errors import RealmixError
from .inference import Outputs
from .openset import SCORES, ScoredPool, outlier_scores, own_score
from .params import ReportParams

MIN_SIDE = 64  # grid cells are scaled up (nearest neighbour) to at least this many pixels, so small images show


AUTO_SCORE = "maha"  # report.score auto: the score that ranked out-of-class images best in the studies (README)


def choose_score(requested: str, model: Any, offered: Any = (AUTO_SCORE,)) -> str:
    """The score that sets the out_of_class flag: `auto` is AUTO_SCORE where the scores `offered` include it, else
    the method's own (openset.own_score)."""
    if requested == "auto":
        return AUTO_SCORE if AUTO_SCORE in offered else own_score(model)
    if requested == "open" and own_score(model) != "open":
        raise RealmixError("params: report.score=open but this run's network has no open-set head (only iomatch "
                           f"has one); use auto, {' or '.join(s for s in SCORES if s != 'open')}")
    return requested


def cuts(valid_scores: dict[str, np.ndarray], keep: float) -> dict[str, float] | None:
    """Per score, the smallest validation score value at or below which a share >= `keep` of the validation
    images lie (so an image scoring above it is flagged); None without validation images."""
    if not valid_scores or len(next(iter(valid_scores.values()))) == 0:
        return None
    return {name: float(np.quantile(s.astype(np.float64), keep, method="higher")) for name, s in valid_scores.items()}


def unlabelled_csv(pool: ScoredPool, scores: dict[str, np.ndarray], flags: np.ndarray | None,
                   class_names: list[str]) -> str:
    """One row per unlabelled image, sorted by file name."""
    buf = io.StringIO()
    w = csv.writer(buf, lineterminator="\n")
    names = list(scores)
    w.writerow(["file", "predicted", "confidence", *names, "out_of_class", "true"])
    pred = pool.outputs.probs.argmax(1)
    conf = pool.outputs.probs.max(1)
    for i in sorted(range(len(pool.names)), key=lambda i: pool.names[i]):
        true = ""
        if pool.ood is not None and pool.ood[i]:
            true = "out-of-class"
        elif pool.labels[i] >= 0:
            true = class_names[pool.labels[i]]
        w.writerow([pool.names[i], class_names[pred[i]], f"{conf[i]:.6f}",
                    *(f"{scores[n][i]:.6f}" for n in names), "" if flags is None else int(flags[i]), true])
    return buf.getvalue()


def save_grid(images: list[np.ndarray], shape: tuple[int, ...], path: Path, *, nrow: int) -> None:
    """uint8 H x W x C images (None = an empty cell) as one PNG grid (torchvision's make_grid and save_image)."""
    from torchvision.utils import make_grid, save_image

    h, w, c = shape
    blank = np.full((h, w, c), 255, np.uint8)
    cells = [blank if im is None else im for im in images] or [blank]
    x = torch.from_numpy(np.stack(cells)).permute(0, 3, 1, 2).float().div_(255.0)
    scale = max(1, -(-MIN_SIDE // max(h, w)))
    if scale > 1:
        x = torch.nn.functional.interpolate(x, scale_factor=scale, mode="nearest")
    save_image(make_grid(x, nrow=nrow, padding=2, pad_value=1.0), path, format="png")


def write_report(model: Any, pool: ScoredPool, valid: Outputs | None, test_images: Any, test_labels: np.ndarray,
                 test_probs: np.ndarray, test_names: list[str], class_names: list[str], out_dir: Path,
                 params: ReportParams) -> dict[str, Any]:
    """Write unlabelled.csv and grids/*.png into `out_dir`; return the report's summary for evaluation.json."""
    scores = pool.scores()
    valid_scores = outlier_scores(valid, pool.bank) if valid is not None else {}
    score = choose_score(params.score, model, [s for s in scores if not valid_scores or s in valid_scores])
    cut = cuts(valid_scores, params.keep)
    flags = None if cut is None else scores[score] > cut[score]
    (out_dir / "unlabelled.csv").write_text(unlabelled_csv(pool, scores, flags, class_names))

    grids = out_dir / "grids"
    grids.mkdir()
    shape = pool.images.shape[1:]
    ranked = np.argsort(-scores[score], kind="stable")[:params.grid]
    save_grid([pool.images[i] for i in ranked], shape, grids / "out_of_class.png", nrow=8)

    pred, conf = pool.outputs.probs.argmax(1), pool.outputs.probs.max(1)
    confident: dict[str, list[str]] = {}
    cells: list[np.ndarray | None] = []
    for k, name in enumerate(class_names):
        rows = np.flatnonzero(pred == k)
        top = rows[np.argsort(-conf[rows], kind="stable")][:params.per_class]
        confident[name] = [pool.names[i] for i in top]
        cells += [pool.images[i] for i in top] + [None] * (params.per_class - len(top))
    save_grid(cells, shape, grids / "confident.png", nrow=params.per_class)

    known = np.flatnonzero(test_labels >= 0)
    test_pred = test_probs.argmax(1)
    wrong = known[test_pred[known] != test_labels[known]]
    worst = wrong[np.argsort(-test_probs[wrong, test_pred[wrong]], kind="stable")][:params.grid]
    save_grid([np.asarray(test_images[int(i)]) for i in worst], shape, grids / "mistakes.png", nrow=8)

    summary: dict[str, Any] = {
        "score": score, "keep": params.keep, "cuts": cut, "validation_images": 0 if valid is None else
        len(valid.probs), "scored": len(pool.names), "scored_on": pool.scored_on,
        "flagged": None if flags is None else int(flags.sum()),
        "grids": {"out_of_class": [pool.names[i] for i in ranked], "confident": confident,
                  "mistakes": [{"file": test_names[i], "true": class_names[test_labels[i]],
                                "predicted": class_names[test_pred[i]]} for i in worst]},
    }
    if pool.ood is not None and flags is not None:  # true classes known (the AUROCs: openset.pool_metrics)
        summary["flagged_ood"] = float(flags[pool.ood].mean()) if pool.ood.any() else None
        summary["flagged_in"] = float(flags[~pool.ood].mean()) if (~pool.ood).any() else None
    return summary
