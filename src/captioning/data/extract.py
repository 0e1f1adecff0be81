"""Safe, all-or-nothing extraction of zip and tar archives.

Every entry is checked before anything is written: an absolute path, a ``..`` component, a
symbolic or hard link, or a device entry refuses the whole archive. Entries are written into a
temporary sibling of the target, which is renamed into place only when all of them are out,
so a killed or failed extraction never leaves a half-extracted tree where a finished one is
expected. A finished tree carries a stamp of its archive and is reused while the archive is
unchanged.
"""

from __future__ import annotations

import json
import logging
import shutil
import stat
import tarfile
import zipfile
import zlib
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from pathlib import Path, PurePosixPath
from typing import IO

from tqdm import tqdm

from captioning.data.layout import inside, name_problem
from captioning.errors import CaptioningError
from captioning.io import atomic_path

logger = logging.getLogger(__name__)

STAMP = ".extracted.json"
_TAR_SUFFIXES = (".tar", ".tar.gz", ".tgz", ".tar.bz2", ".tbz2", ".tar.xz", ".txz")


class ExtractError(CaptioningError, ValueError):
    """An archive that cannot be extracted safely."""


def is_archive(path: str | Path) -> bool:
    name = Path(path).name.lower()
    return name.endswith(".zip") or name.endswith(_TAR_SUFFIXES)


def archive_stem(path: str | Path) -> str:
    """``train2014.zip`` -> ``train2014``; ``flickr30k-images.tar.gz`` -> ``flickr30k-images``."""
    name = Path(path).name
    for suffix in (".zip", *_TAR_SUFFIXES):
        if name.lower().endswith(suffix):
            return name[: -len(suffix)]
    return name


def safe_extract(
    archive: str | Path, dest: str | Path, *, include: Callable[[str], bool] | None = None
) -> Path:
    """Extract ``archive`` into the directory ``dest`` (replaced as a whole); return ``dest``.

    ``include`` selects entries by their path inside the archive (default: all). An existing
    ``dest`` extracted from the same archive (same size and mtime) is reused as it is.
    """
    archive, dest = Path(archive), Path(dest)
    stamp = {
        "archive": archive.name,
        "size": archive.stat().st_size,
        "mtime_ns": archive.stat().st_mtime_ns,
    }
    if _read_stamp(dest) == stamp:
        logger.info("%s: already extracted to %s", archive.name, dest)
        return dest
    with _open(archive) as entries:
        members = [(name, kind, member) for name, kind, member in entries.list()]
        for name, kind, _ in members:
            _check_entry(archive, name, kind)
        chosen = [m for m in members if m[1] == "file" and (include is None or include(m[0]))]
        logger.info("extracting %d files from %s", len(chosen), archive.name)
        with atomic_path(dest) as tmp:
            tmp.mkdir()
            for name, _, member in tqdm(chosen, desc=f"extract {archive.name}", unit="file"):
                # The checks above make a refusal here unreachable.
                target = inside(tmp, str(_relative(name)), f"{archive}: entry")
                target.parent.mkdir(parents=True, exist_ok=True)
                with entries.open(member) as source, target.open("wb") as sink:
                    shutil.copyfileobj(source, sink, 1 << 20)
            (tmp / STAMP).write_text(json.dumps(stamp, sort_keys=True), encoding="utf-8")
    return dest


def _relative(name: str) -> PurePosixPath:
    return PurePosixPath(name.replace("\\", "/"))


def _check_entry(archive: Path, name: str, kind: str) -> None:
    if kind not in ("file", "dir"):
        raise ExtractError(
            f"{archive}: entry {name!r} is a {kind}; links and special files are refused"
        )
    # The same rule as for file names read from data files.
    problem = name_problem(name)
    if problem:
        raise ExtractError(f"{archive}: entry {name!r} {problem}; refused")


class _Entries:
    """The entries of a zip or tar archive: (name, kind, member) and a way to read one."""

    def __init__(self, archive: Path) -> None:
        self.archive = archive
        self._zip: zipfile.ZipFile | None = None
        self._tar: tarfile.TarFile | None = None
        try:
            if archive.name.lower().endswith(".zip"):
                self._zip = zipfile.ZipFile(archive)
            else:
                self._tar = tarfile.open(archive)  # noqa: SIM115 (closed by close())
        except (zipfile.BadZipFile, tarfile.TarError, OSError, EOFError) as exc:
            raise ExtractError(f"{archive}: not a readable archive ({exc})") from exc

    def list(self) -> Iterator[tuple[str, str, object]]:
        if self._zip is not None:
            for info in self._zip.infolist():
                # Unix file type in the high bits of external_attr (0 when made elsewhere).
                file_type = stat.S_IFMT(info.external_attr >> 16)
                if file_type == stat.S_IFLNK:
                    kind = "symbolic link"
                elif info.is_dir():
                    kind = "dir"
                elif file_type not in (0, stat.S_IFREG):
                    kind = "special file"
                else:
                    kind = "file"
                yield info.filename, kind, info
        else:
            assert self._tar is not None
            for member in self._tar.getmembers():
                if member.issym():
                    kind = "symbolic link"
                elif member.islnk():
                    kind = "hard link"
                elif member.isdir():
                    kind = "dir"
                elif member.isfile():
                    kind = "file"
                else:
                    kind = "special file"
                yield member.name, kind, member

    def open(self, member: object) -> IO[bytes]:
        if self._zip is not None:
            assert isinstance(member, zipfile.ZipInfo)
            return self._zip.open(member)
        assert self._tar is not None and isinstance(member, tarfile.TarInfo)
        handle = self._tar.extractfile(member)
        assert handle is not None
        return handle

    def close(self) -> None:
        for handle in (self._zip, self._tar):
            if handle is not None:
                handle.close()


@contextmanager
def _open(archive: Path) -> Iterator[_Entries]:
    if not is_archive(archive):
        raise ExtractError(
            f"{archive}: not a known archive type (.zip, {', '.join(_TAR_SUFFIXES)})"
        )
    entries = _Entries(archive)
    try:
        yield entries
    except (zipfile.BadZipFile, tarfile.TarError, EOFError, zlib.error) as exc:
        raise ExtractError(f"{archive}: damaged archive ({exc})") from exc
    finally:
        entries.close()


def _read_stamp(dest: Path) -> dict | None:
    try:
        return json.loads((dest / STAMP).read_text(encoding="utf-8"))
    except (FileNotFoundError, NotADirectoryError, json.JSONDecodeError):
        return None
