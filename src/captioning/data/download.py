"""Downloads that survive interruptions, and local files checked the same way.

A download streams to ``<dest>.part`` with progress (bytes, rate, ETA), resumes an interrupted
``.part`` with an HTTP Range request, retries transient errors with exponential backoff, checks
the size and checksum, and only then renames ``.part`` to ``<dest>``: a file at ``dest`` is
always complete. A file that fails its checksum is deleted, never used. Verified files are
remembered (size, mtime, checksum) in ``verified.json`` beside the downloads, so a re-run with
complete files neither downloads nor re-hashes anything.

Standard library only (urllib): no extra dependency for the one thing that talks to the network.
"""

from __future__ import annotations

import hashlib
import http.client
import logging
import os
import time
import urllib.error
import urllib.request
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any
from urllib.parse import unquote, urlsplit

from tqdm import tqdm

from captioning.config import CHECKSUM_PATTERN
from captioning.errors import CaptioningError
from captioning.io import file_digest, read_json_object, write_json

logger = logging.getLogger(__name__)

CHUNK_BYTES = 1 << 20
VERIFIED_FILE = "verified.json"
# HTTP statuses worth another try; anything else (404, 403, ...) fails at once.
_TRANSIENT_STATUS = {408, 425, 429, 500, 502, 503, 504}
_USER_AGENT = "captioning-fetch/0.1 (+urllib)"


class DownloadError(CaptioningError, RuntimeError):
    """A download or a local file that cannot be had, or is not the file expected."""


@dataclass(frozen=True)
class Expected:
    """What a file must be: its size in bytes and ``<algorithm>:<hex>`` checksum, where known."""

    size: int | None = None
    checksum: str | None = None

    def __post_init__(self) -> None:
        if self.checksum is not None and not CHECKSUM_PATTERN.match(self.checksum):
            raise ValueError(f"checksum {self.checksum!r}: expected '<sha256|sha1|md5>:<hex>'")

    @property
    def algorithm(self) -> str:
        return self.checksum.split(":", 1)[0] if self.checksum else "sha256"


def apply_mirror(url: str, mirror: str) -> str:
    """``http://host/path`` -> ``<mirror>/host/path``; other locations are left alone."""
    parts = urlsplit(url)
    if not mirror or parts.scheme not in ("http", "https"):
        return url
    return f"{mirror.rstrip('/')}/{parts.netloc}{parts.path}"


def acquire(
    location: str,
    downloads_dir: str | Path,
    *,
    expected: Expected = Expected(),
    mirror: str = "",
    **download_options: Any,
) -> Path:
    """A verified local file for ``location``: a URL (downloaded) or a local path (used in place).

    With a mirror, http(s) URLs are re-pointed at it first; a mirror that is a local directory
    (or ``file://`` URL) serves the files in place.
    """
    downloads_dir = Path(downloads_dir)
    location = apply_mirror(location, mirror)
    parts = urlsplit(location)
    if parts.scheme in ("http", "https"):
        dest = downloads_dir / parts.netloc.replace(":", "_") / unquote(parts.path).lstrip("/")
        return download(location, dest, expected=expected, **download_options)
    path = Path(unquote(parts.path)) if parts.scheme == "file" else Path(location).expanduser()
    if not path.exists():
        raise DownloadError(f"{location}: no such file or directory")
    if path.is_file():
        verify_file(path, expected, downloads_dir / VERIFIED_FILE)
    return path


