"""`realmix` command line: one subcommand per pipeline step (for one-off work outside `dvc repro`),
plus `datasets` to list the stores the pipeline has written.

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
    s = sub.add_parser("datasets", help="list the dataset stores under a folder")
    s.add_argument("root", nargs="?", default="data", type=Path)
    return ap


def main(argv: list[str] | None = None) -> None:
    args = build_parser().parse_args(argv)

    def dispatch() -> None:
        if args.command == "datasets":
            return _datasets(args.root)
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

    pipeline.run(dispatch)


if __name__ == "__main__":
    main()
