"""Checkpoints: plain dicts of tensors and numbers, written atomically, loaded with `weights_only=True`.

A run directory keeps its last `keep` checkpoints as `checkpoints/ckpt-<images>.pt` (the step clock in images,
zero-padded so names sort). A checkpoint that fails to load (e.g. a file truncated by a crash outside our
atomic write) is skipped in favour of the previous one. The final model of a run is `model.pt`, a `ModelRecord`:
the EMA and raw weights plus what is needed to rebuild the network (arch, class names, image shape) and what
produced its figures (precision, hardware, threads).
"""

from __future__ import annotations

import dataclasses
import io
import os
import re
import sys
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch
from torch import Tensor

from . import atomic
from .errors import RealmixError
from .hardware import PRECISIONS

CKPT_FORMAT = "realmix-checkpoint/1"
MODEL_FORMAT = "realmix-model/1"
_NAME = re.compile(r"^ckpt-(\d+)\.pt$")


def save(path: str | os.PathLike, state: dict[str, Any]) -> None:
    """torch.save to a temporary sibling, fsync, rename into place."""
    buf = io.BytesIO()
    torch.save(state, buf)
    with atomic.atomic_path(path) as tmp:
        with open(tmp, "wb") as f:
            f.write(buf.getbuffer())
            f.flush()
            os.fsync(f.fileno())


def load(path: str | os.PathLike, *, expect: str = CKPT_FORMAT) -> dict[str, Any]:
    """Load a checkpoint safely (no arbitrary unpickling); a clear error if it is missing, corrupt or foreign."""
    path = Path(path)
    if not path.is_file():
        raise RealmixError(f"{path}: checkpoint not found")
    try:
        state = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as e:  # torch raises many types for truncated/corrupt/unsafe files
        # torch's own advice for what its safe unpickler refuses (load it unsafely) is not to be passed on
        if "Unsupported global" in str(e):
            raise RealmixError(
                f"{path}: refused: it holds pickled Python objects other than tensors and numbers, which are "
                "never loaded (weights_only); use a file written by realmix, or delete it and retrain") from e
        first = str(e).strip().splitlines()[0] if str(e).strip() else type(e).__name__
        if "Weights only load failed" in first:
            first = "its content is not a PyTorch checkpoint"
        raise RealmixError(f"{path}: not a readable checkpoint ({first[:200]}); delete it or retrain") from e
    if not isinstance(state, dict) or state.get("format") != expect:
        found = state.get("format") if isinstance(state, dict) else type(state).__name__
        fix = "give a run's model.pt (runs/<algorithm>/<split>/model.pt)" if expect == MODEL_FORMAT else \
            "delete it or retrain"
        raise RealmixError(
            f"{path}: not a realmix {expect.split('/')[0].split('-')[1]} file (format {found!r}); {fix}")
    return state


