"""Atomic file and directory writes: a killed stage leaves the old output or the new one."""

from __future__ import annotations

import hashlib
import json
import os
import shutil
import tempfile
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

from captioning.errors import BadInputError, CaptioningError, MissingFileError


@contextmanager
def atomic_path(target: str | Path) -> Iterator[Path]:
    """Yield a temporary sibling path; on success it replaces ``target`` (file or directory)."""
    target = Path(target)
    target.parent.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(prefix=f".{target.name}.", suffix=".tmp", dir=target.parent))
    tmp.rmdir()  # the caller creates a file or a directory here
    try:
        yield tmp
        replace_path(tmp, target)
    finally:
        if tmp.is_dir():
            shutil.rmtree(tmp, ignore_errors=True)
        elif tmp.exists():
            tmp.unlink()


def replace_path(tmp: Path, target: Path) -> None:
    """Move ``tmp`` (file or directory) to ``target``, replacing what is there."""
    if tmp.is_dir() and target.exists():
        # Directories cannot be swapped in one rename: move the old one aside first.
        old = target.with_name(f".{target.name}.old")
        if old.exists():
            shutil.rmtree(old) if old.is_dir() else old.unlink()
        os.replace(target, old)
        os.replace(tmp, target)
        shutil.rmtree(old, ignore_errors=True) if old.is_dir() else old.unlink(missing_ok=True)
    else:
        os.replace(tmp, target)


def write_json(path: str | Path, data: Any) -> None:
    """Write JSON atomically, sorted and indented so that diffs and hashes are stable."""
    with atomic_path(path) as tmp:
        tmp.write_text(json.dumps(data, indent=2, sort_keys=True) + "\n", encoding="utf-8")


def write_text(path: str | Path, text: str) -> None:
    with atomic_path(path) as tmp:
        tmp.write_text(text, encoding="utf-8")


def read_json_input(
    path: str | Path, missing: str, error: type[CaptioningError] | None = None
) -> Any:
    """The JSON in ``path``, a file a step needs: a missing one fails as "<path>: <missing>"
    (say what writes it), invalid JSON with the parser's message; both as ``error``, or as
    MissingFileError and BadInputError."""
    try:
        return json.loads(Path(path).read_text(encoding="utf-8"))
    except FileNotFoundError:
        raise (error or MissingFileError)(f"{path}: {missing}") from None
    except json.JSONDecodeError as exc:
        raise (error or BadInputError)(f"{path}: not valid JSON ({exc})") from exc


def read_json_object(path: str | Path) -> dict[str, Any]:
    """A JSON object from ``path``, or ``{}`` if the file is missing or not a JSON object.

    For bookkeeping files (resume records, verification caches) that are safe to rebuild.
    """
    try:
        data = json.loads(Path(path).read_text(encoding="utf-8"))
    except (FileNotFoundError, json.JSONDecodeError):
        return {}
    return data if isinstance(data, dict) else {}


def file_digest(path: str | Path, algorithm: str = "sha256") -> str:
    """Hex digest of a file, read in 1 MB chunks."""
    digest = hashlib.new(algorithm)
    with Path(path).open("rb") as handle:
        for chunk in iter(lambda: handle.read(1 << 20), b""):
            digest.update(chunk)
    return digest.hexdigest()


def link_or_copy(source: str | Path, target: str | Path) -> None:
    """A hard link (no second copy of a large file) or, across file systems, a copy."""
    try:
        os.link(source, target)
    except OSError:
        shutil.copyfile(source, target)
