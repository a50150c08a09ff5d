"""Open-set view of a run: which unlabelled images are out-of-class, and how well a model's scores find them.

On a class-mismatch split (realmix/mismatch.py) the class of every unlabelled image is known, so each one is
in-class (one of the labelled classes) or out-of-class. A run is scored there with:
- AUROC of an out-of-class score over the unlabelled pool (scikit-learn's roc_auc_score; in-class = 0, out-of-
  class = 1; 0.5 = chance, below 0.5 = the score ranks out-of-class images as *more* in-class). The scores:
  `msp`: 1 - max softmax probability and `energy`: -logsumexp(logits) (every model); `knn`: the distance of an
  image's L2-normalised pooled features to the nearest of the run's labelled images' (Sun et al., ICML 2022, with
  k = 1: a run has few labels); `maha`: the Mahalanobis distance of those features to the nearest labelled class
  mean under one covariance shared by the classes (Lee et al., NeurIPS 2018; the covariance shrunk as Ledoit and
  Wolf, since a run has fewer labels than feature dimensions per class); `open`: the out-of-class probability of
  IOMatch's (K+1)-way open head (models with open-set heads). Each run's own score (`auroc`) is `open` where
  the model has the head, else `msp`.
- the share of out-of-class (and of in-class) unlabelled images that the method's mask admitted into its
  unlabelled loss during training, from the training logs (train/ood_admitted, train/in_admitted).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import numpy as np

from .inference import Outputs, has_open_heads, predict_outputs
from .store import Store, original_positions

SCORES = ("msp", "energy", "knn", "maha", "open")  # the out-of-class scores `outlier_scores` computes, in order
KNN_K = 1  # the k-th nearest labelled image (Sun et al. use k = 50 of 50,000; a run here has 30 to a few hundred)


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


def knn_distance(features: np.ndarray, bank: np.ndarray, k: int = KNN_K, chunk: int = 4096) -> np.ndarray:
    """Per row of `features`, the Euclidean distance to its k-th nearest row of `bank` (both L2-normalised, so
    d^2 = 2 - 2 cos), computed `chunk` rows at a time."""
    if len(bank) < k:
        raise ValueError(f"the kNN score needs at least {k} labelled images, got {len(bank)}")
    out = np.empty(len(features), np.float32)
    b = bank.astype(np.float32, copy=False)
    for i in range(0, len(features), chunk):
        sim = features[i:i + chunk].astype(np.float32, copy=False) @ b.T
        kth = np.partition(-sim, k - 1, axis=1)[:, k - 1]  # -(k-th largest cosine)
        out[i:i + chunk] = np.sqrt(np.clip(2.0 + 2.0 * kth, 0.0, None))
    return out


def mahalanobis_distance(features: np.ndarray, bank: np.ndarray, labels: np.ndarray, chunk: int = 4096) -> np.ndarray:
    """Per row of `features`, the Mahalanobis distance to the nearest class mean of `bank` (rows of class
    `labels`), under the covariance of the rows around their class means shared by all classes and shrunk by
    scikit-learn's Ledoit-Wolf estimator; computed `chunk` rows at a time."""
    from sklearn.covariance import LedoitWolf

    classes = np.unique(labels)
    b = bank.astype(np.float64)
    means = np.stack([b[labels == c].mean(0) for c in classes])
    precision = LedoitWolf(assume_centered=True).fit(b - means[np.searchsorted(classes, labels)]).precision_
    out = np.empty(len(features), np.float32)
    for i in range(0, len(features), chunk):
        d = features[i:i + chunk].astype(np.float64)[:, None, :] - means[None]  # N x C x F
        out[i:i + chunk] = np.sqrt(np.clip(np.einsum("ncf,fg,ncg->nc", d, precision, d).min(1), 0.0, None))
    return out


@dataclass(frozen=True)
class Reference:
    """The labelled images as the distance scores see them: their normalised pooled features by the scored model
    and their classes (None: a model.pt written before classes were recorded, which offers kNN only)."""

    features: np.ndarray
    labels: np.ndarray | None = None

    def scores(self, features: np.ndarray) -> dict[str, np.ndarray]:
        out = {"knn": knn_distance(features, self.features)}
        if self.labels is not None:
            out["maha"] = mahalanobis_distance(features, self.features, self.labels)
        return out

    @classmethod
    def of_record(cls, record: Any) -> Reference | None:
        """The reference a run's model.pt records (checkpoint.ModelRecord), None where it has none."""
        if record.label_features is None:
            return None
        labels = None if record.label_classes is None else record.label_classes.numpy()
        return cls(record.label_features.numpy(), labels)


