"""`realmix` command line: one subcommand per pipeline step (for one-off work outside `dvc repro`),
`predict` for a trained run on a folder of images, and `datasets` / `runs` / `results` to list what the
pipeline has written.

The step subcommands read the same params.yaml as the DVC stages and write to the same paths, so
`realmix split --seed 3 --size 250` does what the stage `split@3-250` would do.
"""

from __future__ import annotations

import argparse
from pathlib import Path

from . import params, pipeline
from .algorithms import ALGORITHMS
from .errors import RealmixError
from .openset import SCORES
from .store import MANIFEST, Store


def _datasets(root: Path) -> None:
    if not root.exists():
        raise RealmixError(f"{root}: not found; run `dvc repro` (or `make repro`) first")
    stores = sorted(p.parent for p in root.rglob(MANIFEST) if not p.parent.name.startswith("."))
    if not stores:
        print(f"{root}: no dataset stores yet")
    for path in stores:
        print(Store.open(path).summary())


def _run_precision(model_path: Path) -> str:
    """bf16 or fp32: what a finished run trained in (its model.pt)."""
    from .checkpoint import ModelRecord

    return ModelRecord.load(model_path).precision


def _runs(root: Path) -> None:
    """One row per trained run: its final evaluation (runs/<algorithm>/<split>/live/metrics.json: the final EMA
    model, the figure `evaluate` and `realmix predict` give) and, once evaluated, the median of its last 20
    evaluations (metrics/runs/.../accuracy.json: the paper's figure, which the summary aggregates)."""
    import json

    if not root.exists():
        raise RealmixError(f"{root}: not found; run `dvc repro` (or `make repro`) first")
    rows = []
    for path in sorted(root.glob("*/*/live/metrics.json")):
        m = json.loads(path.read_text())
        run = path.parent.parent.relative_to(root)
        medians = pipeline.RUN_METRICS / run / "accuracy.json"
        last20, precision = "not evaluated", "?"
        if medians.is_file():
            acc = json.loads(medians.read_text())
            precision = acc.get("precision", "?")
            last20 = (f"{acc['last20']:.2f}" if acc.get("last20") is not None
                      else f"n/a ({acc.get('evaluations', 0)} evals)")
        if precision == "?" and (path.parent.parent / "model.pt").is_file():  # not evaluated yet, or long ago
            precision = _run_precision(path.parent.parent / "model.pt")
        rows.append((str(run), precision, str(m.get("step", "")),
                     *(f"{m.get(s, {}).get('accuracy', float('nan')):.2f}" for s in ("label", "valid", "test")),
                     last20, f"{m.get('raw', {}).get('test', {}).get('accuracy', float('nan')):.2f}"))
    if not rows:
        print(f"{root}: no trained runs yet")
        return
    head = ("run", "precision", "images", "label %", "valid %", "test % (final)", "test % (last-20 median)",
            "test % (raw, final)")
    widths = [max(len(r[i]) for r in [head, *rows]) for i in range(len(head))]
    for r in [head, *rows]:
        print("  ".join(c.ljust(w) if i == 0 else c.rjust(w) for i, (c, w) in enumerate(zip(r, widths, strict=True))))


def _size(text: str) -> int | str:
    if text == "all":
        return text
    try:
        return int(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"{text!r} is not a label count or `all`") from None


