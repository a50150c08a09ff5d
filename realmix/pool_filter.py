"""The filter step: a finished run (the *teacher*; by default the supervised run, which never saw the unlabelled
pool) scores every unlabelled image of its split, and the filtered split keeps the images that look in-class.

The cut is the report's (realmix/report.py `cuts`): the teacher's score value that keeps a share `keep` of the
validation images -- all of the labelled classes -- at or below it; an unlabelled image scoring above it is
dropped. The filtered split (realmix/store/filtered.py) is the source split with only the kept pool positions
stored, so SSL runs train on it like on any split and RealMix's pre-augmented copies are made of it. Beside its
manifest it holds the filter's report: dropped.csv (every dropped image, most out-of-class first) and dropped.png
(a grid of them); meta["filter"] says what was kept and, on a class-mismatch split, how well (the share of the
out-of-class images kept and of the in-class images dropped).
"""

from __future__ import annotations

import csv
import io
import os
import tempfile
from pathlib import Path
from typing import Any

import numpy as np

from .errors import RealmixError
from .openset import SCORES, Reference, outlier_scores, own_score, score_pool
from .report import cuts, save_grid
from .store import Store, write_filtered

DROPPED_CSV = "dropped.csv"
DROPPED_GRID = "dropped.png"


def filter_pool(split: Store, teacher: str | os.PathLike, out: str | os.PathLike, *, name: str, score: str,
                keep: float, grid: int = 64, batch: int = 256, device: str = "auto") -> Store:
    """Write the filtered split `name` of `split` to `out`: its pool is the images the teacher run's model.pt
    (trained on `split`) scores at or below the cut that keeps `keep` of the validation images."""
    from .hardware import pick_device
    from .inference import load_model, predict_outputs

    teacher = Path(teacher)
    if not teacher.is_file():
        raise RealmixError(f"{teacher}: no teacher model; train that run first (dvc repro trains it when "
                           "filter.teachers names an algorithm the split's train stage trains)")
    model, record = load_model(teacher, "ema", pick_device(device))
    if record.data != split.name or record.class_names != split.class_names:
        raise RealmixError(f"{teacher}: trained on {record.data}, not on {split.name}; a teacher scores the pool "
                           "of the split it was trained on")
    if score not in SCORES or (score == "open" and own_score(model) != "open"):
        raise RealmixError(f"params: filter.score={score} is not a score of the teacher {record.algorithm} "
                           f"(choose one of: {', '.join(s for s in SCORES if s != 'open')}; open needs iomatch)")
    if split.meta.get("preaugment"):
        raise RealmixError(f"{split.path}: a pre-augmented split cannot be filtered; filter its source split and "
                           "pre-augment the filtered split (the pipeline's filter stages do)")
    if not split.has("valid") or split.subset("valid").count == 0:
        raise RealmixError(f"{split.path}: no validation images to place the filter's cut on; set split.nvalid > 0")
    amp = record.autocast_dtype
    bank = Reference.of_record(record)
    pool = score_pool(model, split, batch=batch, autocast_dtype=amp, bank=bank)
    valid = predict_outputs(model, split.subset("valid").images, batch=batch, autocast_dtype=amp, open_head=True,
                            features=True)
    cut = cuts(outlier_scores(valid, pool.bank), keep)[score]
    scores = pool.scores()[score]
    kept = np.flatnonzero(scores <= cut)
    if len(kept) == 0:
        raise RealmixError(f"{split.path}: the teacher {record.algorithm} scores all {len(scores)} unlabelled images "
                           f"above the cut ({score} {cut:.4g}), so the filtered pool would be empty and an SSL run "
                           "on it would have nothing to learn from; raise filter.keep or drop the filtered runs")
    dropped = np.flatnonzero(scores > cut)
    dropped = dropped[np.argsort(-scores[dropped], kind="stable")]  # most out-of-class first
    info: dict[str, Any] = {
        "teacher": record.algorithm, "teacher_data": record.data, "score": score, "keep": keep, "cut": cut,
        "pool": int(len(scores)), "kept": int(len(kept)), "dropped": int(len(dropped)),
    }
    if pool.ood is not None:  # a class-mismatch split: how well the filter did
        ood = pool.ood
        info["ood_kept"] = float((scores[ood] <= cut).mean()) if ood.any() else None
        info["in_dropped"] = float((scores[~ood] > cut).mean()) if (~ood).any() else None
    with tempfile.TemporaryDirectory() as tmp:
        grid_path = Path(tmp) / DROPPED_GRID
        save_grid([pool.images[i] for i in dropped[:grid]], pool.images.shape[1:], grid_path, nrow=8)
        extras = {DROPPED_CSV: dropped_csv(pool, scores, dropped, split.class_names).encode(),
                  DROPPED_GRID: grid_path.read_bytes()}
    return write_filtered(split, out, kept, name=name, meta={"filter": info}, extras=extras)


def dropped_csv(pool: Any, scores: np.ndarray, dropped: np.ndarray, class_names: list[str]) -> str:
    """One row per dropped image, most out-of-class first: its name, the teacher's prediction and score, and its
    true class where known."""
    buf = io.StringIO()
    w = csv.writer(buf, lineterminator="\n")
    w.writerow(["file", "predicted", "score", "true"])
    pred = pool.outputs.probs.argmax(1)
    for i in dropped.tolist():
        true = "out-of-class" if pool.ood is not None and pool.ood[i] else (
            class_names[pool.labels[i]] if pool.labels[i] >= 0 else "")
        w.writerow([pool.names[i], class_names[pred[i]], f"{scores[i]:.6f}", true])
    return buf.getvalue()


def filter_of(store: Store) -> tuple[dict[str, Any], Path] | None:
    """The filter's summary and its grid of dropped images for a filtered split or a pool derived from one
    (following the sources); None for a split that was not filtered."""
    from .store import FilteredStore

    s: Store | None = store
    while s is not None:
        if isinstance(s, FilteredStore):
            return dict(s.meta["filter"]), s.path / DROPPED_GRID
        s = getattr(s, "source", None)
    return None
