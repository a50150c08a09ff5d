"""Evaluation of a finished run: the EMA model on the test images, and the medians of its evaluation history.

    evaluate_run(run_dir, store, metrics_path)   # run_dir/model.pt -> run_dir/eval/*, metrics_path (accuracy.json)

The medians are the original `extract_accuracy.py`: the median of the last 1/10/20/50 evaluated test accuracies
(the paper reports error = 100 - last20, "the median of the last 20 checkpoints").
"""

from __future__ import annotations

import csv
import io
import json
import os
import shutil
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np

from . import atomic
from .checkpoint import ModelRecord
from .errors import RealmixError
from .metrics import classification_metrics, confusion_matrix
from .openset import SCORES, Reference, pool_metrics, score_pool
from .params import ReportParams
from .store import Store

LAST = (1, 10, 20, 50)
# open-set figures copied into accuracy.json (the DVC metrics) of class-mismatch runs
OPEN_SET_METRICS = ("auroc", *(f"auroc_{s}" for s in SCORES), "ood_admitted", "in_admitted")
# the out-of-class report's flag on a class-mismatch split: the share of out-of-class / in-class images flagged
REPORT_METRICS = ("flagged_ood", "flagged_in")
FILTER_METRICS = ("dropped", "ood_kept", "in_dropped")  # a filtered run's accuracy.json: filter_<key>


def median_accuracies(accuracies: Sequence[float]) -> dict[str, Any]:
    """{"last01": .., "last10": .., "last20": .., "last50": .., "evaluations": n, "error_rate": 100 - last20}.

    A median over fewer evaluations than asked for is not made up: it is null, and `evaluations` says how many
    there were.
    """
    acc = [float(a) for a in accuracies]
    out: dict[str, Any] = {"evaluations": len(acc)}
    for n in LAST:
        out[f"last{n:02d}"] = float(np.median(acc[-n:])) if len(acc) >= n else None
    # not "error": `dvc metrics show` takes any non-empty key named "error" in a metrics file for a load failure
    # and warns "DVC failed to load some metrics" (dvc.utils.errored_revisions)
    out["error_rate"] = None if out["last20"] is None else round(100.0 - out["last20"], 6)  # no 9.0999999...
    return out


def accuracy_history(history: list[dict[str, float]], key: str = "test/accuracy") -> list[float]:
    """The EMA test (or `key`: e.g. validation) accuracy of every evaluation of a run, in order."""
    return [r[key] for r in history if key in r]


def predictions_csv(labels: np.ndarray, probs: np.ndarray, class_names: list[str]) -> str:
    """index, true class (empty if unknown), predicted class, confidence."""
    buf = io.StringIO()
    w = csv.writer(buf, lineterminator="\n")
    w.writerow(["index", "true", "predicted", "confidence"])
    pred = probs.argmax(1)
    for i, (y, p) in enumerate(zip(labels, pred, strict=True)):
        w.writerow([i, class_names[y] if y >= 0 else "", class_names[p], f"{probs[i, p]:.6f}"])
    return buf.getvalue()


def produced_by(record: ModelRecord) -> dict[str, Any]:
    """What computed a run's figures (model.pt): the precision it trained and evaluated in ("bf16" / "fp32"),
    the hardware ("cpu AVX2", "cpu AVX512", "cuda <GPU>") and its torch threads. Figures of one recipe differ
    between precisions (and may between CPU kinds), so every figure file carries them."""
    out = {"precision": record.precision, "hardware": record.hardware or "not recorded (an older model.pt)"}
    return out | ({"threads": record.threads} if record.threads is not None else {})


