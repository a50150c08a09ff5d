"""Typed, validated params: `params.yaml` parsed into one dataclass per stage section.

The algorithm sections are the registry's (`realmix.algorithms.ALGORITHMS`: one per algorithm name, dataclasses in
`realmix/algorithms/sections.py`); they are parsed and checked here like every other section.

An unknown key (e.g. a typo), a missing key, a value of the wrong type or outside its allowed set fails
with one line naming the key (`split.nvalid`), the bad value and what is allowed.
"""

from __future__ import annotations

import dataclasses
import difflib
import re
import types
import typing
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Literal

import yaml

# AUGMENTS, SCORES, TSA, STORAGES: the allowed values of keys that name what some code implements live with that
# code (torch modules: importing params imports torch)
from .algorithms import ALGORITHMS
from .algorithms.sections import AlgorithmParams
from .augment import AUGMENTS
from .ema import EMA_BN
from .errors import RealmixError
from .openset import SCORES
from .ops import TSA
from .store import STORAGES

SOURCES = ("digits", "cifar10", "cifar100", "svhn", "stl10", "fashion_mnist", "folder")
NAME_RE = re.compile(r"^[A-Za-z0-9_]+$")


def check_name(value: str, key: str) -> str:
    """Dataset names may not contain '-', '.', '@' or '/': those delimit `name.seed@size-valid`."""
    if not NAME_RE.match(value):
        raise RealmixError(
            f"params: {key}={value!r} is not a valid dataset name: use letters, digits and '_' only "
            f"('.', '-' and '@' separate seed, size and validation in split names), e.g. "
            f"{re.sub(r'[^A-Za-z0-9_]', '_', value) or 'mydata'!r}"
        )
    return value


@dataclass(frozen=True)
class DatasetParams:
    """`dataset`: where the raw images come from (the download stage)."""

    # fashion_mnist: native 28 x 28 x 1 (dataset.img_size and resize are ignored; the model takes the store's size)
    source: Literal["digits", "cifar10", "cifar100", "svhn", "stl10", "fashion_mnist", "folder"] = "digits"
    name: str = "digits"
    archive_dir: str = "data/archives"  # pre-fetched upstream archives (the role ML_DATA played)
    download: bool = True  # fetch a missing archive from its official URL
    svhn_extra: bool = False  # svhn: also read extra_32x32.mat (531k images) into the `extra` subset
    folder: str = "examples/tiny_folder"  # folder: root with train/<class>/, unlabeled/, test/<class>/
    img_size: int = 32  # folder: images are resized to img_size x img_size; digits: upsampled to it
    resize: Literal["pad", "stretch", "crop"] = "pad"  # folder: how non-square images become square
    digits_test: int = 500  # digits: images held out (stratified) as the test set

    def validate(self) -> None:
        check_name(self.name, "dataset.name")
        if self.img_size < 8 or self.img_size > 512:
            raise RealmixError(f"params: dataset.img_size={self.img_size} must be between 8 and 512")
        if self.source == "digits" and self.img_size % 8:
            raise RealmixError(f"params: dataset.img_size={self.img_size} must be a multiple of 8 for digits")
        if not 10 <= self.digits_test <= 1000:
            raise RealmixError(f"params: dataset.digits_test={self.digits_test} must be between 10 and 1000")


@dataclass(frozen=True)
class RenameParams:
    """`rename`: the seed's `{number}_{class}.{ext}` naming, written as a copy under data/."""

    src: str = "examples/tiny_folder"
    start: int = 0
    ext: Literal["png", "jpg", "keep"] = "png"

    def validate(self) -> None:
        if self.start < 0:
            raise RealmixError(f"params: rename.start={self.start} must be >= 0")