@dataclass
class ModelRecord:
    """A run's `model.pt` (format realmix-model/1), read and written here only.

    On disk it is a plain dict (loaded with weights_only); the precision is stored as the autocast dtype's name
    ("torch.bfloat16" / "torch.float32") as every earlier version wrote it. Fields an older file lacks get their
    defaults (None: not recorded)."""

    algorithm: str
    data: str  # the split store's name
    arch: dict[str, Any]
    num_classes: int
    class_names: list[str]
    image_shape: tuple[int, int, int] | list[int]  # H, W, C
    images: int  # labelled images seen (the run's clock)
    precision: str  # "bf16" | "fp32": what its forwards computed in (hardware.PRECISIONS)
    model: dict[str, Tensor]  # the EMA weights, as evaluated (BN statistics per `ema_bn`)
    raw_model: dict[str, Tensor]
    history: list[dict[str, float]] = field(default_factory=list)  # every evaluation; `evaluate` takes medians
    hardware: str | None = None  # hardware.describe_device; with precision and threads, what made the figures
    threads: int | None = None
    fast_path: dict[str, bool] = field(default_factory=dict)
    world_size: int = 1
    fingerprint: str | None = None
    ema_bn: str | None = None  # how the EMA model's BN statistics were made: recompute | copy (validated: the pick)
    # the distance scores' reference (openset.Reference): the normalised pooled features of the run's labelled
    # images by the evaluated EMA model and their classes, so `realmix predict` scores a folder without the split
    label_features: Tensor | None = None
    label_classes: Tensor | None = None  # absent in files written before the Mahalanobis score: kNN only

    INPUT = "uint8 NCHW -> x * 2/255 - 1"  # how the network reads images (models.to_input)
    # on disk: the autocast dtype's name, as every version wrote it ("torch.bfloat16" -> "bf16")
    _DTYPE_NAMES = {str(dtype or torch.float32): name for name, dtype in PRECISIONS.items()}
    _REQUIRED = ("algorithm", "data", "arch", "num_classes", "class_names", "image_shape", "images", "model",
                 "raw_model")

    def __post_init__(self) -> None:
        if self.precision not in PRECISIONS:
            raise ValueError(f"precision {self.precision!r} is not one of {', '.join(PRECISIONS)}")

    @property
    def autocast_dtype(self) -> torch.dtype | None:
        """The autocast dtype the run trained and was evaluated in (None: float32); `evaluate` and
        `realmix predict` compute in it, so they agree with the loop's last evaluation image by image."""
        return PRECISIONS[self.precision]

    def to_dict(self) -> dict[str, Any]:
        """The file's content, keys in the order every version wrote them."""
        dtype = PRECISIONS[self.precision] or torch.float32
        return {
            "format": MODEL_FORMAT, "algorithm": self.algorithm, "data": self.data, "arch": self.arch,
            "num_classes": self.num_classes, "class_names": self.class_names, "image_shape": self.image_shape,
            "input": self.INPUT, "images": self.images, "precision": str(dtype), "hardware": self.hardware,
            "threads": self.threads, "fast_path": self.fast_path, "world_size": self.world_size,
            "fingerprint": self.fingerprint, "model": self.model, "ema_bn": self.ema_bn, "raw_model": self.raw_model,
            "metrics": self.history[-1] if self.history else {}, "history": self.history,
            "label_features": self.label_features, "label_classes": self.label_classes,
        }

    @classmethod
    def from_dict(cls, state: dict[str, Any], path: str | os.PathLike) -> ModelRecord:
        missing = [k for k in cls._REQUIRED if k not in state]
        if missing:
            raise RealmixError(f"{path}: model file lacks {', '.join(missing)}; it is damaged: retrain the run")
        names = {f.name for f in dataclasses.fields(cls)}
        known = {k: v for k, v in state.items() if k in names and v is not None}
        known["precision"] = cls._DTYPE_NAMES.get(state.get("precision"), "fp32")  # absent in the oldest: fp32
        return cls(**known)

    @classmethod
    def load(cls, path: str | os.PathLike) -> ModelRecord:
        return cls.from_dict(load(path, expect=MODEL_FORMAT), path)

    def save(self, path: str | os.PathLike) -> None:
        save(path, self.to_dict())


def check_compatible(state: dict[str, Any], arch: dict, num_classes: int, path: str | os.PathLike) -> None:
    """Fail with one line when a checkpoint was made for another network or class count."""
    if state.get("num_classes") != num_classes:
        raise RealmixError(
            f"{path}: checkpoint has {state.get('num_classes')} classes but this run has {num_classes}; "
            "use a checkpoint trained on the same dataset (or delete it to start over)")
    if state.get("arch") != arch:
        raise RealmixError(
            f"{path}: checkpoint is for model {state.get('arch')} but this run uses {arch}; "
            "use matching model params (or delete the checkpoint to start over)")


class CheckpointDir:
    """The rotating checkpoints of one run."""

    def __init__(self, path: str | os.PathLike, keep: int):
        self.path = Path(path)
        self.keep = keep

    def list(self) -> list[Path]:
        """Checkpoints, oldest first."""
        if not self.path.is_dir():
            return []
        found = [(int(m.group(1)), p) for p in self.path.iterdir() if (m := _NAME.match(p.name))]
        return [p for _, p in sorted(found)]

    def save(self, state: dict[str, Any], images: int) -> Path:
        path = self.path / f"ckpt-{images:012d}.pt"
        save(path, state)  # first: a failed first save leaves no checkpoints/ folder behind
        ignore = self.path / ".gitignore"
        if not ignore.exists():  # checkpoints are neither DVC-cached nor meant for git
            atomic.write_text(ignore, "*\n")
        for old in self.list()[:-self.keep]:
            old.unlink(missing_ok=True)
        # a run killed mid-save left a temporary, possibly of a checkpoint name this run never writes again
        atomic.remove_temporaries(self.path)
        return path

    def latest(self) -> tuple[Path, dict[str, Any]] | None:
        """The newest checkpoint that loads; unreadable ones are reported and skipped."""
        for path in reversed(self.list()):
            try:
                return path, load(path)
            except RealmixError as e:
                print(f"warning: skipping {e}", file=sys.stderr)
        return None

    def clear(self) -> None:
        for p in self.list():
            p.unlink(missing_ok=True)
