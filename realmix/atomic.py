"""Crash-safe output: write to a temporary sibling, then rename into place.

A stage killed mid-write leaves either the previous output or nothing, never a half-written file that
DVC or the next stage would trust.
"""

from __future__ import annotations

import contextlib
import errno
import os
import shutil
import uuid
from collections.abc import Iterator
from pathlib import Path

from .errors import RealmixError

_TMP_MARK = ".tmp-"
_DISK_FULL = (errno.ENOSPC, errno.EDQUOT)


def is_disk_full(e: BaseException) -> bool:
    return isinstance(e, OSError) and e.errno in _DISK_FULL


def disk_full(path: Path, e: OSError) -> RealmixError:
    """The one-line error for an output that could not be written because the disk (or quota) is full."""
    return RealmixError(f"{path}: {e.strerror or 'no space left on device'} while writing it; nothing was "
                        "changed there: free disk space (or raise the quota) and rerun")


def _tmp_sibling(path: Path) -> Path:
    return path.with_name(f".{path.name}{_TMP_MARK}{os.getpid()}-{uuid.uuid4().hex[:8]}")


def _remove_stale(path: Path) -> None:
    """Remove temporaries left by killed earlier writers of the same path."""
    if not path.parent.is_dir():
        return
    for p in path.parent.glob(f".{path.name}{_TMP_MARK}*"):
        _remove(p)


def remove_temporaries(directory: Path) -> None:
    """Remove every temporary that killed writers left in `directory` (none may be writing there now)."""
    if directory.is_dir():
        for p in directory.glob(f".*{_TMP_MARK}*"):
            _remove(p)


def _remove(path: Path) -> None:
    if path.is_dir() and not path.is_symlink():
        shutil.rmtree(path, ignore_errors=True)
    else:
        with contextlib.suppress(FileNotFoundError):
            path.unlink()


@contextlib.contextmanager
def atomic_path(path: str | os.PathLike, *, directory: bool = False) -> Iterator[Path]:
    """Yield a temporary path to write; on success it replaces `path`, on error it is removed.

    With `directory=True` the temporary path is created as an empty directory. Parent folders this creates
    are removed again on error, so a failed write leaves no trace.
    """
    path = Path(path)
    created = [p for p in (path.parent, *path.parent.parents) if not p.exists()]
    path.parent.mkdir(parents=True, exist_ok=True)
    _remove_stale(path)
    tmp = _tmp_sibling(path)
    if directory:
        tmp.mkdir()
    try:
        yield tmp
        replace(tmp, path)
    except BaseException as e:
        _remove(tmp)
        for p in created:  # innermost first; one that something else has filled meanwhile stays
            with contextlib.suppress(OSError):
                p.rmdir()
        # inside another output's temporary the error is reported by that output, under its final name
        if is_disk_full(e) and not any(_TMP_MARK in part for part in path.parent.parts):
            raise disk_full(path, e) from e
        raise


def replace(src: Path, dst: Path) -> None:
    """Move `src` onto `dst`; an existing directory at `dst` is swapped out first, then deleted."""
    if dst.is_dir() and not dst.is_symlink():
        old = _tmp_sibling(dst)
        os.replace(dst, old)
        os.replace(src, dst)
        _remove(old)
    else:
        os.replace(src, dst)


def write_bytes(path: str | os.PathLike, data: bytes) -> None:
    with atomic_path(path) as tmp:
        tmp.write_bytes(data)


def write_text(path: str | os.PathLike, text: str) -> None:
    write_bytes(path, text.encode("utf-8"))