@dataclass(frozen=True)
class SplitParams:
    """`split`: labelled / unlabelled / validation selection (the original create_split)."""

    seeds: list[int] = field(default_factory=lambda: [1])
    # labelled images per split; `all`: every labelled training image that is not a validation image
    sizes: list[int | Literal["all"]] = field(default_factory=lambda: [250])
    nvalid: int = 500  # validation = the first nvalid images of the class-balanced unlabelled order
    label_size: int | None = None  # only the first label_size train images are labelled candidates
    class_balance: bool = False  # strict round-robin over classes instead of following the class prior
    allow_duplicates: bool = False  # accept identical images across label/unlabel/valid/test

    def validate(self) -> None:
        if not self.seeds or not self.sizes:
            raise RealmixError("params: split.seeds and split.sizes must each list at least one value")
        for s in self.seeds:
            if s < 0:
                raise RealmixError(f"params: split.seeds contains {s}; seeds must be >= 0")
        for n in self.sizes:
            if n != "all" and n < 1:
                raise RealmixError(f"params: split.sizes contains {n}; label counts must be >= 1")
        if self.nvalid < 0:
            raise RealmixError(f"params: split.nvalid={self.nvalid} must be >= 0")
        if self.label_size is not None and self.label_size < 1:
            raise RealmixError(f"params: split.label_size={self.label_size} must be >= 1 or null")


@dataclass(frozen=True)
class MismatchParams:
    """`mismatch`: the class-mismatch protocol (labelled classes vs unlabelled class sets per level)."""

    name: str = "cifar6"
    size: int = 250  # the split size the mismatch datasets are cut from (one of split.sizes)
    levels: list[int] = field(default_factory=lambda: [0, 25, 50, 75, 100])
    labelled_classes: list[int] = field(default_factory=lambda: [2, 3, 4, 5, 6, 7])
    unlabelled_classes: dict[int, list[int]] = field(
        default_factory=lambda: {
            0: [4, 5, 6, 7], 25: [0, 5, 6, 7], 50: [0, 1, 6, 7], 75: [0, 1, 8, 7], 100: [0, 1, 8, 9]
        }
    )  # the paper's CIFAR-10 protocol (method reference C.7)
    remap: bool = True  # relabel the labelled classes 0..k-1 (False keeps the original ids, K unchanged)

    def validate(self) -> None:
        check_name(self.name, "mismatch.name")
        if len(set(self.labelled_classes)) != len(self.labelled_classes):
            raise RealmixError("params: mismatch.labelled_classes must list distinct class ids")
        if self.levels and not self.labelled_classes:
            raise RealmixError("params: mismatch.labelled_classes is empty but mismatch.levels lists levels; list the "
                               "labelled class ids, or set mismatch.levels: [] to run without the mismatch protocol")
        for level in self.levels:
            if level not in self.unlabelled_classes:
                raise RealmixError(
                    f"params: mismatch.levels has {level} but mismatch.unlabelled_classes has no entry {level}: "
                    f"add `{level}: [class ids]` or remove the level"
                )
            if not self.unlabelled_classes[level]:
                raise RealmixError(f"params: mismatch.unlabelled_classes.{level} is empty")
        for level, classes in self.unlabelled_classes.items():
            if len(set(classes)) != len(classes):
                raise RealmixError(f"params: mismatch.unlabelled_classes.{level} lists a class twice")


@dataclass(frozen=True)
class PreaugmentParams:
    """`preaugment`: offline augmented copies of the unlabelled images (the original make_aug_copy)."""

    copies: list[int] = field(default_factory=lambda: [50])  # aug_copy values; [] runs no pre-augmentation
    mismatch_copies: list[int] = field(default_factory=list)  # the same for each mismatch split
    augment: Literal[AUGMENTS] = "cifar10"
    keep_originals: bool = True  # also keep each original unlabelled image (the original dropped them)
    seed: int = 1
    cutout_prob: float = 0.3  # probability that random erasing is applied to an image
    shard_size: int = 65536  # images per output shard of a materialized pool (bounds memory)
    # virtual: the stage writes the recipe and the pool is computed where it is read (the same images, bit for
    # bit); materialized: the pool's images are written to disk
    storage: Literal[STORAGES] = "virtual"

    def validate(self) -> None:
        for key in ("copies", "mismatch_copies"):
            for c in getattr(self, key):
                if c < 1:
                    raise RealmixError(f"params: preaugment.{key} contains {c}; each copy count must be >= 1")
        if not 0.0 <= self.cutout_prob <= 1.0:
            raise RealmixError(f"params: preaugment.cutout_prob={self.cutout_prob} must be in [0, 1]")
        if self.shard_size < 1:
            raise RealmixError(f"params: preaugment.shard_size={self.shard_size} must be >= 1")




