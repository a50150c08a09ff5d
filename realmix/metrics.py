"""Classification metrics from predicted probabilities (numpy only, no sklearn import on the hot path).

Accuracy is in percent, as the original's logs (so error = 100 - accuracy); precision, recall and F1 are
fractions in [0, 1], macro- and support-weighted averaged over the classes present in the labels.
"""

from __future__ import annotations

import numpy as np


def confusion_matrix(labels: np.ndarray, pred: np.ndarray, num_classes: int) -> np.ndarray:
    """K x K counts: rows = true class, columns = predicted class."""
    return np.bincount(labels * num_classes + pred, minlength=num_classes * num_classes).reshape(
        num_classes, num_classes)


def classification_metrics(probs: np.ndarray, labels: np.ndarray, class_names: list[str]) -> dict[str, float]:
    """accuracy, loss (mean NLL), precision/recall/f1 macro and weighted, and `class/<name>` accuracy (percent).

    Classes absent from `labels` are left out of the averages and of the per-class entries (no NaN).
    """
    k = len(class_names)
    labels = np.asarray(labels, np.int64)
    if len(labels) == 0:
        return {}
    pred = probs.argmax(1)
    cm = confusion_matrix(labels, pred, k).astype(np.float64)
    support = cm.sum(1)
    predicted = cm.sum(0)
    tp = np.diag(cm)
    present = support > 0
    precision = np.divide(tp, predicted, out=np.zeros(k), where=predicted > 0)
    recall = np.divide(tp, support, out=np.zeros(k), where=present)
    denom = precision + recall
    f1 = np.divide(2 * precision * recall, denom, out=np.zeros(k), where=denom > 0)
    w = support[present] / support.sum()
    nll = -np.log(np.clip(probs[np.arange(len(labels)), labels], 1e-12, None)).mean()
    out = {
        "accuracy": float(100.0 * tp.sum() / len(labels)),
        "loss": float(nll),
        "precision_macro": float(precision[present].mean()),
        "recall_macro": float(recall[present].mean()),
        "f1_macro": float(f1[present].mean()),
        "precision_weighted": float((precision[present] * w).sum()),
        "recall_weighted": float((recall[present] * w).sum()),
        "f1_weighted": float((f1[present] * w).sum()),
    }
    for i in np.flatnonzero(present):
        out[f"class/{class_names[i]}"] = float(100.0 * recall[i])
    return out
