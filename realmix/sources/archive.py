"""Fetching, verifying and reading upstream dataset archives.

`fetch` finds an archive in the archive directory (the role `$ML_DATA` played) or downloads it from its
official URL, resumably, into `<name>.part`; only a file whose md5 matches ever gets the final name.
`open_tar` opens a tarball for reading *in place*: every member is checked before any byte is read, and
nothing is ever extracted to disk. Every user-facing problem is a one-line `RealmixError` that names the
file and says what to do.
"""

from __future__ import annotations

import gzip
import hashlib
import os
import tarfile
import urllib.error
import urllib.request
import zlib
from collections.abc import Callable, Iterable, Iterator
from dataclasses import dataclass
from http.client import HTTPException
from pathlib import Path
from typing import IO, Any

import numpy as np
from tqdm import tqdm

from ..errors import RealmixError

_BLOCK = 1 << 20  # bytes per read when hashing or downloading
_TIMEOUT_S = 60  # socket timeout: a stalled server fails with a clear error instead of hanging forever

# What a damaged compressed or tar stream raises (gzip.BadGzipFile and bz2/lzma errors are OSErrors).
_CORRUPT = (tarfile.TarError, EOFError, zlib.error, OSError)


@dataclass(frozen=True)
class ArchiveSpec:
    """One upstream file: its name in the archive directory, where to get it, and its official md5.

    `content_sha256`, for a gzip file only, is the sha256 of its decompressed contents: a file already in the
    archive directory whose md5 differs is still accepted when its contents match (the same data re-compressed,
    as Debian's dataset packages ship it). A download must always have the official md5.
    """

    filename: str
    url: str
    md5: str
    content_sha256: str | None = None


class DownloadError(RealmixError):
    """A download that failed on the network (`reason`); the file can still be placed by hand."""

    def __init__(self, message: str, reason: str):
        super().__init__(message)
        self.reason = reason


def _one_line(text: object) -> str:
    return " ".join(str(text).split())


def _place_hint(spec: ArchiveSpec, archive_dir: Path) -> str:
    return f"place {spec.filename} (md5 {spec.md5}, from {spec.url}) in {archive_dir}"


def md5_of(path: Path) -> str:
    """The md5 of a file, read in blocks (archives are up to a few GB)."""
    h = hashlib.md5(usedforsecurity=False)  # an integrity check against the published value, not security
    with open(path, "rb") as f:
        while block := f.read(_BLOCK):
            h.update(block)
    return h.hexdigest()


def verify_md5(path: Path, md5: str) -> None:
    """Raise a one-line RealmixError unless the file's md5 is `md5`."""
    actual = md5_of(path)
    if actual != md5.lower():
        raise RealmixError(
            f"{path}: md5 is {actual} but the official file has md5 {md5.lower()}; the file is damaged or "
            "not the official one: delete it and run again to download it, or place the official file there"
        )


def gunzip(path: Path) -> bytes:
    """The decompressed contents of a (small) gzip file; a damaged one is a one-line RealmixError."""
    with open(path, "rb") as f:
        try:
            return gzip.GzipFile(fileobj=f).read()
        except _CORRUPT as e:
            raise RealmixError(
                f"{path}: gzip file is truncated or corrupt ({_one_line(e) or type(e).__name__}); "
                "delete it and get it again (run again to download it, or reinstall the package it came from)"
            ) from e


def _verify_content(path: Path, spec: ArchiveSpec, content_sha256: str) -> bytes | None:
    """None when the md5 is the official one, else the decompressed contents if their sha256 is official."""
    actual = md5_of(path)
    if actual == spec.md5.lower():
        return None
    contents = gunzip(path)
    sha = hashlib.sha256(contents).hexdigest()
    if sha != content_sha256.lower():
        raise RealmixError(
            f"{path}: md5 is {actual} but the official file has md5 {spec.md5.lower()}, and its decompressed "
            f"contents have sha256 {sha} but the official contents have sha256 {content_sha256.lower()}; the file "
            "is damaged or not the official one: delete it and get it again (run again to download it, place the "
            "official file there, or reinstall the package it came from)"
        )
    return contents


def fetch(spec: ArchiveSpec, archive_dir: Path, download: bool) -> Path:
    """Return the verified path of `spec.filename` in `archive_dir`, downloading it when allowed.

    A download goes to `<filename>.part` and resumes from it when it exists; the file is renamed into
    place only after its md5 matched, so the final name never holds a partial or wrong file.
    """
    return fetch_contents(spec, archive_dir, download)[0]