def _check_algorithms(values: list[str], key: str) -> None:
    for a in values:
        if a not in ALGORITHMS:
            close = difflib.get_close_matches(a, list(ALGORITHMS), n=1)
            hint = f" (did you mean {close[0]!r}?)" if close else ""
            raise RealmixError(f"params: {key} has unknown algorithm {a!r}{hint}; choose from: {', '.join(ALGORITHMS)}")
    if len(set(values)) != len(values):
        raise RealmixError(f"params: {key} lists an algorithm twice")


# train.<key>: the algorithms trained on each kind of split (the train stages of dvc.yaml, one per key)
RUN_LISTS = ("algorithms", "aug_algorithms", "mismatch_algorithms", "mismatch_aug_algorithms", "filtered_algorithms",
             "filtered_aug_algorithms", "mismatch_filtered_algorithms", "mismatch_filtered_aug_algorithms")


@dataclass(frozen=True)
class ModelParams:
    """`model`: the network (WRN-28-2 = filters 32, repeat 4; scales 0 = from the image size)."""

    arch: Literal["wrn"] = "wrn"
    filters: int = 32  # channels of the first stage (doubled per stage): the width
    repeat: int = 4  # residual blocks per stage: the depth (WRN-28 = 3 stages x 4 blocks)
    scales: int = 0  # number of stages; 0 = log2(image size) - 2 (3 for 32 px)
    bn_momentum: float = 0.001  # PyTorch BN momentum (TF decay 0.999); short runs need more (e.g. 0.01)

    def validate(self) -> None:
        if not 1 <= self.filters <= 1024:
            raise RealmixError(f"params: model.filters={self.filters} must be between 1 and 1024")
        if not 1 <= self.repeat <= 64:
            raise RealmixError(f"params: model.repeat={self.repeat} must be between 1 and 64")
        if not 0 <= self.scales <= 8:
            raise RealmixError(f"params: model.scales={self.scales} must be between 0 (auto) and 8")
        if not 0.0 < self.bn_momentum <= 1.0:
            raise RealmixError(f"params: model.bn_momentum={self.bn_momentum} must be in (0, 1]")


