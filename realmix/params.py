"""Typed, validated params: `params.yaml` parsed into one dataclass per stage section.

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

from .errors import RealmixError

SOURCES = ("digits", "cifar10", "cifar100", "svhn", "stl10", "folder")
AUGMENTS = ("cifar10", "svhn", "stl10", "color", "cutout", "none")
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

    source: Literal["digits", "cifar10", "cifar100", "svhn", "stl10", "folder"] = "digits"
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
    sizes: list[int] = field(default_factory=lambda: [250])
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
            if n < 1:
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
        if len(set(self.labelled_classes)) != len(self.labelled_classes) or not self.labelled_classes:
            raise RealmixError("params: mismatch.labelled_classes must list distinct class ids")
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
    augment: Literal["cifar10", "svhn", "stl10", "color", "cutout", "none"] = "cifar10"
    keep_originals: bool = True  # also keep each original unlabelled image (the original dropped them)
    seed: int = 1
    cutout_prob: float = 0.3  # probability that random erasing is applied to an image
    shard_size: int = 65536  # images per output shard (bounds memory)

    def validate(self) -> None:
        for c in self.copies:
            if c < 1:
                raise RealmixError(f"params: preaugment.copies contains {c}; each copy count must be >= 1")
        if not 0.0 <= self.cutout_prob <= 1.0:
            raise RealmixError(f"params: preaugment.cutout_prob={self.cutout_prob} must be in [0, 1]")
        if self.shard_size < 1:
            raise RealmixError(f"params: preaugment.shard_size={self.shard_size} must be >= 1")


SECTIONS: dict[str, type] = {
    "dataset": DatasetParams,
    "rename": RenameParams,
    "split": SplitParams,
    "mismatch": MismatchParams,
    "preaugment": PreaugmentParams,
}


@dataclass(frozen=True)
class Params:
    dataset: DatasetParams
    rename: RenameParams
    split: SplitParams
    mismatch: MismatchParams
    preaugment: PreaugmentParams

    def validate(self) -> None:
        if self.mismatch.levels and self.mismatch.size not in self.split.sizes:
            raise RealmixError(
                f"params: mismatch.size={self.mismatch.size} is not one of split.sizes={self.split.sizes}; "
                "the mismatch datasets are cut from that split"
            )


def _unknown_key(key: str, known: list[str], where: str) -> RealmixError:
    close = difflib.get_close_matches(key, known, n=1)
    hint = f" (did you mean {close[0]!r}?)" if close else ""
    return RealmixError(f"params: unknown key {where}{key!r}{hint}; known keys: {', '.join(known)}")


def _coerce(value: Any, tp: Any, key: str) -> Any:
    """Check `value` against the annotation `tp`; return it (ints accepted for floats)."""
    origin = typing.get_origin(tp)
    args = typing.get_args(tp)
    if origin in (typing.Union, types.UnionType):
        if value is None and type(None) in args:
            return None
        inner = [a for a in args if a is not type(None)]
        return _coerce(value, inner[0], key)
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
    obj.validate()
    return obj


def parse(data: Any, *, require_all: bool = False) -> Params:
    """Parse a params mapping. Sections may be absent (defaults apply) unless `require_all`."""
    if not isinstance(data, dict):
        raise RealmixError("params: the file must be a mapping of sections")
    known = list(SECTIONS)
    extra = [k for k in data if k not in SECTIONS]
    if extra:
        raise _unknown_key(str(extra[0]), known, "")
    if require_all:
        missing = [k for k in SECTIONS if k not in data]
        if missing:
            raise RealmixError(f"params: missing section {missing[0]!r}")
    params = Params(**{k: parse_section(cls, data.get(k), k) for k, cls in SECTIONS.items()})
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
