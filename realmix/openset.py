"""Open-set view of a run: which unlabelled images are out-of-class, and how well a model's scores find them.

On a class-mismatch split (realmix/mismatch.py) the class of every unlabelled image is known, so each one is
in-class (one of the labelled classes) or out-of-class. A run is scored there with:
- AUROC of an out-of-class score over the unlabelled pool (scikit-learn's roc_auc_score; in-class = 0, out-of-
  class = 1; 0.5 = chance, below 0.5 = the score ranks out-of-class images as *more* in-class). The scores:
  `msp`: 1 - max softmax probability (every model); `open`: the out-of-class probability of IOMatch's (K+1)-way
  open head (models with open-set heads). Each run's own score (`auroc`) is `open` where the model has the
  head, else `msp`.
- the share of out-of-class (and of in-class) unlabelled images that the method's mask admitted into its
  unlabelled loss during training, from the training logs (train/ood_admitted, train/in_admitted).
"""

from __future__ import annotations

from typing import Any

import numpy as np

from .inference import has_open_heads, predict_outputs
from .preaugment import original_positions
from .store import Store


def ood_flags(store: Store, subset: str = "unlabel") -> np.ndarray | None:
    """Per image of `subset`: True where out-of-class; None when the store is not a class-mismatch split (its
    unlabelled classes are then unknown or all in-class)."""
    meta = store.meta
    ood = meta.get("ood_classes")
    if ood is None or not store.has(subset):
        return None
    labels = store.subset(subset).labels
    if meta.get("remap", True):
        return labels < 0  # remapped splits mark every class outside the labelled ones -1
    return np.isin(labels, ood)


def outlier_scores(probs: np.ndarray, open_probs: np.ndarray | None = None) -> dict[str, np.ndarray]:
    """Out-of-class scores (higher = more likely out-of-class) from closed-set probabilities (N x K) and, for a
    model with an open head, its (K+1)-way probabilities (N x (K+1))."""
    scores = {"msp": 1.0 - probs.max(1)}
    if open_probs is not None:
        scores["open"] = open_probs[:, -1]
    return scores


def auroc(scores: np.ndarray, ood: np.ndarray) -> float | None:
    """AUROC of `scores` for out-of-class detection; None when the pool is all in-class or all out-of-class."""
    from sklearn.metrics import roc_auc_score

    if ood.all() or not ood.any():
        return None
    return float(roc_auc_score(ood.astype(np.int64), scores))


def admitted_shares(history: list[dict[str, float]]) -> dict[str, Any]:
    """Mean over a run's report windows of the share of out-of-class / in-class unlabelled images admitted into
    the unlabelled loss (None for a method without unlabelled loss or a split without known classes)."""
    out: dict[str, Any] = {}
    for key, name in (("train/ood_admitted", "ood_admitted"), ("train/in_admitted", "in_admitted")):
        values = [r[key] for r in history if key in r]
        out[name] = float(np.mean(values)) if values else None
    return out


def pool_metrics(model: Any, store: Store, history: list[dict[str, float]], *, batch: int = 256,
                 autocast_dtype: Any = None) -> dict[str, Any] | None:
    """The open-set metrics of a trained model on its split's unlabelled pool; None unless the split is a
    class-mismatch split. A pre-augmented pool is scored on its unaugmented originals where it kept them.

    Returns the AUROC of each score the model offers (auroc_msp, auroc_open), the run's own (auroc, with
    `score` naming it), the admitted shares from training, and the pool's size and out-of-class count.
    """
    ood = ood_flags(store, "unlabel")
    if ood is None:
        return None
    pool = store.subset("unlabel")
    positions = original_positions(store)
    scored = "originals of the pre-augmented pool" if positions is not None else "pool"
    if positions is None:
        positions = np.arange(pool.count)
    images = np.asarray(pool.images[positions])
    ood = ood[positions]
    probs, open_probs = predict_outputs(model, images, batch=batch, autocast_dtype=autocast_dtype, open_head=True)
    scores = outlier_scores(probs, open_probs)
    out: dict[str, Any] = {f"auroc_{name}": auroc(s, ood) for name, s in scores.items()}
    own = "open" if has_open_heads(model) else "msp"
    out.update({"auroc": out[f"auroc_{own}"], "score": own, "unlabelled_scored": int(len(ood)),
                "unlabelled_ood": int(ood.sum()), "scored_on": scored, **admitted_shares(history)})
    return out
