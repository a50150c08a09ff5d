"""Test accuracy of each run's final EMA weights under every BN-statistics rule of `train.ema_bn` (recompute, copy,
validated), side by side on the same weights: which rule serves every algorithm.

    .venv/bin/python benchmarks/ema_bn_rules.py                       # in a project whose runs have finished
    .venv/bin/python benchmarks/ema_bn_rules.py --root /path/to/project --runs 'runs/*/*_mismatch*'

For every runs/<algorithm>/<split>/model.pt it rebuilds the EMA model two ways (its weights with statistics
re-estimated on the split's clean labelled images = recompute; with the raw model's running statistics = copy),
lets `realmix.ema.pick_bn_stats` choose between them on the split's validation images (= validated, as training
does at every evaluation) and prints per algorithm and level: mean +- sample std over seeds of the validation and
test accuracy of each rule, and how often validated chose recompute. The test images play no part in the choice.
"""

from __future__ import annotations

import argparse
import copy
import re
import sys
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))  # run from a checkout without installing

from realmix.ema import pick_bn_stats, with_own_bn_stats  # noqa: E402
from realmix.inference import load_model, predict_proba  # noqa: E402
from realmix.store import Store  # noqa: E402

LEVEL = re.compile(r"_mismatch(\d+)")
RULES = ("recompute", "copy", "validated")


def mean_std(values: list[float]) -> str:
    a = np.array(values, np.float64)
    return f"{a.mean():6.2f} +- {a.std(ddof=1):5.2f}" if len(a) > 1 else f"{a.mean():6.2f}        "


def accuracy(probs: np.ndarray, labels: np.ndarray) -> float:
    known = labels >= 0
    return float((probs[known].argmax(1) == labels[known]).mean() * 100)


def rules_of(path: Path, store: Store, batch: int) -> dict[str, float]:
    """Validation and test accuracy of the run's final EMA weights under each rule, and validated's choice."""
    ema, record = load_model(path, "ema")
    raw_buffers = {k: v for k, v in record.raw_model.items() if k in dict(ema.named_buffers())}
    copied = copy.deepcopy(ema)
    copied.load_state_dict({**ema.state_dict(), **raw_buffers})
    amp = record.autocast_dtype
    models = {"recompute": with_own_bn_stats(ema, store.subset("label").images, batch=batch,
                                             device=next(ema.parameters()).device, autocast_dtype=amp),
              "copy": copied.eval()}
    valid, test = store.subset("valid"), store.subset("test")
    pv = {k: predict_proba(m, valid.images, batch=batch, autocast_dtype=amp) for k, m in models.items()}
    known = valid.labels >= 0
    chosen = pick_bn_stats({k: p[known] for k, p in pv.items()}, valid.labels[known])
    out: dict[str, float] = {"chose_recompute": float(chosen == "recompute")}
    for rule in RULES:
        key = chosen if rule == "validated" else rule
        out[f"valid/{rule}"] = accuracy(pv[key], valid.labels)
        out[f"test/{rule}"] = accuracy(predict_proba(models[key], test.images, batch=batch, autocast_dtype=amp),
                                       test.labels)
    return out


def main(argv: list[str] | None = None) -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--root", type=Path, default=Path("."), help="project root (default: here)")
    ap.add_argument("--runs", default="runs/*/*", help="glob of run folders under the root (default: every run)")
    ap.add_argument("--batch", type=int, default=500)
    args = ap.parse_args(argv)
    results: dict[tuple[str, str], list[dict[str, float]]] = {}
    for path in sorted(args.root.glob(f"{args.runs}/model.pt")):
        algorithm, split = path.parts[-3], path.parts[-2]
        m = LEVEL.search(split)
        level = f"{m[1]}%" if m else split.split(".")[0]
        store = Store.open(args.root / "data" / "splits" / split)
        name = algorithm + (" (filtered)" if "_filtered_" in split else "") + (" (aug)" if "_aug" in split else "")
        results.setdefault((name, level), []).append(rules_of(path, store, args.batch))
    if not results:
        raise SystemExit(f"{args.root}: no finished runs match {args.runs}/model.pt")
    print(f"{'algorithm':22s} {'level':>10s} runs  " + "".join(f"{'test ' + r:17s}" for r in RULES)
          + "".join(f"{'valid ' + r:17s}" for r in RULES) + "chose recompute")
    for (algorithm, level), rows in sorted(results.items()):
        print(f"{algorithm:22s} {level:>10s} {len(rows):4d}  "
              + "".join(f"{mean_std([r[f'test/{k}'] for r in rows]):17s}" for k in RULES)
              + "".join(f"{mean_std([r[f'valid/{k}'] for r in rows]):17s}" for k in RULES)
              + f"{int(sum(r['chose_recompute'] for r in rows))}/{len(rows)}")
    for algorithm in sorted({a for a, _ in results}):
        rows = [r for (a, _), rs in results.items() if a == algorithm for r in rs]
        gaps = {k: [r[f"test/{k}"] - r["test/validated"] for r in rows] for k in ("recompute", "copy")}
        behind = sum(max(a, b) > 1 for a, b in zip(gaps["recompute"], gaps["copy"], strict=True))
        print(f"{algorithm}: validated minus recompute {-np.mean(gaps['recompute']):+.2f}, minus copy "
              f"{-np.mean(gaps['copy']):+.2f} test points over {len(rows)} runs; validated below the better of the "
              f"two by > 1 point on {behind} runs")


if __name__ == "__main__":
    main()