def download(
    url: str,
    dest: str | Path,
    *,
    expected: Expected = Expected(),
    retries: int = 5,
    backoff_s: float = 2.0,
    timeout_s: float = 60.0,
    sleep: Callable[[float], None] | None = None,
) -> Path:
    """Download ``url`` to ``dest`` (resuming ``dest.part``); return ``dest`` once verified.

    ``retries`` counts consecutive failed attempts: an attempt that received bytes resets it.
    """
    dest = Path(dest)
    record = dest.parent / VERIFIED_FILE
    if dest.is_file():
        if _is_verified(dest, expected, record):
            logger.info("%s: already downloaded and verified", dest)
            return dest
        try:
            verify_file(dest, expected, record)
            return dest
        except DownloadError as exc:
            logger.warning("%s; downloading it again", exc)
            dest.unlink()
    dest.parent.mkdir(parents=True, exist_ok=True)
    part = dest.with_name(dest.name + ".part")
    digest = _Digest(part, expected.algorithm)
    if expected.size is not None and digest.size > expected.size:
        digest.restart()
    failures = 0
    started = time.monotonic()
    first_byte = digest.size
    while True:
        before = digest.size
        try:
            complete = _attempt(url, part, digest, expected, timeout_s)
        except _Transient as exc:
            failures = 0 if digest.size > before else failures + 1
            if failures > retries:
                raise DownloadError(
                    f"{url}: giving up after {retries} retries without progress: {exc}; "
                    f"{digest.size} bytes kept in {part}, a re-run resumes from there"
                ) from None
            delay = min(backoff_s * 2 ** max(failures - 1, 0), 60.0)
            logger.warning("%s: %s at byte %d; retrying in %.1f s", url, exc, digest.size, delay)
            (sleep or time.sleep)(delay)
            continue
        if complete:
            break
    _check(url, part, digest, expected)
    with part.open("rb+") as handle:
        os.fsync(handle.fileno())
    os.replace(part, dest)
    _remember(dest, f"{digest.algorithm}:{digest.hexdigest()}", record)
    elapsed = max(time.monotonic() - started, 1e-9)
    logger.info(
        "%s: %d bytes in %.1f s (%.1f MB/s), %s:%s",
        dest.name,
        digest.size,
        elapsed,
        (digest.size - first_byte) / elapsed / 1e6,
        digest.algorithm,
        digest.hexdigest(),
    )
    return dest


def verify_file(path: Path, expected: Expected, record: Path) -> None:
    """Check a complete local file against ``expected`` (skipped if already verified as is)."""
    if _is_verified(path, expected, record):
        return
    size = path.stat().st_size
    if expected.size is not None and size != expected.size:
        raise DownloadError(f"{path}: {size} bytes, expected {expected.size}")
    if expected.checksum is None:
        return
    logger.info("%s: verifying %s", path, expected.algorithm)
    found = f"{expected.algorithm}:{file_digest(path, expected.algorithm)}"
    if found != expected.checksum:
        raise DownloadError(
            f"{path}: checksum mismatch: expected {expected.checksum}, found {found}"
        )
    _remember(path, found, record)


class _Transient(Exception):
    """A failure worth retrying (connection dropped, timeout, 5xx, short body)."""


class _Digest:
    """The bytes of ``part`` so far and their running hash: appended to in step."""

    def __init__(self, part: Path, algorithm: str) -> None:
        self.part = part
        self.algorithm = algorithm
        self._hash = hashlib.new(algorithm)
        self.size = 0
        if part.is_file():
            # Resuming: hash what is already there so the result covers the whole file.
            with part.open("rb") as handle:
                for chunk in iter(lambda: handle.read(CHUNK_BYTES), b""):
                    self.update(chunk)

    def update(self, chunk: bytes) -> None:
        self._hash.update(chunk)
        self.size += len(chunk)

    def restart(self) -> None:
        self.part.unlink(missing_ok=True)
        self._hash = hashlib.new(self.algorithm)
        self.size = 0

    def hexdigest(self) -> str:
        return self._hash.hexdigest()


