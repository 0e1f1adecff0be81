"""WebDataset shards: one sample per image, ``<key>.jpg`` + ``<key>.json`` with every caption.

The shards of a split are planned before any is written: records in splits.json order, a new
shard every ``max_count`` images or ``max_size_mb`` of source image bytes. A plan depends on
nothing but the dataset and the config, so shards can be written by parallel processes
(``workers``) and still come out byte-identical, and a killed run can resume.

Shards are written in a work directory beside the output (``.<out>.partial/``): each to a
temporary name, renamed when complete, then recorded with its fingerprint (what went in) and
sha256 (what came out). A re-run keeps every recorded shard whose fingerprint and sha256 still
match and writes the rest; the output directory appears, complete, in one rename at the end.

Bad images are handled here, where they enter: a missing, empty, truncated or corrupt file, a
file that is not an image, or a decompression bomb is skipped, counted and listed with its kind
and reason in ``manifest.json``; the run goes on. JPEG bytes pass through untouched unless the
image must be converted or resized (``data.images.shard_jpeg``). Captions that are blank, too
long or name no image are left out by ``load_dataset`` and counted by kind in the manifest's
``captions_skipped`` (present only when one was skipped).
"""

from __future__ import annotations

import hashlib
import io
import json
import logging
import os
import shutil
import tarfile
from collections import Counter
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from tqdm import tqdm

from captioning.config import ShardConfig
from captioning.data.images import MISSING, ImageDecodeError, shard_jpeg
from captioning.data.layout import (
    ImageRecord,
    describe_skips,
    inside,
    load_dataset,
    skip_counts,
)
from captioning.data.shard_check import (
    ShardError,
    ShardFile,
    listed_shards,
    reading,
    sample_problem,
)
from captioning.io import (
    atomic_path,
    file_digest,
    link_or_copy,
    read_json_input,
    read_json_object,
    write_json,
)
from captioning.processes import exclusive, run_each

logger = logging.getLogger(__name__)

# Fixed tar metadata so that the same input gives byte-identical shards (stable DVC hashes).
_TAR_MTIME = 0
# Bump when the bytes a shard holds for the same input change: recorded shards are then redone.
_FORMAT_VERSION = 2
_JSON_OVERHEAD = 512  # a sample's .json and tar headers, for planning by size


def sample_key(image_id: int) -> str:
    """WebDataset keys must not contain dots; zero-padding keeps lexical = numeric order."""
    return f"{image_id:012d}"


@dataclass(frozen=True)
class ShardPlan:
    """One shard to write: which records go in, and a fingerprint of all that decides its bytes."""

    split: str
    index: int
    records: tuple[ImageRecord, ...]
    fingerprint: str

    @property
    def name(self) -> str:
        return f"{self.split}-{self.index:06d}"


def plan_shards(
    dataset: dict[str, list[ImageRecord]], images_dir: Path, cfg: ShardConfig
) -> list[ShardPlan]:
    """Cut every split into shards by count and by source bytes, in splits.json order."""
    max_bytes = int(cfg.max_size_mb * 1024 * 1024)
    settings = [_FORMAT_VERSION, cfg.max_side, cfg.jpeg_quality]
    plans: list[ShardPlan] = []
    for split, records in dataset.items():
        groups: list[list[tuple[ImageRecord, list[int]]]] = []
        group_bytes = 0
        for record in records:
            stamp = _file_stamp(images_dir / record.file_name)
            size = stamp[0] + _JSON_OVERHEAD
            if not groups or len(groups[-1]) >= cfg.max_count or group_bytes + size > max_bytes:
                groups.append([])
                group_bytes = 0
            groups[-1].append((record, stamp))
            group_bytes += size
        for index, group in enumerate(groups):
            digest = hashlib.sha256(json.dumps(settings).encode())
            for record, stamp in group:
                digest.update(json.dumps([_meta(record), stamp], sort_keys=True).encode())
            records_ = tuple(record for record, _ in group)
            plans.append(ShardPlan(split, index, records_, digest.hexdigest()))
    return plans


def write_shards(raw_dir: str | Path, out_dir: str | Path, cfg: ShardConfig) -> dict[str, Any]:
    """Shard every split of the dataset in ``raw_dir`` into ``out_dir``; return the manifest."""
    raw_dir, out_dir = Path(raw_dir), Path(out_dir)
    captions_skipped: Counter[str] = Counter()
    dataset = load_dataset(raw_dir, captions_skipped)
    images_dir = raw_dir / "images"
    plans = plan_shards(dataset, images_dir, cfg)
    work = out_dir.parent / f".{out_dir.name}.partial"
    # One run at a time, and not while a killed run's workers may still write (processes.py).
    with exclusive(work):
        work.mkdir(parents=True, exist_ok=True)
        _remove_strays(work, plans)
        done = _run(plans, images_dir, work, cfg)
        manifest, final_names = _manifest(dataset, plans, done, cfg, captions_skipped)
        with atomic_path(out_dir) as tmp:
            tmp.mkdir()
            for name, final in final_names.items():
                link_or_copy(work / f"{name}.tar", tmp / final)
            write_json(tmp / "manifest.json", manifest)
        shutil.rmtree(work, ignore_errors=True)
    for split, info in manifest["splits"].items():
        logger.info(
            "%s: %d images in %d shards (%d re-encoded), %d skipped",
            split,
            info["count"],
            len(info["shards"]),
            info["reencoded"],
            info["skipped"],
        )
    for skip in manifest["skipped"][:20]:
        logger.warning("skipped %s (%s): %s", skip["file_name"], skip["split"], skip["reason"])
    if "captions_skipped" in manifest:
        logger.warning("captions skipped: %s", describe_skips(manifest["captions_skipped"]))
    return manifest


