"""One function per pipeline step, shared by the DVC stage scripts and the `realmix` CLI.

Each takes the validated params (plus the matrix item of its stage), derives its input/output paths
from the conventions below and calls the core. Nothing here imports DVC.

Paths (relative to the project root):
    data/datasets/<name>/                       download: the whole dataset as a store
    data/renamed/, data/rename_map.csv          rename: the numbered copy of a folder, old -> new names
    data/splits/<name>.<seed>@<size>-<nvalid>/  split
    data/splits/<mname>_mismatch<level>.<seed>@<size>-<nvalid>/   mismatch filter
    data/splits/<prefix>_aug<copies>.<seed>@<size>-<nvalid>/     pre-augmented copy of a split
    data/splits/<prefix>_filtered_<teacher>.<seed>@<size>-<nvalid>/   filter: the pool <teacher>'s run kept
    runs/<algorithm>/<split name>/              train: model.pt, checkpoints/, live/ (dvclive), tensorboard/
    runs/<algorithm>/<split name>/eval/         evaluate: evaluation.json, predictions.npy/.csv, accuracy.png
    metrics/runs/<algorithm>/<split name>/accuracy.json   evaluate: last01/10/20/50 medians (DVC metrics)
    metrics/summary/, summary.md, summary.png   summary: mean +- std over seeds per setting
"""

from __future__ import annotations

import sys
from collections.abc import Callable
from pathlib import Path

from .algorithms import ALGORITHMS
from .errors import RealmixError
from .params import Params
from .splits import SplitName
from .store import Store
from .summary import RunRef

DATA = Path("data")
RUNS = Path("runs")
METRICS = Path("metrics")
RUN_METRICS = METRICS / "runs"
RENAMED = DATA / "renamed"
RENAME_MAP = DATA / "rename_map.csv"


def dataset_dir(p: Params) -> Path:
    return DATA / "datasets" / p.dataset.name


def split_name(p: Params, seed: int, size: int | str) -> SplitName:
    return SplitName(p.dataset.name, seed, size, p.split.nvalid)


def mismatch_name(p: Params, seed: int, level: int) -> SplitName:
    return SplitName(f"{p.mismatch.name}_mismatch{level}", seed, p.mismatch.size, p.split.nvalid)


def augmented_name(source: SplitName, copies: int) -> SplitName:
    return SplitName(f"{source.name}_aug{copies}", source.seed, source.size, source.nvalid)


def filtered_name(source: SplitName, teacher: str) -> SplitName:
    return SplitName(f"{source.name}_filtered_{teacher}", source.seed, source.size, source.nvalid)


def split_dir(name: SplitName | str) -> Path:
    return DATA / "splits" / str(name)


def run_dir(algorithm: str, data: SplitName | str) -> Path:
    return RUNS / algorithm / str(data)


# -- steps -----------------------------------------------------------------------------------------
def download(p: Params) -> Store:
    from .sources import build_dataset

    return build_dataset(p.dataset, dataset_dir(p))


def rename(p: Params) -> int:
    from .rename import rename_view

    return len(rename_view(p.rename.src, RENAMED, RENAME_MAP, start=p.rename.start, ext=p.rename.ext))


def split(p: Params, seed: int, size: int | str) -> Store:
    from .splits import create_split

    s = p.split
    return create_split(
        Store.open(dataset_dir(p)), split_dir(split_name(p, seed, size)), seed=seed, size=size,
        nvalid=s.nvalid, label_size=s.label_size, class_balance=s.class_balance,
        allow_duplicates=s.allow_duplicates,
    )


def mismatch(p: Params, seed: int, level: int) -> Store:
    from .mismatch import filter_split

    m = p.mismatch
    if level not in m.unlabelled_classes:
        raise RealmixError(f"params: mismatch.unlabelled_classes has no entry for level {level}")
    name = mismatch_name(p, seed, level)
    return filter_split(
        Store.open(split_dir(split_name(p, seed, m.size))), split_dir(name), name=str(name),
        labelled_classes=m.labelled_classes, unlabelled_classes=m.unlabelled_classes[level],
        remap=m.remap, level=level,
    )


def preaugment(p: Params, source: str, copies: int) -> Store:
    from .preaugment import preaugment as run

    a = p.preaugment
    src = SplitName.parse(source)
    name = augmented_name(src, copies)
    return run(
        Store.open(split_dir(src)), split_dir(name), copies=copies, augment=a.augment,
        keep_originals=a.keep_originals, seed=a.seed, cutout_prob=a.cutout_prob, shard_size=a.shard_size,
        storage=a.storage, name=str(name),
    )


