"""Class filters for the class-mismatch protocol (method reference §C.7).

From one split, keep the labelled classes in `label`, `valid` and `test`, and a chosen set of classes
in `unlabel`; the share of unlabelled classes outside the labelled ones is the mismatch level. Fixes over
the original `filter_dataset.py`: labels can be remapped to 0..k-1 (`remap`), the validation set only
holds labelled classes (the original kept out-of-distribution images there with unlearnable labels), and
filtering is a vectorised `isin`, not O(n^2).
"""

from __future__ import annotations

from pathlib import Path

import numpy as np

from .errors import RealmixError
from .store import NAMES, Store, StoreWriter

PARTS = ("label", "valid", "unlabel", "test")


def filter_split(split: Store, out: str | Path, *, name: str, labelled_classes: list[int],
                 unlabelled_classes: list[int], remap: bool = True, level: int | None = None) -> Store:
    """Write the mismatch dataset `name` cut from `split` to `out`."""
    k = split.num_classes
    for key, classes in (("labelled_classes", labelled_classes), ("unlabelled_classes", unlabelled_classes)):
        bad = [c for c in classes if not 0 <= c < k]
        if bad:
            raise RealmixError(
                f"params: mismatch.{key} has class ids {bad} outside 0..{k - 1} of {split.path} "
                f"(classes: {', '.join(split.class_names)})"
            )
    lab = sorted(labelled_classes)
    if remap:
        class_names = [split.class_names[c] for c in lab]
        table = np.full(k + 1, -1, np.int64)  # index 0 is label -1 (unknown)
        table[np.array(lab) + 1] = np.arange(len(lab))
    else:
        class_names = split.class_names
        table = np.arange(-1, k, dtype=np.int64)
    keep = {"label": lab, "valid": lab, "test": lab, "unlabel": sorted(unlabelled_classes)}
    ood = sorted(set(unlabelled_classes) - set(lab))
    counts: dict[str, int] = {}
    meta = {
        "split": split.name, "level": level, "labelled_classes": lab,
        "unlabelled_classes": sorted(unlabelled_classes), "ood_classes": ood, "remap": remap,
    }
    names: dict[str, list[str]] = {}
    with StoreWriter(out, class_names, name=name, meta=meta) as w:
        for part in PARTS:
            if not split.has(part):
                continue
            n = n_ood = row = 0
            source_names = split.row_names(part)
            for images, labels in split.subset(part).iter_shards():
                if part == "unlabel" and (labels < 0).any():
                    raise RealmixError(
                        f"{split.path}: its unlabelled images include images of unknown class, so they "
                        "cannot be filtered by class; the mismatch protocol needs a fully labelled pool"
                    )
                sel = np.isin(labels, keep[part])
                if source_names is not None:
                    names.setdefault(part, []).extend(source_names[row + i] for i in np.flatnonzero(sel).tolist())
                row += len(labels)
                n += int(sel.sum())
                if part == "unlabel":
                    n_ood += int(np.isin(labels, ood).sum())
                w.add_shard(part, np.asarray(images[sel]), table[labels[sel] + 1])
            counts[part] = n
            if part == "unlabel":
                w.meta["ood_fraction"] = round(n_ood / max(n, 1), 6)
        if names:
            w.write_json(NAMES, names)
        for part in ("label", "unlabel", "test"):
            if counts.get(part, 0) == 0:
                raise RealmixError(
                    f"mismatch {name}: no {part} images of classes {keep[part]} in {split.path}; "
                    "check mismatch.labelled_classes / mismatch.unlabelled_classes"
                )
    return Store.open(out)