def write_shard(plan: ShardPlan, images_dir: Path, work: Path, cfg: ShardConfig) -> dict:
    """Write one planned shard into ``work`` (or keep it if already done); return its record."""
    tar_path = work / f"{plan.name}.tar"
    record_path = work / f"{plan.name}.json"
    previous = read_json_object(record_path)
    if (
        previous.get("fingerprint") == plan.fingerprint
        and tar_path.is_file()
        and file_digest(tar_path) == previous.get("sha256")
    ):
        return {**previous, "resumed": True}
    record_path.unlink(missing_ok=True)
    tmp = work / f"{plan.name}.tar.tmp"
    count, reencoded, skipped = 0, 0, []
    with tmp.open("wb") as handle, tarfile.open(fileobj=handle, mode="w") as tar:
        for record in plan.records:
            sample, problem = _make_sample(images_dir, record, cfg)
            if sample is None:
                skipped.append(problem)
                continue
            key = sample_key(record.image_id)
            _add_member(tar, f"{key}.jpg", sample["jpg"])
            _add_member(tar, f"{key}.json", sample["json"])
            count += 1
            reencoded += sample["reencoded"]
        tar.close()
        handle.flush()
        os.fsync(handle.fileno())
    os.replace(tmp, tar_path)
    result = {
        "fingerprint": plan.fingerprint,
        "sha256": file_digest(tar_path),
        "count": count,
        "reencoded": reencoded,
        "skipped": skipped,
        "bytes": tar_path.stat().st_size,
    }
    write_json(record_path, result)
    return {**result, "resumed": False}


def _run(plans: list[ShardPlan], images_dir: Path, work: Path, cfg: ShardConfig) -> dict:
    workers = min(cfg.workers or _cpu_count(), max(len(plans), 1))
    done: dict[str, dict] = {}
    total = sum(len(plan.records) for plan in plans)
    with tqdm(total=total, desc="shard", unit="img") as progress:
        for plan, record in run_each(write_shard, plans, (images_dir, work, cfg), workers):
            done[plan.name] = record
            progress.update(len(plan.records))
    resumed = sum(record["resumed"] for record in done.values())
    if resumed:
        logger.info("resumed: %d of %d shards were already complete", resumed, len(plans))
    return done


def _manifest(
    dataset: dict[str, list[ImageRecord]],
    plans: list[ShardPlan],
    done: dict[str, dict],
    cfg: ShardConfig,
    captions_skipped: Counter[str],
) -> tuple[dict[str, Any], dict[str, str]]:
    """The manifest, and the final name of every planned shard that holds samples."""
    final_names: dict[str, str] = {}
    manifest: dict[str, Any] = {
        "splits": {},
        "shards": {},
        "skipped": [],
        "config": {
            "max_count": cfg.max_count,
            "max_size_mb": cfg.max_size_mb,
            "max_side": cfg.max_side,
            "jpeg_quality": cfg.jpeg_quality,
        },
    }
    # Only when a caption was skipped: the manifest of clean input stays as it was (DVC hashes).
    if skip_counts(captions_skipped):
        manifest["captions_skipped"] = skip_counts(captions_skipped)
    for split in dataset:
        manifest["splits"][split] = {"count": 0, "reencoded": 0, "skipped": 0, "shards": []}
    for plan in plans:
        record = done[plan.name]
        entry = manifest["splits"][plan.split]
        entry["count"] += record["count"]
        entry["reencoded"] += record["reencoded"]
        entry["skipped"] += len(record["skipped"])
        manifest["skipped"].extend(record["skipped"])
        if record["count"]:
            # Empty shards (every image skipped) are left out; names stay consecutive.
            final = f"{plan.split}-{len(entry['shards']):06d}.tar"
            final_names[plan.name] = final
            entry["shards"].append(final)
            manifest["shards"][final] = {
                "split": plan.split,
                "count": record["count"],
                "bytes": record["bytes"],
                "sha256": record["sha256"],
            }
    return manifest, final_names