def fetch_contents(spec: ArchiveSpec, archive_dir: Path, download: bool) -> tuple[Path, bytes | None]:
    """`fetch`, plus the decompressed contents when verifying needed them: a file present with another md5 but
    the official `content_sha256` (so its reader need not decompress it again); None when the md5 matched."""
    archive_dir = Path(archive_dir)
    path = archive_dir / spec.filename
    if path.is_file():
        if spec.content_sha256 is None:
            verify_md5(path, spec.md5)
            return path, None
        return path, _verify_content(path, spec, spec.content_sha256)
    if not download:
        raise RealmixError(
            f"{path}: archive not found and dataset.download is false; {_place_hint(spec, archive_dir)} "
            "or set dataset.download: true"
        )
    archive_dir.mkdir(parents=True, exist_ok=True)
    part = path.with_name(path.name + ".part")
    _download(spec, part, archive_dir)
    actual = md5_of(part)
    if actual != spec.md5.lower():
        part.unlink(missing_ok=True)  # resuming a wrong file would only grow it: start over next time
        raise RealmixError(
            f"{spec.url}: downloaded file has md5 {actual} but the official file has md5 {spec.md5.lower()}; "
            f"the download was removed: run again, or {_place_hint(spec, archive_dir)}"
        )
    os.replace(part, path)
    return path, None


def _download(spec: ArchiveSpec, part: Path, archive_dir: Path) -> None:
    """Download `spec.url` into `part`, appending to what an earlier, interrupted run left there."""
    if not spec.url.startswith(("https://", "http://")):
        raise RealmixError(f"{spec.url}: not an http(s) URL; {_place_hint(spec, archive_dir)}")
    have = part.stat().st_size if part.is_file() else 0
    headers = {"User-Agent": "realmix"}
    if have:
        headers["Range"] = f"bytes={have}-"
    request = urllib.request.Request(spec.url, headers=headers)
    total: int | None = None
    try:
        with urllib.request.urlopen(request, timeout=_TIMEOUT_S) as resp:
            got_range = str(resp.headers.get("Content-Range", ""))
            if resp.status == 206 and not got_range.startswith(f"bytes {have}-"):
                # A range we did not ask for cannot be spliced onto the .part: drop it, start over next time.
                part.unlink(missing_ok=True)
                raise HTTPException(f"server sent range {got_range!r}, not bytes {have}-")
            if resp.status != 206:
                have = 0  # the server ignored the Range header (200): its body is the whole file
            length = resp.headers.get("Content-Length")
            total = have + int(length) if length and length.isdigit() else None
            with (
                open(part, "ab" if have else "wb") as out,
                tqdm(
                    total=total, initial=have, unit="B", unit_scale=True, unit_divisor=1024,
                    desc=spec.filename, mininterval=1.0,
                ) as bar,
            ):
                while block := resp.read(_BLOCK):
                    out.write(block)
                    bar.update(len(block))
    except urllib.error.HTTPError as e:
        e.close()  # an HTTPError carries the open response; close it rather than leak the socket
        if e.code == 416 and have:
            return  # nothing left to send: the .part is probably complete; the md5 check decides
        raise _network_error(spec, archive_dir, f"HTTP {e.code} {e.reason}") from e
    except urllib.error.URLError as e:
        raise _network_error(spec, archive_dir, e.reason) from e
    except (HTTPException, OSError) as e:  # timeouts, resets, truncated bodies; also a full disk
        raise _network_error(spec, archive_dir, f"{type(e).__name__}: {e}") from e
    size = part.stat().st_size
    if total is not None and size != total:
        raise _network_error(spec, archive_dir, f"got {size} of {total} bytes")


def _network_error(spec: ArchiveSpec, archive_dir: Path, reason: object) -> DownloadError:
    return DownloadError(
        f"could not download {spec.url} ({_one_line(reason)}); run again to resume the download, "
        f"or {_place_hint(spec, archive_dir)}",
        _one_line(reason),
    )


# -- tarballs ------------------------------------------------------------------------------------------


def _unsafe(member: tarfile.TarInfo) -> bool:
    """Anything but a regular file or directory under a relative, `..`-free name is refused."""
    name = member.name
    if name.startswith(("/", "\\")) or (len(name) > 1 and name[1] == ":" and name[0].isalpha()):
        return True
    if ".." in name.replace("\\", "/").split("/"):
        return True
    return not (member.isfile() or member.isdir())


