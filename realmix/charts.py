"""PNG charts (matplotlib, no display needed): they render offline in `dvc plots show` as images.

DVC's own vega plots load their charting library from a CDN and stay blank without internet; PNG plots
declared in dvc.yaml are shown as images by `dvc plots show` / `dvc plots diff` anywhere.
"""

from __future__ import annotations

import io
import os
from collections.abc import Sequence
from typing import Any

from . import atomic

CURVES = (("test/accuracy", "test (EMA)"), ("valid/accuracy", "validation (EMA)"),
          ("label/accuracy", "labelled (EMA)"), ("raw/test/accuracy", "test (raw weights)"))


def _figure(width: float = 7.0, height: float = 4.0, rows: int = 1):
    import matplotlib

    matplotlib.use("Agg")  # no display; must precede pyplot
    from matplotlib import pyplot as plt

    fig, axes = plt.subplots(rows, 1, figsize=(width, height), dpi=100, squeeze=False)
    return plt, fig, list(axes[:, 0]) if rows > 1 else axes[0, 0]


def _save(plt: Any, fig: Any, path: str | os.PathLike) -> None:
    buf = io.BytesIO()
    fig.tight_layout()
    fig.savefig(buf, format="png")
    plt.close(fig)
    atomic.write_bytes(path, buf.getvalue())


def training_curves(history: Sequence[dict[str, float]], path: str | os.PathLike, *, title: str) -> None:
    """Accuracy (%) against training kimg for every evaluation of a run."""
    plt, fig, ax = _figure()
    for key, label in CURVES:
        points = [(r["step"] / 1024, r[key]) for r in history if key in r]
        if points:
            xs, ys = zip(*points, strict=True)
            ax.plot(xs, ys, marker="o" if len(points) < 30 else None, markersize=3, label=label,
                    linestyle="--" if key.startswith("raw") else "-")
    ax.set_xlabel("training kimg (1 kimg = 1024 labelled images)")
    ax.set_ylabel("accuracy (%)")
    ax.set_ylim(0, 102)  # 100 % stays visible
    ax.set_title(title)
    ax.grid(alpha=0.3)
    if history:
        ax.legend(loc="lower right")
    _save(plt, fig, path)


# the accuracy-vs-mismatch panel, then the open-set panels where the runs have their figures:
# (row key, scale, y label, title)
MISMATCH_PANELS = (
    ("last20", 1.0, "test accuracy (%), median of last 20", "accuracy vs class mismatch (mean ± std over seeds)"),
    ("gain", 1.0, "accuracy minus supervised (points)",
     "paired with supervised by seed (mean ± std of the differences)"),
    ("auroc_maha", 1.0, "AUROC (out-of-class unlabelled)", "the Mahalanobis score (maha) on the unlabelled pool"),
    ("auroc", 1.0, "AUROC (out-of-class unlabelled)", "the method's own out-of-class score on its unlabelled pool"),
    ("ood_admitted", 100.0, "out-of-class images admitted (%)",
     "share of out-of-class unlabelled images in the unlabelled loss"),
)


def run_label(row: dict[str, Any]) -> str:
    """How tables and charts name a row's runs: the algorithm, the filter's teacher, the pre-augmented copies."""
    return (row["algorithm"] + (f" filtered by {row['filtered']}" if row.get("filtered") else "")
            + (f" (aug{row['copies']})" if row.get("copies") else ""))


def summary_chart(rows: Sequence[dict[str, Any]], path: str | os.PathLike) -> None:
    """Median-of-last-20 test accuracy, mean +- std over seeds: bars per setting and algorithm; plus, when the
    runs include class-mismatch datasets, against the mismatch level per algorithm: the accuracy, the gain paired
    with supervised, the AUROC of maha and of the method's own score, and the admitted out-of-class share, each
    where the runs have it."""
    mismatch = [r for r in rows if r.get("mismatch") is not None and r["last20"] is not None]
    plain = [r for r in rows if r.get("mismatch") is None]
    panels_m = [p for p in MISMATCH_PANELS if any(r.get(p[0]) is not None for r in mismatch)]
    panels = int(bool(plain)) + len(panels_m) or 1
    plt, fig, axes = _figure(7.0, 4.0 * panels, panels)
    axes = axes if panels > 1 else [axes]
    if plain or not mismatch:
        ax = axes.pop(0)
        labels = [f"{r['algorithm']}\n{r['setting']}" for r in plain]
        means = [r["last20"] if r["last20"] is not None else 0.0 for r in plain]
        errs = [r["last20_std"] or 0.0 for r in plain]
        bars = ax.bar(range(len(plain)), means, yerr=errs, capsize=4,
                      color=[f"C{sorted({r['algorithm'] for r in plain}).index(r['algorithm'])}" for r in plain])
        for bar, r in zip(bars, plain, strict=True):
            text = "n/a" if r["last20"] is None else f"{r['last20']:.1f}"
            ax.annotate(text, (bar.get_x() + bar.get_width() / 2, 0), ha="center", va="bottom",  # clear of the
                        xytext=(0, 4), textcoords="offset points", fontsize=9, color="white")  # error bar
        ax.set_xticks(range(len(plain)), labels, fontsize=7)
        ax.set_ylabel("test accuracy (%), median of last 20")
        ax.set_ylim(0, 105)
        ax.set_title("accuracy by setting (mean ± std over seeds)")
        ax.grid(axis="y", alpha=0.3)
    algorithms = sorted({r["algorithm"] for r in mismatch})
    labels_m = sorted({run_label(r) for r in mismatch})
    for key, scale, ylabel, title in panels_m:
        ax = axes.pop(0)
        for label in labels_m:
            members = [r for r in mismatch if run_label(r) == label and r.get(key) is not None]
            pts = sorted((r["mismatch"], r[key] * scale, (r.get(f"{key}_std") or 0.0) * scale) for r in members)
            if not pts:
                continue
            xs, ys, es = zip(*pts, strict=True)
            first = members[0]
            ax.errorbar(xs, ys, yerr=es, marker="o", capsize=3, color=f"C{algorithms.index(first['algorithm'])}",
                        linestyle="--" if first["copies"] else "-", label=label,
                        markerfacecolor="white" if first.get("filtered") else None)
        if key.startswith("auroc"):
            ax.axhline(0.5, color="grey", linewidth=0.8, linestyle=":")  # chance
        if key == "gain":
            ax.axhline(0.0, color="grey", linewidth=0.8, linestyle=":")  # level with supervised
        ax.set_xlabel("class mismatch of the unlabelled data (%)")
        ax.set_ylabel(ylabel)
        ax.set_title(title)
        ax.grid(alpha=0.3)
        ax.legend(fontsize=8)
    _save(plt, fig, path)
