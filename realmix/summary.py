"""The results report: per-run last-N medians aggregated by setting (mean +- std over seeds).

A setting is an algorithm on one dataset configuration (the split name without its seed, e.g. realmix on
`digits_aug10@30-100`). Runs are enumerated from params by the caller, never by globbing, so a run removed
from params is not reported even if its files are still on disk.
"""

from __future__ import annotations

import json
import math
import os
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from . import atomic
from .charts import run_label
from .errors import RealmixError


@dataclass(frozen=True)
class RunRef:
    """One planned run: its algorithm and data, and what the data is (for grouping and charts)."""

    algorithm: str
    data: str  # split name, e.g. digits6_mismatch50_aug10.1@30-100
    setting: str  # the split name without the seed, e.g. digits6_mismatch50_aug10@30-100
    seed: int
    mismatch: int | None = None  # mismatch level (%) of a class-mismatch dataset
    copies: int | None = None  # pre-augmented copies of the unlabelled set
    filtered: str | None = None  # the teacher whose filter kept the unlabelled set (realmix/pool_filter.py)


def _mean_std(values: list[float]) -> tuple[float | None, float | None]:
    if not values:
        return None, None
    mean = sum(values) / len(values)
    if len(values) == 1:
        return mean, None  # one seed has no spread: none is shown rather than a fake 0
    return mean, math.sqrt(sum((v - mean) ** 2 for v in values) / (len(values) - 1))  # sample std over seeds


# open-set figures of class-mismatch runs (realmix/openset.py), aggregated like last20 where the runs have them
OPEN_SET = {"auroc": "AUROC of the run's own out-of-class score (IOMatch: its open head; others: 1 - max softmax) "
                     "on the unlabelled pool; 0.5 = chance, below 0.5 = out-of-class images look more in-class",
            "ood_admitted": "share of out-of-class unlabelled images the method's mask admitted into its "
                            "unlabelled loss (mean over training; MixMatch has no mask: 1)",
            "in_admitted": "share of in-class unlabelled images admitted (the same mask)",
            "auroc_energy": "AUROC of the energy score (-logsumexp of the logits, every model) on the unlabelled pool",
            "auroc_maha": "AUROC of the Mahalanobis score (distance of the normalised pooled features to the "
                          "nearest labelled class mean, shared Ledoit-Wolf covariance, every model) on the "
                          "unlabelled pool",
            "auroc_knn": "AUROC of the kNN score (distance of the normalised pooled features to the nearest "
                         "labelled image's, every model) on the unlabelled pool",
            "flagged_ood": "share of out-of-class unlabelled images the out-of-class report flags at its validation "
                           "cut (report.score, report.keep)",
            "flagged_in": "share of in-class unlabelled images the report flags (about 1 - report.keep expected)",
            "filter_ood_kept": "share of the out-of-class unlabelled images the filter kept (filtered runs: the "
                               "teacher's score at filter.keep; 0 = a perfect filter)",
            "filter_in_dropped": "share of the in-class unlabelled images the filter dropped (filtered runs)"}


def aggregate(runs: Sequence[RunRef], medians: dict[RunRef, dict[str, Any]]) -> list[dict[str, Any]]:
    """One row per (algorithm, setting): mean and sample std over seeds of last20, error_rate = 100 - last20, and of
    the open-set figures (OPEN_SET) where the runs have them."""
    groups: dict[tuple[str, str], list[RunRef]] = {}
    for r in runs:
        groups.setdefault((r.algorithm, r.setting), []).append(r)
    rows = []
    for (algorithm, setting), members in groups.items():
        values = [medians[r]["last20"] for r in members if medians[r].get("last20") is not None]
        mean, std = _mean_std(values)
        rows.append({
            "algorithm": algorithm, "setting": setting, "mismatch": members[0].mismatch,
            "copies": members[0].copies, "filtered": members[0].filtered, "seeds": [r.seed for r in members],
            "runs": len(values),
            "last20": mean, "last20_std": std, "error_rate": None if mean is None else round(100.0 - mean, 6),
            "error_rate_std": std,
            "missing": [r.data for r in members if medians[r].get("last20") is None],
            "evaluations": min(medians[r].get("evaluations", 0) for r in members),
            # what computed the figures: one recipe gives other figures in bf16 and fp32 (realmix/hardware.py)
            "precision": "+".join(sorted({medians[r].get("precision", "n/a") for r in members})),
        })
        for key in ("valid_last20", *OPEN_SET):  # validation: what params are chosen on (never the test images)
            found = [medians[r][key] for r in members if medians[r].get(key) is not None]
            rows[-1][key], rows[-1][f"{key}_std"] = _mean_std(found)
    _paired_gains(runs, medians, rows)
    return rows