def _norm(name: str) -> str:
    """Member names as written by different tar tools: `./a/b`, `a/b` and `a/b/` are the same entry."""
    while name.startswith("./"):
        name = name[2:]
    return name.rstrip("/")


class TarArchive:
    """A tarball opened for reading in place, with every member validated up front.

    The member table is read once; the underlying file is (re)opened lazily by the readers and closed by
    `close()`, so several lazy subset streams can share one validated archive without leaking handles.
    """

    def __init__(self, path: Path):
        self.path = Path(path)
        self._tar: tarfile.TarFile | None = None
        try:
            self._tar = tarfile.open(self.path, "r:*")
            members = self._tar.getmembers()
        except _CORRUPT as e:
            self.close()
            raise self._corrupt(e) from e
        for m in members:
            if _unsafe(m):
                self.close()
                raise RealmixError(
                    f"{self.path}: archive contains unsafe member {m.name!r}; refusing to read it; "
                    "delete it and re-download the official archive"
                )
        self.members = {_norm(m.name): m for m in members if m.isfile()}
        self._stamp = self._stat()

    def _stat(self) -> tuple[int, int]:
        st = self.path.stat()
        return st.st_size, st.st_mtime_ns

    def _corrupt(self, e: BaseException) -> RealmixError:
        return RealmixError(
            f"{self.path}: archive is truncated or corrupt ({_one_line(e) or type(e).__name__}); "
            "delete it and download it again"
        )

    def _open(self) -> tarfile.TarFile:
        if self._tar is None:
            if self._stat() != self._stamp:
                raise RealmixError(f"{self.path}: archive changed while it was being read; run again")
            try:
                self._tar = tarfile.open(self.path, "r:*")
            except _CORRUPT as e:
                raise self._corrupt(e) from e
        return self._tar

    def close(self) -> None:
        if self._tar is not None:
            self._tar.close()
            self._tar = None

    def __enter__(self) -> TarArchive:
        return self

    def __exit__(self, *exc: Any) -> None:
        self.close()

    def member(self, name: str) -> tarfile.TarInfo:
        try:
            return self.members[_norm(name)]
        except KeyError:
            raise RealmixError(
                f"{self.path}: archive has no member {name!r}; it is truncated, corrupt or not the official "
                "archive: delete it and download it again"
            ) from None

    def size(self, name: str) -> int:
        return self.member(name).size

    def _fileobj(self, name: str) -> IO[bytes]:
        m = self.member(name)
        f = self._open().extractfile(m)  # a validated regular file: never None
        assert f is not None
        return f

    def read(self, name: str) -> bytes:
        """The whole content of a (small) member."""
        try:
            with self._fileobj(name) as f:
                data = f.read()
        except _CORRUPT as e:
            raise self._corrupt(e) from e
        if len(data) != self.size(name):
            raise self._corrupt(EOFError(f"{name}: {len(data)} of {self.size(name)} bytes"))
        return data

    def read_text(self, name: str) -> str:
        try:
            return self.read(name).decode("utf-8")
        except UnicodeDecodeError as e:
            raise self._corrupt(e) from e

    def iter_records(self, name: str, record_size: int, per_chunk: int) -> Iterator[np.ndarray]:
        """Stream a member of fixed-size records as uint8 arrays of at most `per_chunk` x `record_size`."""
        size = self.size(name)
        if size % record_size:
            raise RealmixError(
                f"{self.path}: member {name!r} has {size} bytes, not a multiple of the {record_size}-byte "
                "record; the archive is corrupt or not the official one: delete it and download it again"
            )
        left = size // record_size
        try:
            with self._fileobj(name) as f:
                while left:
                    n = min(per_chunk, left)
                    data = f.read(n * record_size)
                    if len(data) != n * record_size:
                        raise EOFError(f"{name} ends early")
                    left -= n
                    yield np.frombuffer(data, np.uint8).reshape(n, record_size)
        except _CORRUPT as e:
            raise self._corrupt(e) from e


def open_tar(path: Path) -> TarArchive:
    """Open and validate a tarball (any compression tarfile knows); see `TarArchive`."""
    return TarArchive(Path(path))


class Lazy:
    """A re-iterable stream of chunks: `factory()` is called afresh on every iteration.

    Readers return these so that opening and decoding a large file happens only while the store writer
    consumes that subset, one subset at a time.
    """

    def __init__(self, factory: Callable[[], Iterable[Any]]):
        self.factory = factory

    def __iter__(self) -> Iterator[Any]:
        return iter(self.factory())
