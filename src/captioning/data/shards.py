"""WebDataset shards: one sample per image, ``<key>.jpg`` + ``<key>.json`` with every caption.

Bad images are handled here, where they enter: a missing, empty or undecodable file is skipped,
counted and listed with its reason in ``manifest.json``; the run goes on.
"""

from __future__ import annotations

import hashlib
import io
import json
import logging
import tarfile
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import webdataset as wds
from PIL import Image
from tqdm import tqdm

from captioning.config import ShardConfig
from captioning.data.images import ImageDecodeError, load_rgb
from captioning.data.layout import ImageRecord, load_dataset
from captioning.errors import CaptioningError
from captioning.io import atomic_path, write_json

logger = logging.getLogger(__name__)

# Fixed tar mtime so that the same input gives byte-identical shards (stable DVC hashes).
_TAR_MTIME = 0.0


def sample_key(image_id: int) -> str:
    """WebDataset keys must not contain dots; zero-padding keeps lexical = numeric order."""
    return f"{image_id:012d}"


@dataclass
class _SplitResult:
    shards: list[str] = field(default_factory=list)
    count: int = 0
    skipped: list[dict[str, Any]] = field(default_factory=list)


def write_shards(raw_dir: str | Path, out_dir: str | Path, cfg: ShardConfig) -> dict[str, Any]:
    """Shard every split of the dataset in ``raw_dir`` into ``out_dir``; return the manifest."""
    raw_dir, out_dir = Path(raw_dir), Path(out_dir)
    dataset = load_dataset(raw_dir)
    manifest: dict[str, Any] = {"splits": {}, "shards": {}, "skipped": []}
    with atomic_path(out_dir) as tmp:
        tmp.mkdir()
        for split, records in dataset.items():
            result = _write_split(raw_dir / "images", tmp, split, records, cfg)
            manifest["splits"][split] = {
                "count": result.count,
                "skipped": len(result.skipped),
                "shards": result.shards,
            }
            manifest["skipped"].extend(result.skipped)
            for name in result.shards:
                manifest["shards"][name] = {"sha256": _sha256(tmp / name)}
        write_json(tmp / "manifest.json", manifest)
    for split, info in manifest["splits"].items():
        logger.info(
            "%s: %d images in %d shards, %d skipped",
            split,
            info["count"],
            len(info["shards"]),
            info["skipped"],
        )
    for skip in manifest["skipped"][:20]:
        logger.warning("skipped %s (%s): %s", skip["file_name"], skip["split"], skip["reason"])
    return manifest


def _write_split(
    images_dir: Path, out_dir: Path, split: str, records: list[ImageRecord], cfg: ShardConfig
) -> _SplitResult:
    result = _SplitResult()
    max_bytes = int(cfg.max_size_mb * 1024 * 1024)
    writer: wds.TarWriter | None = None
    in_shard, shard_bytes = 0, 0
    try:
        for record in tqdm(records, desc=f"shard {split}", unit="img", mininterval=2.0):
            sample, reason = _make_sample(images_dir, record)
            if sample is None:
                result.skipped.append(
                    {
                        "image_id": record.image_id,
                        "file_name": record.file_name,
                        "split": split,
                        "reason": reason,
                    }
                )
                continue
            size = len(sample["jpg"]) + len(sample["json"])
            if writer is None or in_shard >= cfg.max_count or shard_bytes + size > max_bytes:
                if writer is not None:
                    writer.close()
                name = f"{split}-{len(result.shards):06d}.tar"
                writer = wds.TarWriter(str(out_dir / name), mtime=_TAR_MTIME)
                result.shards.append(name)
                in_shard, shard_bytes = 0, 0
            writer.write(sample)
            in_shard += 1
            shard_bytes += size
            result.count += 1
    finally:
        if writer is not None:
            writer.close()
    return result


def _make_sample(images_dir: Path, record: ImageRecord) -> tuple[dict | None, str]:
    path = images_dir / record.file_name
    if not record.captions and record.split == "train":
        return None, "no captions"
    if not path.is_file():
        return None, "missing file: named in captions.json but not found in images/"
    data = path.read_bytes()
    try:
        image = load_rgb(data, name=str(path))
    except ImageDecodeError as exc:
        return None, str(exc).removeprefix(f"{path}: ")
    meta = {
        "image_id": record.image_id,
        "file_name": record.file_name,
        "split": record.split,
        "captions": list(record.captions),
        **record.extra,
    }
    return {
        "__key__": sample_key(record.image_id),
        "jpg": _as_jpeg(data, image),
        "json": json.dumps(meta, sort_keys=True).encode("utf-8"),
    }, ""


def _as_jpeg(data: bytes, decoded: Image.Image) -> bytes:
    """Pass JPEG bytes through untouched when they already decode to what we want."""
    with Image.open(io.BytesIO(data)) as original:
        orientation = original.getexif().get(0x0112, 1)
        if original.format == "JPEG" and original.mode == "RGB" and orientation == 1:
            return data
    buffer = io.BytesIO()
    decoded.save(buffer, format="JPEG", quality=95)
    return buffer.getvalue()


def _sha256(path: Path) -> str:
    digest = hashlib.sha256()
    with path.open("rb") as handle:
        for chunk in iter(lambda: handle.read(1 << 20), b""):
            digest.update(chunk)
    return digest.hexdigest()


class ShardError(CaptioningError, ValueError):
    """A shard directory or manifest that is missing or malformed."""


def read_manifest(shard_dir: str | Path) -> dict[str, Any]:
    """The manifest of a shard directory, checked: every split lists its shards."""
    path = Path(shard_dir) / "manifest.json"
    try:
        manifest = json.loads(path.read_text(encoding="utf-8"))
    except FileNotFoundError:
        raise ShardError(f"{path}: shard manifest not found; run the shard stage") from None
    except json.JSONDecodeError as exc:
        raise ShardError(f"{path}: not valid JSON ({exc})") from None
    splits = manifest.get("splits") if isinstance(manifest, dict) else None
    if not isinstance(splits, dict) or not splits:
        raise ShardError(f"{path}: expected a non-empty 'splits' mapping")
    for split, entry in splits.items():
        if not isinstance(entry, dict) or not isinstance(entry.get("shards"), list):
            raise ShardError(f"{path}: splits.{split} needs a 'shards' list")
    return manifest


def iter_samples(
    shard_dir: str | Path, split: str, *, images: bool = True
) -> Iterator[tuple[dict[str, Any], bytes | None]]:
    """(json, jpeg bytes) of every sample of a split, in shard order, read with plain tarfile."""
    shard_dir = Path(shard_dir)
    for name in read_manifest(shard_dir)["splits"].get(split, {}).get("shards", []):
        with tarfile.open(shard_dir / name) as tar:
            pending: dict[str, dict[str, Any]] = {}
            for member in tar:
                key, _, ext = member.name.partition(".")
                if ext not in ("json", "jpg") or (ext == "jpg" and not images):
                    continue
                handle = tar.extractfile(member)
                assert handle is not None
                entry = pending.setdefault(key, {})
                entry[ext] = handle.read()
                if "json" in entry and ("jpg" in entry or not images):
                    done = pending.pop(key)
                    yield json.loads(done["json"]), done.get("jpg")