def _make_sample(
    images_dir: Path, record: ImageRecord, cfg: ShardConfig
) -> tuple[dict | None, dict]:
    # load_dataset checked the name; checked again where the file is opened.
    path = inside(images_dir, record.file_name, f"{images_dir}: image {record.image_id}")

    def skip(kind: str, reason: str) -> tuple[None, dict]:
        return None, {
            "image_id": record.image_id,
            "file_name": record.file_name,
            "split": record.split,
            "kind": kind,
            "reason": reason,
        }

    if not record.captions and record.split == "train":
        return skip("no captions", "no captions")
    if not path.is_file():
        return skip(MISSING, "missing file: named in captions.json but not found in images/")
    try:
        jpg, reencoded = shard_jpeg(
            path.read_bytes(),
            name=str(path),
            max_side=cfg.max_side,
            quality=cfg.jpeg_quality,
        )
    except ImageDecodeError as exc:
        return skip(exc.kind, exc.reason)
    meta = json.dumps(_meta(record), sort_keys=True).encode("utf-8")
    return {"jpg": jpg, "json": meta, "reencoded": reencoded}, {}


def _meta(record: ImageRecord) -> dict[str, Any]:
    return {
        "image_id": record.image_id,
        "file_name": record.file_name,
        "split": record.split,
        "captions": list(record.captions),
        **record.extra,
    }


def _add_member(tar: tarfile.TarFile, name: str, data: bytes) -> None:
    info = tarfile.TarInfo(name)
    info.size = len(data)
    info.mtime = _TAR_MTIME
    info.mode = 0o444
    tar.addfile(info, io.BytesIO(data))


def _cpu_count() -> int:
    if hasattr(os, "sched_getaffinity"):
        return len(os.sched_getaffinity(0))  # the cores this process may use
    return os.cpu_count() or 1


def _file_stamp(path: Path) -> list[int]:
    try:
        stat = path.stat()
    except OSError:
        return [0, 0]
    return [stat.st_size, stat.st_mtime_ns]


def _remove_strays(work: Path, plans: list[ShardPlan]) -> None:
    """Delete what an earlier run left that is not part of this plan (e.g. half-written tars)."""
    names = {plan.name for plan in plans}
    for path in work.iterdir():
        if path.name.split(".", 1)[0] not in names or path.name.endswith(".tmp"):
            path.unlink() if path.is_file() else shutil.rmtree(path)


def read_manifest(shard_dir: str | Path) -> dict[str, Any]:
    """The manifest of a shard directory, checked: every split lists its shards."""
    path = Path(shard_dir) / "manifest.json"
    manifest = read_json_input(path, "shard manifest not found; run the shard stage", ShardError)
    splits = manifest.get("splits") if isinstance(manifest, dict) else None
    if not isinstance(splits, dict) or not splits:
        raise ShardError(f"{path}: expected a non-empty 'splits' mapping")
    for split, entry in splits.items():
        if not isinstance(entry, dict) or not isinstance(entry.get("shards"), list):
            raise ShardError(f"{path}: splits.{split} needs a 'shards' list")
    return manifest


def split_shards(shard_dir: str | Path, split: str) -> list[ShardFile]:
    """The shards of ``split`` as the manifest lists them, each there with its recorded size."""
    shard_dir = Path(shard_dir)
    return listed_shards(shard_dir, read_manifest(shard_dir), split)


def iter_samples(
    shard_dir: str | Path, split: str, *, images: bool = True
) -> Iterator[tuple[dict[str, Any], bytes | None]]:
    """(json, jpeg bytes) of every sample of a split, in shard order, read with plain tarfile.

    Every shard is checked against the manifest (shard_check.py): all sizes before the first
    sample, and each shard read to its end against its sha256 and sample count. A shard is
    read whole even when ``images`` is False (the bytes are hashed, not decoded).
    """
    for shard in split_shards(shard_dir, split):
        with reading(shard) as stream, tarfile.open(fileobj=stream, mode="r|*") as tar:
            pending: dict[str, dict[str, bytes]] = {}
            samples = 0
            for member in tar:  # a stream: each member's data is read before the next header
                key, _, ext = member.name.partition(".")
                if ext not in ("json", "jpg") or (ext == "jpg" and not images):
                    continue
                handle = tar.extractfile(member)
                if handle is None:
                    raise ValueError(f"member {member.name}: not a regular file")
                entry = pending.setdefault(key, {})
                entry[ext] = handle.read()
                if "json" in entry and ("jpg" in entry or not images):
                    done = pending.pop(key)
                    samples += 1
                    yield _sample_json(member.name, done["json"]), done.get("jpg")
            stream.finish(samples)


def _sample_json(name: str, data: bytes) -> dict[str, Any]:
    """A sample's record; a ValueError (which ``reading`` reports) if it is not one."""
    try:
        meta = json.loads(data)
    except ValueError as exc:  # JSONDecodeError, UnicodeDecodeError
        raise ValueError(f"member {name}: not valid JSON ({exc})") from None
    problem = sample_problem(meta)
    if problem is not None:
        raise ValueError(f"member {name}: {problem}")
    return meta


def split_captions(shards_dir: str | Path, split: str) -> Iterator[str]:
    """Every caption of ``split``, in shard order, without decoding an image."""
    for meta, _ in iter_samples(shards_dir, split, images=False):
        yield from meta["captions"]