def filter(p: Params, source: str, teacher: str) -> Store:  # noqa: A001 (the step's name, as the stage's)
    """Score the pool of split `source` with runs/<teacher>/<source>/model.pt and write the filtered split."""
    from .pool_filter import filter_pool

    src = SplitName.parse(source)
    name = filtered_name(src, teacher)
    return filter_pool(Store.open(split_dir(src)), run_dir(teacher, src) / "model.pt", split_dir(name),
                       name=str(name), score=p.filter.score, keep=p.filter.keep, grid=p.report.grid,
                       batch=p.train.eval_batch, device=p.train.device)


def train(p: Params, algorithm: str, data: str) -> dict[str, float]:
    """Train `algorithm` on the split store `data` (e.g. digits_aug10.1@30-100) into runs/<algorithm>/<data>/.

    Under torchrun every process calls this: it joins the process group the environment describes; only rank 0
    returns the last evaluation (the others return {}).
    """
    from .distributed import process_group
    from .hardware import pick_device
    from .train import Trainer

    if algorithm not in ALGORITHMS:
        raise RealmixError(f"unknown algorithm {algorithm!r}; choose one of: {', '.join(ALGORITHMS)}")
    name = SplitName.parse(data)
    store = Store.open(split_dir(name))
    with process_group(pick_device(p.train.device)) as dist:
        return Trainer(p, algorithm, store, split_seed=name.seed, dist=dist).fit(run_dir(algorithm, name))


def evaluate(p: Params, algorithm: str, data: str) -> dict:
    """Evaluate runs/<algorithm>/<data>/model.pt on its split's test images, and report its out-of-class
    unlabelled images; write eval/ and accuracy.json."""
    from .evaluate import evaluate_run

    name = SplitName.parse(data)
    return evaluate_run(run_dir(algorithm, name), Store.open(split_dir(name)),
                        RUN_METRICS / algorithm / str(name) / "accuracy.json",
                        batch=p.train.eval_batch, device=p.train.device, report=p.report)


def planned_runs(p: Params) -> list[RunRef]:
    """Every run the train stages of dvc.yaml train with these params (the same matrices, in the same order)."""
    s, m, t, f = p.split, p.mismatch, p.train, p.filter
    runs = []

    def add(algorithms: list[str], name: SplitName, mismatch: int | None = None, copies: int | None = None,
            filtered: str | None = None) -> None:
        setting = f"{name.name}@{name.size}-{name.nvalid}"
        runs.extend(RunRef(a, str(name), setting, name.seed, mismatch, copies, filtered) for a in algorithms)

    def add_kind(name: SplitName, plain: list[str], aug: list[str], copies: list[int], teachers: list[str],
                 filtered: list[str], filtered_aug: list[str], mismatch: int | None = None) -> None:
        add(plain, name, mismatch)
        for c in copies:
            add(aug, augmented_name(name, c), mismatch, c)
        for teacher in teachers:
            add(filtered, filtered_name(name, teacher), mismatch, filtered=teacher)
            for c in copies:
                add(filtered_aug, augmented_name(filtered_name(name, teacher), c), mismatch, c, teacher)

    for seed in s.seeds:
        for size in s.sizes:
            add_kind(split_name(p, seed, size), t.algorithms, t.aug_algorithms, p.preaugment.copies, f.teachers,
                     t.filtered_algorithms, t.filtered_aug_algorithms)
        for level in m.levels:
            add_kind(mismatch_name(p, seed, level), t.mismatch_algorithms, t.mismatch_aug_algorithms,
                     p.preaugment.mismatch_copies, f.mismatch_teachers, t.mismatch_filtered_algorithms,
                     t.mismatch_filtered_aug_algorithms, level)
    return runs


def summary(p: Params) -> list[dict]:
    from .summary import write_summary

    return write_summary(planned_runs(p), RUN_METRICS, METRICS)


def run(main: Callable[[], object]) -> None:
    """Run a stage/CLI entry point: user errors become one `error:` line and exit status 2."""
    try:
        main()
    except RealmixError as e:
        print(f"error: {e}", file=sys.stderr)
        sys.exit(2)
    except KeyboardInterrupt:
        print("error: interrupted", file=sys.stderr)
        sys.exit(130)
