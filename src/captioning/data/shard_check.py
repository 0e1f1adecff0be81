"""Shards checked against their manifest, by every stage that reads them.

manifest.json records each shard's byte count and sha256 (``shards.<name>``). What a reader
checks, and what it costs on COCO (~19 GB of shards, read by vocab, features, fine-tuning,
evaluate and register):

* Up front, before any work: every shard of the split is there with its recorded byte count
  (``listed_shards``). A stat per shard, free, and it catches what damages shards most often (a
  copy cut short, a full disk, a file swapped for another) before a stage spends hours.
* While reading: a shard is read front to back once, through ``ShardStream``, which feeds every
  byte to sha256 on its way to the tar reader; after the last member the rest of the file is
  read (the tar's end blocks) and the digest must be the manifest's (``finish``). No extra pass
  over the bytes: they are hashed as the stage reads them anyway, and sha256 is cheap next to
  decoding the JPEGs in them. The check comes at the end of each shard, before a stage keeps
  anything made from it: the features stage's last batch of a shard (which marks it done) is
  made after it, and the vocabulary and a fine-tuning epoch are only saved after all their
  shards passed.
* The vocab stage (and fine-tuning's count of draws) needs only the captions but reads its
  shards whole, where it used to seek over the images: one sequential read of the train split,
  ~450 MB/s from the page cache on this 2-core machine (the tar reader's overhead, not the
  hash: sha256 alone runs at 1.4 GB/s), so about 40 s for COCO's 18 GB or disk speed if
  slower; the first stage after ``shard`` then notices a damaged byte anywhere.
* A reader that stops early (register's input example, evaluate's gallery images) cannot check
  a digest; it gets the size check and the tar's own structure.
* A tar that does not read (a bad header, an unexpected end, a member that is not a sample) is
  reported the same way, at its byte offset.

Every failure is one line (``ShardError``) that names the shard, what was found, what the
manifest says, and the fix: re-run the shard stage. A manifest without these records (written
by hand, as some tests do) gets the structural checks only.
"""

from __future__ import annotations

import contextlib
import hashlib
import tarfile
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from captioning.errors import CaptioningError

RERUN = "re-run the shard stage (dvc repro -f shard)"
_READ_SIZE = 1 << 20


class ShardError(CaptioningError, ValueError):
    """A shard directory, manifest or shard that is missing, malformed or damaged."""


@dataclass(frozen=True)
class ShardFile:
    """A shard and what its manifest records of it (None: not recorded)."""

    path: Path
    size: int | None = None
    sha256: str | None = None
    count: int | None = None  # samples

    def check_size(self) -> None:
        try:
            found = self.path.stat().st_size
        except FileNotFoundError:
            raise ShardError(f"{self.path}: missing, the manifest lists it; {RERUN}") from None
        if self.size is not None and found != self.size:
            raise ShardError(
                f"{self.path}: {found} bytes, the manifest says {self.size}: "
                f"truncated or replaced; {RERUN}"
            )


def listed_shards(shard_dir: Path, manifest: dict[str, Any], split: str) -> list[ShardFile]:
    """The shards of ``split`` in manifest order (none for a split it lacks), each checked
    now to be there with its recorded size. ``manifest`` is read_manifest's."""
    where = shard_dir / "manifest.json"
    records = manifest.get("shards")
    records = records if isinstance(records, dict) else {}
    files = []
    for i, name in enumerate(manifest["splits"].get(split, {}).get("shards", [])):
        if not isinstance(name, str) or name in ("", ".", "..") or Path(name).name != name:
            raise ShardError(
                f"{where}: splits.{split}.shards[{i}] is {name!r}; expected a file name in "
                f"{shard_dir}"
            )
        record = records.get(name)
        record = record if isinstance(record, dict) else {}
        size, sha, count = record.get("bytes"), record.get("sha256"), record.get("count")
        for key, value, kind in (("bytes", size, int), ("sha256", sha, str), ("count", count, int)):
            if value is not None and (not isinstance(value, kind) or isinstance(value, bool)):
                raise ShardError(
                    f"{where}: shards.{name}.{key} is {value!r}; expected {kind.__name__}"
                )
        files.append(ShardFile(shard_dir / name, size, sha, count))
    for shard in files:
        shard.check_size()
    return files