def _attempt(url: str, part: Path, digest: _Digest, expected: Expected, timeout_s: float) -> bool:
    """One request: append what the server sends to ``part``. True when the file is complete."""
    offset = digest.size
    headers = {"User-Agent": _USER_AGENT}
    if offset:
        headers["Range"] = f"bytes={offset}-"
    request = urllib.request.Request(url, headers=headers)
    try:
        response = urllib.request.urlopen(request, timeout=timeout_s)
    except urllib.error.HTTPError as exc:
        if exc.code == 416 and offset and offset in (expected.size, _range_total(exc.headers)):
            return True  # the .part was complete already
        if exc.code == 416:
            logger.warning("%s: server refused to resume at byte %d; starting over", url, offset)
            digest.restart()
            raise _Transient("range not satisfiable") from None
        if exc.code in _TRANSIENT_STATUS:
            raise _Transient(f"HTTP {exc.code} {exc.reason}") from None
        raise DownloadError(f"{url}: HTTP {exc.code} {exc.reason}") from None
    except (urllib.error.URLError, OSError, http.client.HTTPException) as exc:
        raise _Transient(_describe(exc)) from None
    with response:
        length = response.headers.get("Content-Length")
        if offset and response.status == 206:
            start = _range_start(response.headers.get("Content-Range", ""))
            if start != offset:
                logger.warning(
                    "%s: server resumed at byte %s, not %d; starting over", url, start, offset
                )
                digest.restart()
                raise _Transient("unexpected Content-Range")
        elif offset:
            logger.info("%s: server ignored the Range request; starting over", url)
            digest.restart()
            offset = 0
        total = offset + int(length) if length is not None else None
        if total is not None and expected.size is not None and total != expected.size:
            raise DownloadError(
                f"{url}: the server offers {total} bytes, expected {expected.size}; "
                "wrong URL or mirror, or a checksum param that needs updating"
            )
        if offset:
            logger.info("%s: resuming at byte %d", url, offset)
        with (
            part.open("ab") as sink,
            tqdm(
                total=total,
                initial=offset,
                unit="B",
                unit_scale=True,
                unit_divisor=1024,
                desc=part.name.removesuffix(".part"),
            ) as progress,
        ):
            try:
                for chunk in iter(lambda: response.read(CHUNK_BYTES), b""):
                    sink.write(chunk)
                    digest.update(chunk)
                    progress.update(len(chunk))
            except (OSError, http.client.HTTPException) as exc:
                raise _Transient(_describe(exc)) from None
    if total is not None and digest.size < total:
        # urllib returns a short body silently when the connection drops: check the count.
        raise _Transient(f"connection closed after {digest.size} of {total} bytes")
    return True


def _check(url: str, part: Path, digest: _Digest, expected: Expected) -> None:
    problem = None
    if expected.size is not None and digest.size != expected.size:
        problem = f"{digest.size} bytes, expected {expected.size}"
    found = f"{digest.algorithm}:{digest.hexdigest()}"
    if problem is None and expected.checksum is not None and found != expected.checksum:
        problem = f"checksum mismatch: expected {expected.checksum}, found {found}"
    if problem is not None:
        part.unlink(missing_ok=True)
        raise DownloadError(f"{url}: {problem}; the download was deleted and is not used")


def _range_start(content_range: str) -> int | None:
    # "bytes 100-199/200"
    try:
        return int(content_range.split()[1].split("-")[0])
    except (IndexError, ValueError):
        return None


def _range_total(headers: Any) -> int | None:
    # A 416 answer says the full size: "bytes */200".
    try:
        return int((headers.get("Content-Range") or "").rpartition("/")[2])
    except ValueError:
        return None


def _describe(exc: BaseException) -> str:
    if isinstance(exc, urllib.error.URLError) and not isinstance(exc, urllib.error.HTTPError):
        return f"{type(exc.reason).__name__}: {exc.reason}"
    return f"{type(exc).__name__}: {exc}" if str(exc) else type(exc).__name__


def _stamp(path: Path) -> dict[str, int]:
    stat = path.stat()
    return {"size": stat.st_size, "mtime_ns": stat.st_mtime_ns}


def _is_verified(path: Path, expected: Expected, record: Path) -> bool:
    entry = read_json_object(record).get(str(path.resolve()))
    if not isinstance(entry, dict) or {k: entry.get(k) for k in ("size", "mtime_ns")} != _stamp(
        path
    ):
        return False
    if expected.size is not None and entry["size"] != expected.size:
        return False
    return expected.checksum is None or entry.get("checksum") == expected.checksum


def _remember(path: Path, checksum: str, record: Path) -> None:
    data = read_json_object(record)
    data[str(path.resolve())] = {**_stamp(path), "checksum": checksum}
    write_json(record, data)