# the mismatch studies' reference: every level of a mismatch split has the same labelled images, so the supervised
# run of that level and seed is the model each SSL run must beat
BASELINE = "supervised"


def _paired_gains(runs: Sequence[RunRef], medians: dict[RunRef, dict[str, Any]], rows: list[dict[str, Any]]) -> None:
    """Add `gain` (mean and sample std over seeds of last20 minus the baseline's last20 on the same mismatch level
    and seed), `gain_above` (seeds above the baseline) and `gain_seeds` (seeds paired) to each mismatch row that
    has baseline runs; the seed-to-seed spread of the labelled sets cancels in the pairing."""
    base = {(r.mismatch, r.seed): medians[r].get("last20") for r in runs
            if r.algorithm == BASELINE and r.mismatch is not None and r.copies is None and r.filtered is None}
    for row in rows:
        if row["mismatch"] is None or (row["algorithm"] == BASELINE and not row["copies"] and not row["filtered"]):
            continue
        diffs = []
        for r in runs:
            if (r.algorithm, r.setting) == (row["algorithm"], row["setting"]):
                own, ref = medians[r].get("last20"), base.get((r.mismatch, r.seed))
                if own is not None and ref is not None:
                    diffs.append(own - ref)
        if diffs:
            row["gain"], row["gain_std"] = _mean_std(diffs)
            row["gain_above"], row["gain_seeds"] = sum(d > 0 for d in diffs), len(diffs)


def _fmt(mean: float | None, std: float | None) -> str:
    """`mean ± std`; the mean alone where there is no spread to show (a single seed)."""
    if mean is None:
        return "n/a"
    return f"{mean:.2f}" if std is None else f"{mean:.2f} ± {std:.2f}"


def markdown_table(rows: Sequence[dict[str, Any]]) -> str:
    lines = ["| algorithm | setting | seeds | precision | accuracy % (last20) | error % | note |",
             "|---|---|---|---|---|---|---|"]
    for r in rows:
        note = ""
        if r["missing"]:
            note = (f"{len(r['missing'])} run(s) with fewer than 20 evaluations "
                    f"(at least {r['evaluations']}): raise train_kimg / lower report_kimg")
        lines.append(f"| {r['algorithm']} | {r['setting']} | {r['runs']}/{len(r['seeds'])} | {r['precision']} | "
                     f"{_fmt(r['last20'], r['last20_std'])} | {_fmt(r['error_rate'], r['error_rate_std'])} | {note} |")
    return "\n".join(lines) + "\n"


def _gain_cell(row: dict[str, Any]) -> str:
    """A paired difference: signed mean ± std, and on how many seeds the run beat the baseline."""
    std = "" if row["gain_std"] is None else f" ± {row['gain_std']:.2f}"
    return f"{row['gain']:+.2f}{std} ({row['gain_above']}/{row['gain_seeds']} seeds above)"