class ShardStream:
    """A shard open for one front-to-back read; every byte read goes through sha256."""

    def __init__(self, shard: ShardFile) -> None:
        self.shard = shard
        self.name = str(shard.path)
        self.position = 0  # bytes read so far
        self._digest = hashlib.sha256()
        self._file = open(shard.path, "rb", buffering=_READ_SIZE)  # noqa: SIM115 (closed by reading())

    def read(self, size: int = -1) -> bytes:
        data = self._file.read(size)
        self._digest.update(data)
        self.position += len(data)
        return data

    def finish(self, samples: int | None = None) -> None:
        """After the last member: read the rest, then compare with the manifest (the samples
        read too, when the caller counted them)."""
        while self.read(_READ_SIZE):
            pass
        path, shard = self.shard.path, self.shard
        if shard.size is not None and self.position != shard.size:
            raise ShardError(
                f"{path}: read {self.position} bytes, the manifest says {shard.size}: "
                f"changed while read; {RERUN}"
            )
        found = self._digest.hexdigest()
        if shard.sha256 is not None and found != shard.sha256:
            raise ShardError(
                f"{path}: sha256 {found[:16]}..., the manifest says {shard.sha256[:16]}...: "
                f"damaged or replaced; {RERUN}"
            )
        if samples is not None and shard.count is not None and samples != shard.count:
            raise ShardError(
                f"{path}: {samples} samples, the manifest says {shard.count}: "
                f"damaged or replaced; {RERUN}"
            )

    def close(self) -> None:
        self._file.close()

    def __repr__(self) -> str:
        return f"ShardStream({self.name!r})"


@contextlib.contextmanager
def reading(shard: ShardFile) -> Iterator[ShardStream]:
    """``shard`` open for one read (call ``finish`` after its last member): an error of the tar
    in it, or a member that is not what the shard stage writes (a ValueError raised by the
    body), becomes a ShardError naming the shard and the byte offset."""
    stream = None
    try:
        stream = ShardStream(shard)
        yield stream
    except ShardError:
        raise
    except (tarfile.TarError, EOFError, OSError, ValueError) as exc:
        raise unreadable(shard.path, exc, stream.position if stream else 0) from None
    finally:
        if stream is not None:
            stream.close()


def sample_problem(record: Any) -> str | None:
    """What is wrong with a sample's JSON record for the readers (None: nothing)."""
    if not isinstance(record, dict):
        return "json member must be an object"
    image_id = record.get("image_id")
    if not isinstance(image_id, int) or isinstance(image_id, bool):
        return f"json image_id must be an integer, got {image_id!r}"
    captions = record.get("captions")
    if not isinstance(captions, list) or not all(isinstance(c, str) for c in captions):
        return "json captions must be a list of strings"
    return None


def unreadable(path: Path, exc: BaseException, position: int | None = None) -> ShardError:
    """The one-line error for a shard whose tar does not read."""
    at = f" at byte {position}" if position is not None else ""
    return ShardError(
        f"{path}: not a readable shard{at} ({_reason(exc)}): damaged or replaced; {RERUN}"
    )


def _reason(exc: BaseException) -> str:
    """The exception's own words. webdataset appends the stream and url to an exception's args
    (and " @ <stream>" to the first) as it passes: those are cut off."""
    if isinstance(exc, OSError) and exc.strerror:
        reason = exc.strerror
    elif exc.args:
        reason = str(exc.args[0]).split(" @ ", 1)[0]
    else:
        reason = type(exc).__name__
    return " ".join(reason.split())  # one line