def evaluate_run(run_dir: str | os.PathLike, store: Store, metrics_path: str | os.PathLike, *, batch: int = 256,
                 device: str = "auto", report: ReportParams | None = None) -> dict[str, Any]:
    """Evaluate run_dir/model.pt (EMA weights, in the run's precision) on the store's test images.

    Writes run_dir/eval/: evaluation.json (accuracy, precision/recall/F1 macro and weighted, per-class accuracy,
    confusion matrix, the out-of-class report's summary), predictions.npy (N x K probabilities), predictions.csv,
    accuracy.png (the run's curves), the out-of-class report of the unlabelled images (realmix/report.py:
    unlabelled.csv, grids/*.png); and metrics_path: the last-N medians of the run's evaluation history. On a
    class-mismatch split both also get the open-set metrics of the unlabelled pool (realmix/openset.py: AUROC of
    each out-of-class score, the share of out-of-class / in-class images the method's mask admitted and the
    report flagged). A run on a filtered split also gets what the filter dropped (evaluation.json `filter`,
    grids/dropped.png; accuracy.json filter_dropped/ood_kept/in_dropped). Returns the evaluation dict.
    """
    from .charts import training_curves
    from .hardware import pick_device
    from .inference import load_model, predict_outputs, predict_proba
    from .pool_filter import filter_of
    from .report import write_report

    report = report or ReportParams()

    run_dir = Path(run_dir)
    model_path = run_dir / "model.pt"
    model, record = load_model(model_path, "ema", pick_device(device))
    if record.class_names != store.class_names:
        raise RealmixError(
            f"{model_path}: trained on classes {record.class_names} but {store.path} has {store.class_names}; "
            "evaluate a run on the split it was trained on (retrain it with `dvc repro`)")
    if not store.has("test") or store.subset("test").count == 0:
        raise RealmixError(f"{store.path}: no test images to evaluate on")
    test = store.subset("test")
    labels = test.labels
    # the precision the run was trained and evaluated in, so this agrees with the training loop's last figure
    amp = record.autocast_dtype
    produced = produced_by(record)
    probs = predict_proba(model, test.images, batch=batch, autocast_dtype=amp)
    known = labels >= 0
    if not known.any():
        raise RealmixError(f"{store.path}: the test images have no known classes; nothing to score")
    k = len(store.class_names)
    result: dict[str, Any] = {
        "run": str(run_dir), "data": store.name, "algorithm": record.algorithm, "images": int(known.sum()),
        "trained_images": record.images, "weights": "ema", **produced,
        **classification_metrics(probs[known], labels[known], store.class_names),
        "confusion_matrix": {"classes": store.class_names,
                             "counts": confusion_matrix(labels[known], probs[known].argmax(1), k).tolist()},
    }
    history = record.history
    medians = {"run": str(run_dir), **produced, **median_accuracies(accuracy_history(history))}
    # the figure to choose params on (e.g. a `dvc exp run` grid of w_match): the test images play no part in it
    medians["valid_last20"] = median_accuracies(accuracy_history(history, "valid/accuracy"))["last20"]
    bank = Reference.of_record(record)  # the one predict reads
    pool = score_pool(model, store, batch=batch, autocast_dtype=amp, bank=bank)
    open_set = pool_metrics(model, store, history, scored=pool)
    if open_set is not None:
        result["open_set"] = open_set
        medians.update({k: v for k, v in open_set.items() if k in OPEN_SET_METRICS})
    valid = None
    if store.has("valid") and store.subset("valid").count:
        valid = predict_outputs(model, store.subset("valid").images, batch=batch, autocast_dtype=amp, open_head=True,
                                features=True)
    test_names = store.row_names("test") or [f"test/{i}" for i in range(test.count)]

    out = run_dir / "eval"
    with atomic.atomic_path(out, directory=True) as tmp:
        np.save(tmp / "predictions.npy", probs.astype(np.float32))
        (tmp / "predictions.csv").write_text(predictions_csv(labels, probs, store.class_names))
        training_curves(history, tmp / "accuracy.png", title=f"{record.algorithm} on {store.name}")
        result["out_of_class"] = write_report(model, pool, valid, test.images, labels, probs, test_names,
                                              store.class_names, tmp, report)
        filtered = filter_of(store)
        if filtered is not None:  # what the filter dropped before this run saw the pool
            result["filter"], grid = filtered
            shutil.copyfile(grid, tmp / "grids" / "dropped.png")
            medians.update({f"filter_{k}": result["filter"].get(k) for k in FILTER_METRICS})
        (tmp / "evaluation.json").write_text(json.dumps(result, indent=2) + "\n")
    if open_set is not None:
        medians.update({k: result["out_of_class"].get(k) for k in REPORT_METRICS})
    atomic.write_text(metrics_path, json.dumps(medians, indent=4, sort_keys=True) + "\n")
    return result