@dataclass(frozen=True)
class TrainParams:
    """`train`: which runs to train, and the loop, optimiser and EMA shared by every algorithm."""

    algorithms: list[str] = field(default_factory=lambda: ["supervised", "mixmatch"])  # on the plain splits
    aug_algorithms: list[str] = field(default_factory=lambda: ["realmix"])  # on the pre-augmented splits
    mismatch_algorithms: list[str] = field(default_factory=list)  # on the mismatch splits
    mismatch_aug_algorithms: list[str] = field(default_factory=list)  # on the pre-augmented mismatch splits
    # on the filtered splits (realmix/pool_filter.py: one per filter.teachers / filter.mismatch_teachers entry)
    filtered_algorithms: list[str] = field(default_factory=list)  # on each filtered plain split
    filtered_aug_algorithms: list[str] = field(default_factory=list)  # on its pre-augmented copies
    mismatch_filtered_algorithms: list[str] = field(default_factory=list)  # on each filtered mismatch split
    mismatch_filtered_aug_algorithms: list[str] = field(default_factory=list)  # on its pre-augmented copies
    seed: int = 0  # run seed; combined with the split seed for init, data order, augmentation, MixUp
    batch: int = 64  # labelled batch; SSL methods add `nu` views of as many unlabelled images
    lr: float = 0.002  # Adam, constant
    wd: float = 0.02  # decoupled decay: W <- W (1 - wd lr) on conv/dense weights after each Adam step
    ema: float = 0.999  # EMA decay of the parameters (buffers are copied)
    ema_warmup: bool = True  # decay min(ema, (1 + t) / (10 + t)) at step t (the original: false)
    # BN statistics of the evaluated EMA model (realmix/ema.py): recompute = re-estimated for the EMA weights on
    # the labelled images at every evaluation and in model.pt; copy = the raw model's running statistics (the
    # original); validated = whichever of the two predicts the validation images better, at every evaluation
    ema_bn: Literal[EMA_BN] = "validated"
    train_kimg: float = 65536  # training length in kimg (1 kimg = 1024 labelled images)
    report_kimg: float = 64  # evaluate and log every report_kimg
    save_kimg: float = 64  # checkpoint every save_kimg
    keep_ckpt: int = 50  # checkpoints kept
    augment: Literal[AUGMENTS] = "cifar10"  # per-step augmentation
    cutout_prob: float = 0.3  # augment=cutout: probability of erasing a box
    eval_batch: int = 256
    device: Literal["auto", "cpu", "cuda"] = "auto"
    # bf16: autocast forwards to bfloat16 (weights, optimizer, losses stay float32); auto: bf16 where the device
    # computes it natively (CUDA with bf16, CPUs with AVX512-BF16/AMX), else fp32
    precision: Literal["auto", "fp32", "bf16"] = "auto"
    threads: int = 0  # CPU threads for torch (0 = torch's default)
    progress: bool = True  # progress bar on stderr
    # fast path (auto: on for CUDA, channels_last also on CPUs; none changes what is trained, so none is part of a
    # run's identity)
    channels_last: Literal["auto", True, False] = "auto"  # NHWC weights/activations (auto: on, CPUs too, see hardware)
    compile: bool = False  # torch.compile the model (a one-off compile of the first steps; CPU needs a C compiler)
    fused_adam: Literal["auto", True, False] = "auto"  # Adam as one fused kernel (else torch's foreach Adam)
    pin_memory: Literal["auto", True, False] = "auto"  # page-locked host buffers for per-step copies (CUDA only)
    nproc: int = 1  # data-parallel processes on this machine (one per GPU); > 1: relaunched under torchrun

    def validate(self) -> None:
        for key in ("channels_last", "fused_adam", "pin_memory"):
            if not (getattr(self, key) == "auto" or isinstance(getattr(self, key), bool)):
                raise RealmixError(f"params: train.{key}={getattr(self, key)!r} must be auto, true or false")
        if self.nproc < 1:
            raise RealmixError(f"params: train.nproc={self.nproc} must be >= 1")
        for key in RUN_LISTS:
            _check_algorithms(getattr(self, key), f"train.{key}")
        if self.batch < 1:
            raise RealmixError(f"params: train.batch={self.batch} must be >= 1")
        if not self.lr > 0:
            raise RealmixError(f"params: train.lr={self.lr} must be > 0")
        if not 0 <= self.wd * self.lr < 1:
            raise RealmixError(f"params: train.wd={self.wd} must be >= 0 with wd * lr < 1")
        if not 0 <= self.ema < 1:
            raise RealmixError(f"params: train.ema={self.ema} must be in [0, 1)")
        for key in ("train_kimg", "report_kimg", "save_kimg"):
            if not getattr(self, key) > 0:
                raise RealmixError(f"params: train.{key}={getattr(self, key)} must be > 0")
        if self.train_kimg * 1024 < self.batch:
            raise RealmixError(f"params: train.train_kimg={self.train_kimg} is shorter than one batch")
        if self.keep_ckpt < 1:
            raise RealmixError(f"params: train.keep_ckpt={self.keep_ckpt} must be >= 1")
        if not 0.0 <= self.cutout_prob <= 1.0:
            raise RealmixError(f"params: train.cutout_prob={self.cutout_prob} must be in [0, 1]")
        if self.eval_batch < 1 or self.threads < 0:
            raise RealmixError("params: train.eval_batch must be >= 1 and train.threads >= 0")