def mismatch_table(rows: Sequence[dict[str, Any]], key: str = "last20", scale: float = 1.0) -> str:
    """`key` (default: accuracy) vs class-mismatch level: one row per algorithm (and pre-augmentation), one
    column per level, values x `scale`; empty when no mismatch runs are planned or, for an open-set figure, none
    has it (the accuracy table is kept with n/a cells: runs without 20 evaluations are a note, not a gap)."""
    rows = [r for r in rows if r.get("mismatch") is not None]
    if not rows or (key != "last20" and not any(r.get(key) is not None for r in rows)):
        return ""
    levels = sorted({r["mismatch"] for r in rows})
    cells: dict[str, dict[int, str]] = {}
    for r in rows:
        name = run_label(r)
        value, std = r.get(key), r.get(f"{key}_std")
        if value is None:
            cell = "n/a"
        elif key == "gain":
            cell = _gain_cell(r)
        else:
            cell = _fmt(value * scale, None if std is None else std * scale)
        cells.setdefault(name, {})[r["mismatch"]] = cell
    lines = ["| algorithm | " + " | ".join(f"{level} % mismatch" for level in levels) + " |",
             "|---|" + "---|" * len(levels)]
    lines += [f"| {name} | " + " | ".join(c.get(level, "") for level in levels) + " |" for name, c in cells.items()]
    return "\n".join(lines) + "\n"


def report(rows: Sequence[dict[str, Any]]) -> str:
    """summary.md: the per-setting table, then the accuracy-vs-mismatch table when mismatch runs exist."""
    text = markdown_table(rows)
    pivot = mismatch_table(rows)
    if pivot:
        text += ("\nTest accuracy % (median of the last 20 evaluations, mean ± std over seeds) against the share of "
                 "unlabelled classes that are not labelled classes:\n\n" + pivot)
    pivot = mismatch_table([r for r in rows if "gain" in r], "gain")
    if pivot:
        text += (f"\nPaired with {BASELINE} by seed (same level, same labelled images): accuracy minus {BASELINE}'s, "
                 "mean ± std of the per-seed differences, and on how many seeds the method was above:\n\n" + pivot)
    for key, what in OPEN_SET.items():
        auroc_like = key.startswith("auroc")
        pivot = mismatch_table(rows, key, 1.0 if auroc_like else 100.0)
        if pivot:
            unit = "" if auroc_like else " (%)"
            text += (f"\n{what[0].upper()}{what[1:]}{unit}, mean ± std over seeds (n/a: not defined, e.g. AUROC "
                     "where the pool is all in-class or all out-of-class):\n\n" + pivot)
    return text


def write_summary(runs: Sequence[RunRef], metrics_dir: str | os.PathLike, out_dir: str | os.PathLike
                  ) -> list[dict[str, Any]]:
    """Read metrics_dir/<algorithm>/<data>/accuracy.json of every planned run; write out_dir/summary/ (one
    JSON per setting: the DVC metrics), out_dir/summary.md (the table) and out_dir/summary.png (the chart)."""
    from .charts import summary_chart

    if not runs:
        raise RealmixError("params: no runs are planned (train.algorithms, train.aug_algorithms, ... are all empty)")
    medians = {}
    for r in runs:
        path = Path(metrics_dir) / r.algorithm / r.data / "accuracy.json"
        if not path.is_file():
            raise RealmixError(f"{path}: missing; run `dvc repro` so that every run is evaluated first")
        medians[r] = json.loads(path.read_text())
    rows = aggregate(runs, medians)
    out = Path(out_dir)
    with atomic.atomic_path(out / "summary", directory=True) as tmp:
        for row in rows:
            # "error_rate", never "error": DVC reads a metric named "error" as a failure to load (see evaluate.py)
            keys = ["last20", "last20_std", "error_rate", "error_rate_std", "runs", "precision"]
            keys += [k for key in ("valid_last20", *OPEN_SET) for k in (key, f"{key}_std") if row.get(key) is not None]
            keys += [k for k in ("gain", "gain_std", "gain_above", "gain_seeds") if row.get(k) is not None]
            path = tmp / row["algorithm"] / f"{row['setting']}.json"
            path.parent.mkdir(parents=True, exist_ok=True)
            path.write_text(json.dumps({k: row[k] for k in keys}, indent=4) + "\n")
    atomic.write_text(out / "summary.md", report(rows))
    summary_chart(rows, out / "summary.png")
    return rows