def label_reference(model: Any, images: Any, labels: np.ndarray, *, batch: int = 256,
                    autocast_dtype: Any = None) -> Reference:
    """The distance scores' reference: the normalised pooled features of a run's labelled images, and their
    classes."""
    out = predict_outputs(model, images, batch=batch, autocast_dtype=autocast_dtype, features=True)
    return Reference(out.features, np.asarray(labels, np.int64))


def outlier_scores(out: Outputs, bank: Reference | None = None) -> dict[str, np.ndarray]:
    """Every out-of-class score (higher = more likely out-of-class) a network's outputs offer, in SCORES order:
    `msp` = 1 - max softmax probability, `energy` = -logsumexp(logits), `knn` and `maha` = the distances to the
    labelled images' features where the `bank` (`label_reference`) and the outputs' features are given, and `open`
    = the open head's out-of-class probability where the network has one."""
    scores = {"msp": 1.0 - out.probs.max(1), "energy": out.energy}
    if bank is not None and out.features is not None:
        scores.update(bank.scores(out.features))
    if out.open_probs is not None:
        scores["open"] = out.open_probs[:, -1]
    return scores


def own_score(model: Any) -> str:
    """The score a method itself ranks out-of-class images by: IOMatch's open head where the network has it, else
    1 - max softmax probability (the confidence RealMix's OOD mask and FixMatch's threshold use)."""
    return "open" if has_open_heads(model) else "msp"


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


@dataclass
class ScoredPool:
    """A split's unlabelled images as scored by a model: the images (N x H x W x C uint8), their names
    (Store.row_names), their stored classes (-1 unknown), out-of-class flags where the split is a class-mismatch
    split (else None), the model's outputs, what was scored and the distance scores' reference (`label_reference`;
    None: no kNN or Mahalanobis score)."""

    images: np.ndarray
    names: list[str]
    labels: np.ndarray
    ood: np.ndarray | None
    outputs: Outputs
    scored_on: str
    bank: Reference | None = None

    def scores(self) -> dict[str, np.ndarray]:
        return outlier_scores(self.outputs, self.bank)


def score_pool(model: Any, store: Store, *, batch: int = 256, autocast_dtype: Any = None,
               bank: Reference | None = None) -> ScoredPool:
    """Score a split's unlabelled pool with `model` (open head and distance scores included). The distance
    scores' reference `bank` is the one a run's model.pt records (`Reference.of_record`); without it (or without
    its classes: an older model.pt), it is computed from the split's labelled images. A pre-augmented pool is
    scored on its unaugmented originals where it kept them, so each image counts once."""
    pool = store.subset("unlabel")
    positions = original_positions(store)
    names = store.row_names("unlabel")
    if positions is None:
        positions = np.arange(pool.count)
        scored = "pool"
        if names is not None and len(names) != pool.count:  # a pre-augmented pool without its originals
            names = None
    else:
        scored = "originals of the pre-augmented pool"
    if names is None:
        names = [f"unlabel/{int(i)}" for i in positions]
    images = np.asarray(pool.images[positions])
    ood = ood_flags(store, "unlabel")
    outputs = predict_outputs(model, images, batch=batch, autocast_dtype=autocast_dtype, open_head=True,
                              features=True)
    if bank is None or bank.labels is None:
        label = store.subset("label")
        bank = label_reference(model, label.images, label.labels, batch=batch, autocast_dtype=autocast_dtype)
    return ScoredPool(images, names, pool.labels[positions], None if ood is None else ood[positions], outputs,
                      scored, bank)


def pool_metrics(model: Any, store: Store, history: list[dict[str, float]], *, batch: int = 256,
                 autocast_dtype: Any = None, scored: ScoredPool | None = None) -> dict[str, Any] | None:
    """The open-set metrics of a trained model on its split's unlabelled pool; None unless the split is a
    class-mismatch split. `scored` reuses a `score_pool` result of the same model and store.

    Returns the AUROC of each score the model offers (auroc_<score> for every score of SCORES it has), the run's
    own (auroc, with `score` naming it), the admitted shares from training, and the pool's size and out-of-class
    count.
    """
    if ood_flags(store, "unlabel") is None:
        return None
    if scored is None:
        scored = score_pool(model, store, batch=batch, autocast_dtype=autocast_dtype)
    ood = scored.ood
    scores = scored.scores()
    out: dict[str, Any] = {f"auroc_{name}": auroc(s, ood) for name, s in scores.items()}
    own = own_score(model)
    out.update({"auroc": out[f"auroc_{own}"], "score": own, "unlabelled_scored": int(len(ood)),
                "unlabelled_ood": int(ood.sum()), "scored_on": scored.scored_on, **admitted_shares(history)})
    return out