# Top-level scalar keys (swept verbatim: `dvc exp run -S tsa=linear_schedule`) and their defaults.
SCALARS: dict[str, tuple[Any, Any]] = {
    "tsa": (Literal[TSA], "none"),
}


@dataclass(frozen=True)
class ReportParams:
    """`report`: the out-of-class report of a run's unlabelled images (written by `evaluate`)."""

    score: Literal[("auto", *SCORES)] = "auto"  # the score that sets the out_of_class flag (auto: report.AUTO_SCORE)
    keep: float = 0.95  # the cut keeps this share of the validation images (known in-class) below it
    grid: int = 64  # images in the out-of-class and test-mistake grids
    per_class: int = 8  # most confident unlabelled images shown per predicted class

    def validate(self) -> None:
        if not 0.0 < self.keep < 1.0:
            raise RealmixError(f"params: report.keep={self.keep} must be between 0 and 1 (e.g. 0.95: the cut keeps "
                               "95 % of the validation images as in-class)")
        for key in ("grid", "per_class"):
            if getattr(self, key) < 1:
                raise RealmixError(f"params: report.{key}={getattr(self, key)} must be >= 1")


@dataclass(frozen=True)
class FilterParams:
    """`filter`: a finished run (a teacher) scores its split's unlabelled images; the filtered split keeps those
    that look in-class (realmix/pool_filter.py). One filtered split per teacher and split."""

    teachers: list[str] = field(default_factory=list)  # teachers of the plain splits (each in train.algorithms)
    mismatch_teachers: list[str] = field(default_factory=list)  # of the mismatch splits (in train.mismatch_algorithms)
    score: Literal[SCORES] = "maha"  # the teacher's out-of-class score (realmix/openset.py; docs/evaluation.md)
    keep: float = 0.95  # the cut keeps this share of the validation images (known in-class) at or below it

    def validate(self) -> None:
        _check_algorithms(self.teachers, "filter.teachers")
        _check_algorithms(self.mismatch_teachers, "filter.mismatch_teachers")
        if not 0.0 < self.keep < 1.0:
            raise RealmixError(f"params: filter.keep={self.keep} must be between 0 and 1 (e.g. 0.95: the cut keeps "
                               "95 % of the validation images, and the unlabelled images scoring below it)")