def build_parser() -> argparse.ArgumentParser:
    ap = argparse.ArgumentParser(prog="realmix", description=__doc__.split("\n\n")[0])
    ap.add_argument("--params", default="params.yaml", help="params file (default: params.yaml)")
    sub = ap.add_subparsers(dest="command", required=True, metavar="COMMAND")
    sub.add_parser("download", help="read dataset.source into data/datasets/<dataset.name>/")
    sub.add_parser("rename", help="number rename.src as {n}_{class}.{ext} into data/renamed/ (a copy)")
    s = sub.add_parser("split", help="write the split <name>.<seed>@<size>-<nvalid>")
    s.add_argument("--seed", type=int, required=True)
    s.add_argument("--size", type=_size, required=True, help="labelled images, or `all` (every labelled training "
                   "image but the validation ones)")
    s = sub.add_parser("mismatch", help="write the class-mismatch dataset of one level")
    s.add_argument("--seed", type=int, required=True)
    s.add_argument("--level", type=int, required=True)
    s = sub.add_parser("preaugment", help="write COPIES augmented copies of a split's unlabelled images")
    s.add_argument("--input", required=True, help="split name, e.g. digits.1@30-100")
    s.add_argument("--copies", type=int, required=True)
    s = sub.add_parser("filter", help="keep the unlabelled images a teacher run scores as in-class: "
                                      "data/splits/<prefix>_filtered_<teacher>.<seed>@<size>-<nvalid>/")
    s.add_argument("--input", required=True, help="split name, e.g. digits6_mismatch50.1@30-100")
    s.add_argument("--teacher", required=True, help="the algorithm whose run on that split scores its pool")
    s = sub.add_parser("train", help="train one run: runs/<algorithm>/<data>/ (resumes from its checkpoints)")
    s.add_argument("--algorithm", required=True, help=" | ".join(ALGORITHMS))
    s.add_argument("--data", required=True, help="split name under data/splits/, e.g. digits_aug10.1@30-100")
    s = sub.add_parser("evaluate", help="evaluate a trained run on its test images: runs/<algorithm>/<data>/eval/")
    s.add_argument("--algorithm", required=True, help=" | ".join(ALGORITHMS))
    s.add_argument("--data", required=True, help="split name, e.g. digits_aug10.1@30-100")
    sub.add_parser("summary", help="aggregate every planned run (mean ± std over seeds) into metrics/")
    s = sub.add_parser("results", help="print the results table (metrics/summary.md) written by `summary`")
    s.add_argument("path", nargs="?", default=pipeline.METRICS / "summary.md", type=Path)
    s = sub.add_parser("predict", help="predict a folder of PNG/JPEG images with a trained run's model.pt",
                       description="Predict every PNG/JPEG under IMAGES (any size and mode) with a trained run. "
                       "Writes OUT/predictions.npy (probabilities) and OUT/predictions.csv (path, predicted, "
                       f"confidence, true, the out-of-class scores {' / '.join(SCORES)}, out_of_class); images in "
                       "class subfolders or named {n}_{class} are also scored. The out_of_class flag uses the cut "
                       "the run's evaluate chose on its validation images (its eval/evaluation.json).")
    s.add_argument("--model", required=True, type=Path, help="a run's model.pt, e.g. runs/realmix/<split>/model.pt")
    s.add_argument("--images", required=True, type=Path, help="folder of images (class subfolders optional)")
    s.add_argument("--out", required=True, type=Path, help="output folder (not inside --images)")
    s.add_argument("--weights", choices=("ema", "raw"), default="ema", help="EMA (default, as evaluated) or raw")
    s.add_argument("--batch", type=int, default=256)
    s.add_argument("--device", choices=("auto", "cpu", "cuda"), default="auto")
    s.add_argument("--on-error", choices=("fail", "skip"), default="fail",
                   help="unreadable or non-image files: stop (default) or skip them and list them in skipped.csv")
    s.add_argument("--resize", choices=("pad", "stretch", "crop"), default="pad",
                   help="how images are fitted to the model's input size (default: pad, keeping the aspect)")
    s.add_argument("--score", choices=("report", *SCORES), default="report",
                   help="out-of-class score behind the out_of_class flag (default: the one the run's report used)")
    s = sub.add_parser("datasets", help="list the dataset stores under a folder")
    s.add_argument("root", nargs="?", default="data", type=Path)
    s = sub.add_parser("runs", help="list trained runs: final and last-20-median test accuracy (EMA model)")
    s.add_argument("root", nargs="?", default="runs", type=Path)
    return ap


def main(argv: list[str] | None = None) -> None:
    args = build_parser().parse_args(argv)

    def dispatch() -> None:
        if args.command == "datasets":
            return _datasets(args.root)
        if args.command == "runs":
            return _runs(args.root)
        if args.command == "predict":
            from .predict import predict_folder

            res = predict_folder(args.model, args.images, args.out, weights=args.weights, batch=args.batch,
                                 device=args.device, on_error=args.on_error, resize=args.resize, score=args.score)
            return print(res.summary())
        if args.command == "results":
            if not args.path.is_file():
                raise RealmixError(f"{args.path}: not found; run `dvc repro` (or `make repro`) first")
            return print(args.path.read_text(), end="")
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
        elif args.command == "filter":
            store = pipeline.filter(p, args.input, args.teacher)
            f = store.meta["filter"]
            print(f"{store.summary()}; kept {f['kept']} of {f['pool']} unlabelled images ({f['score']} <= "
                  f"{f['cut']:.4g}, the cut that keeps {f['keep']:.0%} of the validation images)")
        elif args.command == "train":
            from . import distributed

            if p.train.nproc > 1 and not distributed.launched():  # N local processes under torchrun
                from .hardware import pick_device

                raise SystemExit(distributed.relaunch(
                    p.train.nproc, ["--params", args.params, "train", "--algorithm", args.algorithm,
                                    "--data", args.data], pick_device(p.train.device)))
            res = pipeline.train(p, args.algorithm, args.data)
            shown = ("test/accuracy", "valid/accuracy", "label/accuracy", "raw/test/accuracy")
            if res:  # rank 0 (the only process when not distributed)
                print(f"{pipeline.run_dir(args.algorithm, args.data)}: "
                      + ", ".join(f"{k} {res[k]:.2f}%" for k in shown if k in res))
        elif args.command == "evaluate":
            res = pipeline.evaluate(p, args.algorithm, args.data)
            print(f"{pipeline.run_dir(args.algorithm, args.data)}/eval: test accuracy {res['accuracy']:.2f}% "
                  f"on {res['images']} images, F1 macro {res['f1_macro']:.3f}")
        elif args.command == "summary":
            rows = pipeline.summary(p)
            print(f"{pipeline.METRICS}/summary.md: {len(rows)} settings")

    pipeline.run(dispatch)


if __name__ == "__main__":
    main()
