"""AUROC of each out-of-class score (msp, energy, kNN, IOMatch's open head) over the trained class-mismatch runs of a
project, paired by run: which score finds the out-of-class unlabelled images best.

    .venv/bin/python benchmarks/outlier_scores.py            # in a project where the mismatch study has run
    .venv/bin/python benchmarks/outlier_scores.py --root /path/to/project --levels 25 50 75

Reads every runs/<algorithm>/<mismatch split>/model.pt at the given levels (AUROC is undefined at 0 and 100 %),
scores its split's unlabelled pool as `evaluate` does (the run's precision, originals of a pre-augmented pool) and
prints, per algorithm and level, the mean +- sample std over seeds of each score's AUROC (realmix.openset.SCORES)
and of the paired differences maha - msp and maha - knn (with how many runs had maha higher).
"""

from __future__ import annotations

import argparse
import re
import sys
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))  # run from a checkout without installing

from realmix.inference import load_model  # noqa: E402
from realmix.openset import SCORES, auroc, score_pool  # noqa: E402
from realmix.store import Store  # noqa: E402

LEVEL = re.compile(r"_mismatch(\d+)(_aug\d+)?\.")


def mean_std(values: list[float]) -> str:
    a = np.array(values, np.float64)
    return f"{a.mean():.3f} +- {a.std(ddof=1):.3f}" if len(a) > 1 else f"{a.mean():.3f}"


def main(argv: list[str] | None = None) -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--root", type=Path, default=Path("."), help="project root (default: here)")
    ap.add_argument("--levels", type=int, nargs="+", default=[25, 50, 75])
    args = ap.parse_args(argv)
    results: dict[tuple[str, int], list[dict[str, float | None]]] = {}
    for path in sorted(args.root.glob("runs/*/*_mismatch*/model.pt")):
        algorithm, split = path.parts[-3], path.parts[-2]
        m = LEVEL.search(split)
        if m is None or int(m[1]) not in args.levels:
            continue
        model, record = load_model(path, "ema")
        pool = score_pool(model, Store.open(args.root / "data" / "splits" / split), batch=500,
                          autocast_dtype=record.autocast_dtype)
        key = (algorithm + ("(aug)" if m[2] else ""), int(m[1]))
        results.setdefault(key, []).append({k: auroc(s, pool.ood) for k, s in pool.scores().items()})
    if not results:
        raise SystemExit(f"{args.root}: no trained mismatch runs at levels {args.levels}")
    pairs = [("maha", "msp"), ("maha", "knn")]  # paired by run: report.score auto (maha) against the others
    print(f"{'algorithm':16s} level runs  " + "".join(f"{'AUROC ' + s:18s}" for s in SCORES)
          + "".join(f"{f'{a} - {b} (higher)':28s}" for a, b in pairs))
    for (algorithm, level), rows in sorted(results.items()):
        cells = [[r[s] for r in rows if s in r] for s in SCORES]
        diffs = [[r[a] - r[b] for r in rows if a in r and b in r] for a, b in pairs]
        print(f"{algorithm:16s} {level:5d} {len(rows):4d}  "
              + "".join(f"{mean_std(c) if c else 'n/a':18s}" for c in cells)
              + "".join(f"{f'{mean_std(d)} ({sum(x > 0 for x in d)}/{len(d)})' if d else 'n/a':28s}" for d in diffs))


if __name__ == "__main__":
    main()