@dataclass(frozen=True)
class Params:
    dataset: DatasetParams
    rename: RenameParams
    split: SplitParams
    mismatch: MismatchParams
    preaugment: PreaugmentParams
    model: ModelParams = field(default_factory=ModelParams)
    train: TrainParams = field(default_factory=TrainParams)
    # the section of every registered algorithm, by name, in registry order (also read as params.<name>)
    algorithms: dict[str, AlgorithmParams] = field(
        default_factory=lambda: {name: entry.params() for name, entry in ALGORITHMS.items()})
    report: ReportParams = field(default_factory=ReportParams)
    filter: FilterParams = field(default_factory=FilterParams)
    tsa: str = "none"  # TSA schedule of RealMix's supervised loss: none | linear_schedule | exp_schedule | log_schedule

    def __getattr__(self, name: str) -> Any:
        # only reached for names that are not fields: an algorithm's section, params.mixmatch as params.yaml's
        # `mixmatch:` (read through __dict__, which copy and pickle reach before the fields exist)
        sections = self.__dict__.get("algorithms", {})
        if name in sections:
            return sections[name]
        raise AttributeError(f"{type(self).__name__!r} object has no attribute {name!r}")

    def algorithm(self, name: str) -> Any:
        """The params section of an algorithm."""
        return self.algorithms[name]

    def scalars(self) -> dict[str, Any]:
        """The top-level params (`tsa`), offered to the algorithms that declare them (`Needs.reads`)."""
        return {key: getattr(self, key) for key in SCALARS}

    def weight_decay(self, algorithm: str) -> float:
        """The algorithm's own `wd` where set, else train.wd."""
        wd = self.algorithm(algorithm).wd
        return self.train.wd if wd is None else wd

    def learning_rate(self, algorithm: str) -> float:
        """The algorithm's own `lr` where set, else train.lr (the peak of a cosine schedule)."""
        lr = self.algorithm(algorithm).lr
        return self.train.lr if lr is None else lr

    def validate(self) -> None:
        for name, section in self.algorithms.items():
            section.validate_optimizer(name)
            wd, lr = section.wd, self.learning_rate(name)
            if wd is not None and not 0 <= wd * lr < 1:
                raise RealmixError(f"params: {name}.wd={wd} must be >= 0 with wd * lr < 1 (or null for train.wd)")
        t, f = self.train, self.filter
        for teachers, trained, runs in (("teachers", "algorithms", ("filtered_algorithms", "filtered_aug_algorithms")),
                                        ("mismatch_teachers", "mismatch_algorithms",
                                         ("mismatch_filtered_algorithms", "mismatch_filtered_aug_algorithms"))):
            missing = [a for a in getattr(f, teachers) if a not in getattr(t, trained)]
            if missing:
                raise RealmixError(f"params: filter.{teachers} names {missing[0]}, which train.{trained} does not "
                                   f"train, so no run would filter those splits; add it to train.{trained}")
            used = [k for k in runs if getattr(t, k)]
            if used and not getattr(f, teachers):
                raise RealmixError(f"params: train.{used[0]} trains on filtered splits but filter.{teachers} is "
                                   f"empty; name the run that filters them (e.g. filter.{teachers}: [supervised])")
        if self.mismatch.levels and self.mismatch.size not in self.split.sizes:
            raise RealmixError(
                f"params: mismatch.size={self.mismatch.size} is not one of split.sizes={self.split.sizes}; "
                "the mismatch datasets are cut from that split: set mismatch.levels: [] to run without the "
                f"class-mismatch protocol (e.g. on your own images), or set mismatch.size to one of "
                f"{self.split.sizes}"
            )


def _sections() -> dict[str, type]:
    """Every dataclass field of Params that is not a top-level scalar, with the registry's algorithm sections in
    place of the `algorithms` field."""
    hints = typing.get_type_hints(Params)
    sections: dict[str, type] = {}
    for f in dataclasses.fields(Params):
        if f.name == "algorithms":
            sections.update({name: entry.params for name, entry in ALGORITHMS.items()})
        elif f.name not in SCALARS:
            sections[f.name] = hints[f.name]
    return sections


# The sections of params.yaml, in file order.
SECTIONS: dict[str, type] = _sections()


def _unknown_key(key: str, known: list[str], where: str) -> RealmixError:
    close = difflib.get_close_matches(key, known, n=1)
    hint = f" (did you mean {close[0]!r}?)" if close else ""
    return RealmixError(f"params: unknown key {where}{key!r}{hint}; known keys: {', '.join(known)}")


def _describe(tp: Any) -> str:
    if typing.get_origin(tp) is Literal:
        return " or ".join(map(str, typing.get_args(tp)))
    return {int: "an integer", float: "a number", bool: "true or false", str: "a string"}.get(tp, str(tp))


