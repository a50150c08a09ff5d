"""`realmix` command line: one subcommand per pipeline step (for one-off work outside `dvc repro`),
plus `datasets` and `runs` to list the stores and trained runs the pipeline has written.

The step subcommands read the same params.yaml as the DVC stages and write to the same paths, so
`realmix split --seed 3 --size 250` does what the stage `split@3-250` would do.
"""

from __future__ import annotations

import argparse
from pathlib import Path

from . import params, pipeline
from .errors import RealmixError
from .store import MANIFEST, Store


def _datasets(root: Path) -> None:
    if not root.exists():
        raise RealmixError(f"{root}: not found; run `dvc repro` (or `make repro`) first")
    stores = sorted(p.parent for p in root.rglob(MANIFEST) if not p.parent.name.startswith("."))
    if not stores:
        print(f"{root}: no dataset stores yet")
    for path in stores:
        print(Store.open(path).summary())


def _runs(root: Path) -> None:
    """One row per trained run (its latest evaluation), read from runs/<algorithm>/<split>/live/metrics.json."""
    import json

    if not root.exists():
        raise RealmixError(f"{root}: not found; run `dvc repro` (or `make repro`) first")
    rows = []
    for path in sorted(root.glob("*/*/live/metrics.json")):
        m = json.loads(path.read_text())
        run = path.parent.parent.relative_to(root)
        rows.append((str(run), str(m.get("step", "")),
                     *(f"{m.get(s, {}).get('accuracy', float('nan')):.1f}" for s in ("label", "valid", "test")),
                     f"{m.get('raw', {}).get('test', {}).get('accuracy', float('nan')):.1f}"))
    if not rows:
        print(f"{root}: no trained runs yet")
        return
    head = ("run", "images", "label %", "valid %", "test % (EMA)", "test % (raw)")
    widths = [max(len(r[i]) for r in [head, *rows]) for i in range(len(head))]
    for r in [head, *rows]:
        print("  ".join(c.ljust(w) if i == 0 else c.rjust(w) for i, (c, w) in enumerate(zip(r, widths, strict=True))))


def build_parser() -> argparse.ArgumentParser:
    ap = argparse.ArgumentParser(prog="realmix", description=__doc__.split("\n\n")[0])
    ap.add_argument("--params", default="params.yaml", help="params file (default: params.yaml)")
    sub = ap.add_subparsers(dest="command", required=True, metavar="COMMAND")
    sub.add_parser("download", help="read dataset.source into data/datasets/<dataset.name>/")
    sub.add_parser("rename", help="number rename.src as {n}_{class}.{ext} into data/renamed/ (a copy)")
    s = sub.add_parser("split", help="write the split <name>.<seed>@<size>-<nvalid>")
    s.add_argument("--seed", type=int, required=True)
    s.add_argument("--size", type=int, required=True)
    s = sub.add_parser("mismatch", help="write the class-mismatch dataset of one level")
    s.add_argument("--seed", type=int, required=True)
    s.add_argument("--level", type=int, required=True)
    s = sub.add_parser("preaugment", help="write COPIES augmented copies of a split's unlabelled images")
    s.add_argument("--input", required=True, help="split name, e.g. digits.1@30-100")
    s.add_argument("--copies", type=int, required=True)
    s = sub.add_parser("train", help="train one run: runs/<algorithm>/<data>/ (resumes from its checkpoints)")
    s.add_argument("--algorithm", required=True, help="supervised | mixmatch | realmix")
    s.add_argument("--data", required=True, help="split name under data/splits/, e.g. digits_aug10.1@30-100")
    s = sub.add_parser("datasets", help="list the dataset stores under a folder")
    s.add_argument("root", nargs="?", default="data", type=Path)
    s = sub.add_parser("runs", help="list trained runs with their latest accuracies")
    s.add_argument("root", nargs="?", default="runs", type=Path)
    return ap


def main(argv: list[str] | None = None) -> None:
    args = build_parser().parse_args(argv)

    def dispatch() -> None:
        if args.command == "datasets":
            return _datasets(args.root)
        if args.command == "runs":
            return _runs(args.root)
        p = params.load(args.params)
        if args.command == "download":
            print(pipeline.download(p).summary())
        elif args.command == "rename":
            print(f"{pipeline.RENAMED}: {pipeline.rename(p)} images renamed")
        elif args.command == "split":
            print(pipeline.split(p, args.seed, args.size).summary())
        elif args.command == "mismatch":
            print(pipeline.mismatch(p, args.seed, args.level).summary())
        elif args.command == "preaugment":
            print(pipeline.preaugment(p, args.input, args.copies).summary())
        elif args.command == "train":
            res = pipeline.train(p, args.algorithm, args.data)
            shown = ("test/accuracy", "valid/accuracy", "label/accuracy", "raw/test/accuracy")
            print(f"{pipeline.run_dir(args.algorithm, args.data)}: "
                  + ", ".join(f"{k} {res[k]:.2f}%" for k in shown if k in res))

    pipeline.run(dispatch)


if __name__ == "__main__":
    main()
