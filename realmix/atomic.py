"""Crash-safe output: write to a temporary sibling, then rename into place.

A stage killed mid-write leaves either the previous output or nothing, never a half-written file that
DVC or the next stage would trust.
"""

from __future__ import annotations

import contextlib
import os
import shutil
import uuid
from collections.abc import Iterator
from pathlib import Path

_TMP_MARK = ".tmp-"


def _tmp_sibling(path: Path) -> Path:
    return path.with_name(f".{path.name}{_TMP_MARK}{os.getpid()}-{uuid.uuid4().hex[:8]}")


def _remove_stale(path: Path) -> None:
    """Remove temporaries left by killed earlier writers of the same path."""
    if not path.parent.is_dir():
        return
    for p in path.parent.glob(f".{path.name}{_TMP_MARK}*"):
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

    With `directory=True` the temporary path is created as an empty directory.
    """
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    _remove_stale(path)
    tmp = _tmp_sibling(path)
    if directory:
        tmp.mkdir()
    try:
        yield tmp
        replace(tmp, path)
    except BaseException:
        _remove(tmp)
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