def _coerce(value: Any, tp: Any, key: str) -> Any:
    """Check `value` against the annotation `tp`; return it (ints accepted for floats)."""
    origin = typing.get_origin(tp)
    args = typing.get_args(tp)
    if origin in (typing.Union, types.UnionType):
        if value is None and type(None) in args:
            return None
        inner = [a for a in args if a is not type(None)]
        if len(inner) == 1:
            return _coerce(value, inner[0], key)
        for t in inner:  # e.g. an integer or a keyword: the first that fits
            try:
                return _coerce(value, t, key)
            except RealmixError:
                pass
        raise RealmixError(f"params: {key}={value!r} is not allowed; it must be "
                           + " or ".join(_describe(t) for t in inner))
    if origin is Literal:
        if value not in args:
            raise RealmixError(f"params: {key}={value!r} is not allowed; choose one of: {', '.join(map(str, args))}")
        return value
    if origin is list:
        if not isinstance(value, list):
            raise RealmixError(f"params: {key} must be a list, got {value!r}")
        return [_coerce(v, args[0], f"{key}[{i}]") for i, v in enumerate(value)]
    if origin is dict:
        if not isinstance(value, dict):
            raise RealmixError(f"params: {key} must be a mapping, got {value!r}")
        return {_coerce(k, args[0], f"{key} key"): _coerce(v, args[1], f"{key}.{k}") for k, v in value.items()}
    if tp is bool:
        if not isinstance(value, bool):
            raise RealmixError(f"params: {key} must be true or false, got {value!r}")
        return value
    if tp is int:
        if isinstance(value, bool) or not isinstance(value, int):
            raise RealmixError(f"params: {key} must be an integer, got {value!r}")
        return value
    if tp is float:
        if isinstance(value, bool) or not isinstance(value, int | float):
            raise RealmixError(f"params: {key} must be a number, got {value!r}")
        return float(value)
    if tp is str:
        if not isinstance(value, str):
            raise RealmixError(f"params: {key} must be a string, got {value!r}")
        return value
    raise TypeError(f"unsupported annotation {tp!r}")  # a bug in this module, not user input


def parse_section(cls: type, data: Any, where: str) -> Any:
    if data is None:
        data = {}
    if not isinstance(data, dict):
        raise RealmixError(f"params: {where} must be a mapping of keys to values, got {data!r}")
    hints = typing.get_type_hints(cls)
    names = [f.name for f in dataclasses.fields(cls)]
    for key in data:
        if key not in names:
            raise _unknown_key(str(key), names, f"{where}.")
    values = {k: _coerce(v, hints[k], f"{where}.{k}") for k, v in data.items()}
    obj = cls(**values)
    if issubclass(cls, AlgorithmParams):  # several sections share a dataclass: its errors name the one read here
        obj.validate(where)
    else:
        obj.validate()
    return obj


def parse(data: Any, *, require_all: bool = False) -> Params:
    """Parse a params mapping. Sections may be absent (defaults apply) unless `require_all`."""
    if not isinstance(data, dict):
        raise RealmixError("params: the file must be a mapping of sections")
    known = [*SECTIONS, *SCALARS]
    extra = [k for k in data if k not in known]
    if extra:
        raise _unknown_key(str(extra[0]), known, "")
    if require_all:
        missing = [k for k in known if k not in data]
        if missing:
            raise RealmixError(f"params: missing {'section' if missing[0] in SECTIONS else 'key'} {missing[0]!r}")
    values: dict[str, Any] = {k: parse_section(cls, data.get(k), k) for k, cls in SECTIONS.items()}
    values["algorithms"] = {name: values.pop(name) for name in ALGORITHMS}
    for k, (tp, default) in SCALARS.items():
        values[k] = _coerce(data.get(k, default), tp, k)
    params = Params(**values)
    params.validate()
    return params


def load(path: str | Path = "params.yaml") -> Params:
    path = Path(path)
    try:
        data = yaml.safe_load(path.read_text())
    except FileNotFoundError as e:
        raise RealmixError(f"{path}: params file not found; run from the project root") from e
    except yaml.YAMLError as e:
        raise RealmixError(f"{path}: not valid YAML ({str(e).splitlines()[0]})") from e
    return parse(data, require_all=True)
