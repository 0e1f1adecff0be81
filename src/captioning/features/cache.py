"""The feature cache: CNN feature maps of every image, computed once and memory-mapped.

Layout of a cache directory::

    meta.json          {encoder, input_size, grid, channels, pretrained, dtype, mean, std,
                        splits: {split: count}}
    <split>.npy        float16 (N, grid*grid, channels); row-major locations, i.e. a
                       (C, H, W) feature map becomes (H*W, C)
    <split>.parquet    row, image_id, key, file_name, captions, meta (JSON of the sample's
                       other fields); table row i describes array row i

Rows follow the manifest: shard after shard, samples in tar order, whatever the number of
DataLoader workers, so the output is a pure function of the shards and the encoder. Each shard
owns a contiguous block of rows whose offset is known before any image is decoded (the tar
headers are scanned first); that is what a per-shard resume can build on.

The whole directory is written under a temporary name and renamed into place at the end, so a
killed run leaves the previous cache (or none), never a half-written one.
"""

from __future__ import annotations

import json
import logging
import re
import tarfile
import time
from collections.abc import Iterable, Iterator, Sequence
from dataclasses import dataclass
from functools import cached_property
from pathlib import Path
from typing import Any

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
import torch
import webdataset as wds
from torch.utils.data import DataLoader
from tqdm import tqdm
from webdataset.tariterators import base_plus_ext

from captioning.config import FeaturesConfig
from captioning.data.images import load_rgb
from captioning.data.shards import read_manifest
from captioning.devices import autocast, choose_device, pin_memory
from captioning.errors import CaptioningError
from captioning.features.encoders import EncoderSpec, get_encoder_spec
from captioning.io import atomic_path, write_json

log = logging.getLogger(__name__)

DTYPE = "float16"
META_FILE = "meta.json"
MANIFEST_FILE = "manifest.json"
IMAGE_EXTENSIONS = ("jpg", "jpeg", "png", "webp")
# Fields of the sample JSON that get their own index column; the rest go to "meta".
_INDEX_FIELDS = ("image_id", "file_name", "captions")
# Tar members webdataset skips (tariterators.tar_file_iterator): keep the scan identical.
_SKIP_META = re.compile(r"__[^/]*__($|/)")


class FeatureCacheError(CaptioningError, ValueError):
    """A feature cache (or its input shards) that is missing, inconsistent or mismatched."""


# --------------------------------------------------------------------------------------------
# Input shards
# --------------------------------------------------------------------------------------------


@dataclass(frozen=True)
class Shard:
    path: Path
    keys: tuple[str, ...]  # sample keys in tar order
    offset: int  # first row of this shard in the split's arrays

    @property
    def url(self) -> str:
        return str(self.path)


def shard_files(shard_dir: Path) -> dict[str, dict[str, Any]]:
    """``{split: {"shards": [Path, ...], "count": int}}`` from the shard manifest."""
    manifest = read_manifest(shard_dir)
    path = Path(shard_dir) / MANIFEST_FILE
    out: dict[str, dict[str, Any]] = {}
    for split, entry in manifest["splits"].items():
        shards = [Path(shard_dir) / name for name in entry["shards"]]
        for shard in shards:
            if not shard.is_file():
                raise FeatureCacheError(f"{path}: splits.{split} lists {shard.name}, not found")
        out[split] = {"shards": shards, "count": entry.get("count")}
    return out


def scan_shard(path: Path) -> tuple[str, ...]:
    """Sample keys of a tar shard in order, grouped exactly as webdataset groups them.

    Reads only the tar headers (members are seeked over), so it is cheap next to decoding.
    """
    keys: list[str] = []
    try:
        with tarfile.open(path, mode="r:*") as tar:
            for member in tar:
                if not member.isreg() or _SKIP_META.match(member.name):
                    continue
                prefix, _ = base_plus_ext(member.name)
                if prefix is not None and (not keys or keys[-1] != prefix):
                    keys.append(prefix)
    except tarfile.TarError as exc:
        raise FeatureCacheError(f"{path}: not a readable tar shard ({exc})") from None
    return tuple(keys)


def plan_split(split: str, shard_paths: Sequence[Path], count: int | None) -> list[Shard]:
    """Scan the shards of a split and give each its block of rows."""
    shards: list[Shard] = []
    offset = 0
    for path in shard_paths:
        keys = scan_shard(path)
        shards.append(Shard(path=Path(path), keys=keys, offset=offset))
        offset += len(keys)
    if count is not None and count != offset:
        raise FeatureCacheError(
            f"split {split!r}: the manifest says {count} samples, the shards hold {offset}"
        )
    return shards


# --------------------------------------------------------------------------------------------
# Decoding (runs in DataLoader workers: module-level and picklable)
# --------------------------------------------------------------------------------------------


def _number_samples(samples: Iterable[dict]) -> Iterator[dict]:
    """Tag each sample with its position inside its shard (a worker reads whole shards)."""
    url, position = None, 0
    for sample in samples:
        if sample["__url__"] != url:
            url, position = sample["__url__"], 0
        sample["__position__"] = position
        position += 1
        yield sample


class _DecodeSample:
    def __init__(self, spec: EncoderSpec) -> None:
        self.spec = spec

    def __call__(self, sample: dict) -> tuple[torch.Tensor, tuple[str, int, str, dict]]:
        url, key = sample["__url__"], sample["__key__"]
        where = f"{url}: sample {key!r}"
        ext = next((e for e in IMAGE_EXTENSIONS if e in sample), None)
        if ext is None:
            raise FeatureCacheError(f"{where}: no image member (looked for {IMAGE_EXTENSIONS})")
        if "json" not in sample:
            raise FeatureCacheError(f"{where}: no json member")
        try:
            record = json.loads(sample["json"])
        except (json.JSONDecodeError, UnicodeDecodeError) as exc:
            raise FeatureCacheError(f"{where}: json member is not valid JSON ({exc})") from None
        _check_record(record, where)
        image = load_rgb(sample[ext], name=f"{url}:{key}.{ext}")
        return self.spec.preprocess(image), (url, sample["__position__"], key, record)


def _check_record(record: Any, where: str) -> None:
    if not isinstance(record, dict):
        raise FeatureCacheError(f"{where}: json member must be an object")
    image_id = record.get("image_id")
    if not isinstance(image_id, int) or isinstance(image_id, bool):
        raise FeatureCacheError(f"{where}: json image_id must be an integer, got {image_id!r}")
    captions = record.get("captions")
    if not isinstance(captions, list) or not all(isinstance(c, str) for c in captions):
        raise FeatureCacheError(f"{where}: json captions must be a list of strings")


def _collate(batch: list[tuple[torch.Tensor, tuple]]) -> tuple[torch.Tensor, list[tuple]]:
    images, infos = zip(*batch, strict=True)
    return torch.stack(images), list(infos)


def _make_loader(
    shards: Sequence[Shard], spec: EncoderSpec, cfg: FeaturesConfig, device: torch.device
) -> DataLoader:
    dataset = (
        wds.WebDataset(
            [s.url for s in shards],
            shardshuffle=False,
            nodesplitter=None,  # feature extraction is never split across nodes
            empty_check=False,
        )
        .compose(_number_samples)
        .map(_DecodeSample(spec))
    )
    # A worker without a shard would only idle (and webdataset can complain about it).
    workers = min(cfg.num_workers, len(shards))
    return DataLoader(
        dataset,
        batch_size=cfg.batch_size,
        num_workers=workers,
        collate_fn=_collate,
        pin_memory=pin_memory(device),
        # forkserver, not fork: a process that already runs threads (an MLflow client, a
        # Prefect flow) can leave a forked worker in a broken state.
        multiprocessing_context="forkserver" if workers > 0 else None,
    )


# --------------------------------------------------------------------------------------------
# Extraction
# --------------------------------------------------------------------------------------------


def load_encoder(spec: EncoderSpec, pretrained: bool, device: torch.device) -> torch.nn.Module:
    """The encoder ready for inference. channels_last pays on CUDA and on the CPU alike
    (EfficientNet-Lite0 on 2 CPU cores: 39 -> 55 img/s)."""
    model = spec.build(pretrained).to(device).eval()
    return model.to(memory_format=torch.channels_last)


@torch.inference_mode()
def encode_batch(
    model: torch.nn.Module, images: torch.Tensor, spec: EncoderSpec, device: torch.device
) -> np.ndarray:
    """Preprocessed images (B, 3, H, W) -> float16 features (B, grid*grid, channels)."""
    x = images.to(device, non_blocking=True).contiguous(memory_format=torch.channels_last)
    with autocast(device):
        fmap = model(x)
    expected = (spec.channels, spec.grid, spec.grid)
    if tuple(fmap.shape[1:]) != expected:
        raise FeatureCacheError(
            f"encoder {spec.name!r} returned feature maps {tuple(fmap.shape[1:])}, "
            f"its spec says {expected}"
        )
    b = fmap.shape[0]
    feats = fmap.float().permute(0, 2, 3, 1).reshape(b, spec.locations, spec.channels)
    return feats.to(torch.float16).cpu().numpy()


def _extract_split(
    split: str,
    shards: Sequence[Shard],
    model: torch.nn.Module,
    spec: EncoderSpec,
    cfg: FeaturesConfig,
    device: torch.device,
    out_dir: Path,
) -> dict[str, Any]:
    total = sum(len(s.keys) for s in shards)
    npy_path = out_dir / f"{split}.npy"
    shape = (total, spec.locations, spec.channels)
    if total == 0:
        np.save(npy_path, np.zeros(shape, dtype=DTYPE))
    rows = {s.url: s for s in shards}
    image_ids: list[int | None] = [None] * total
    keys: list[str | None] = [None] * total
    file_names: list[str | None] = [None] * total
    captions: list[list[str] | None] = [None] * total
    metas: list[str | None] = [None] * total

    start = time.perf_counter()
    if total:
        array = np.lib.format.open_memmap(npy_path, mode="w+", dtype=DTYPE, shape=shape)
        bar = tqdm(total=total, desc=f"features {split}", unit="img", mininterval=2.0)
        try:
            for images, infos in _make_loader(shards, spec, cfg, device):
                batch_rows = []
                for url, position, key, record in infos:
                    shard = rows[url]
                    if position >= len(shard.keys) or shard.keys[position] != key:
                        raise FeatureCacheError(
                            f"{url}: sample {position} is {key!r}, the header scan found "
                            f"{shard.keys[position] if position < len(shard.keys) else 'nothing'}"
                        )
                    row = shard.offset + position
                    batch_rows.append(row)
                    image_ids[row] = int(record["image_id"])
                    keys[row] = key
                    file_names[row] = str(record.get("file_name", ""))
                    captions[row] = list(record["captions"])
                    other = {k: v for k, v in record.items() if k not in _INDEX_FIELDS}
                    metas[row] = json.dumps(other, sort_keys=True, separators=(",", ":"))
                array[batch_rows] = encode_batch(model, images, spec, device)
                bar.update(len(batch_rows))
        finally:
            bar.close()
        array.flush()
        del array
    seconds = time.perf_counter() - start

    missing = [i for i, v in enumerate(image_ids) if v is None]
    if missing:
        raise FeatureCacheError(
            f"split {split!r}: {len(missing)} of {total} rows were never filled "
            f"(first: row {missing[0]}); the shards changed while being read?"
        )
    table = pa.table(
        {
            "row": pa.array(range(total), type=pa.int64()),
            "image_id": pa.array(image_ids, type=pa.int64()),
            "key": pa.array(keys, type=pa.string()),
            "file_name": pa.array(file_names, type=pa.string()),
            "captions": pa.array(captions, type=pa.list_(pa.string())),
            "meta": pa.array(metas, type=pa.string()),
        }
    )
    pq.write_table(table, out_dir / f"{split}.parquet")
    rate = total / seconds if seconds > 0 else 0.0
    log.info(
        "features %s: %d images from %d shards in %.1fs (%.1f img/s)",
        split,
        total,
        len(shards),
        seconds,
        rate,
    )
    return {
        "count": total,
        "shards": len(shards),
        "seconds": round(seconds, 3),
        "images_per_s": round(rate, 2),
    }


def extract_features(
    shard_dir: Path,
    out_dir: Path,
    cfg: FeaturesConfig,
    device: torch.device | None = None,
    *,
    splits: Sequence[str] | None = None,
) -> dict[str, Any]:
    """Encode every image of the shards in ``shard_dir`` into a feature cache at ``out_dir``.

    ``splits`` restricts the work to some of the manifest's splits (default: all of them).
    With ``cfg.pretrained=False`` the encoder is randomly initialised from torch's current RNG
    state: seed it for a reproducible cache. Returns a summary (counts, timings).
    """
    shard_dir, out_dir = Path(shard_dir), Path(out_dir)
    spec = get_encoder_spec(cfg.encoder)
    device = device if device is not None else choose_device("auto")
    manifest = shard_files(shard_dir)
    wanted = list(manifest) if splits is None else list(splits)
    for split in wanted:
        if split not in manifest:
            raise FeatureCacheError(
                f"{shard_dir / MANIFEST_FILE}: no split {split!r} (has {sorted(manifest)})"
            )
    plans = {s: plan_split(s, manifest[s]["shards"], manifest[s]["count"]) for s in wanted}

    model = load_encoder(spec, cfg.pretrained, device)
    log.info(
        "features: encoder %s (pretrained=%s) on %s, batch %d, %d workers",
        spec.name,
        cfg.pretrained,
        device,
        cfg.batch_size,
        cfg.num_workers,
    )

    start = time.perf_counter()
    summary: dict[str, Any] = {}
    with atomic_path(out_dir) as tmp:
        tmp.mkdir(parents=True)
        for split, shards in plans.items():
            summary[split] = _extract_split(split, shards, model, spec, cfg, device, tmp)
        meta = {
            "encoder": spec.name,
            "input_size": spec.input_size,
            "grid": spec.grid,
            "channels": spec.channels,
            "pretrained": cfg.pretrained,
            "dtype": DTYPE,
            "mean": list(spec.mean),
            "std": list(spec.std),
            "splits": {split: info["count"] for split, info in summary.items()},
        }
        write_json(tmp / META_FILE, meta)
    seconds = time.perf_counter() - start
    count = sum(info["count"] for info in summary.values())
    return {
        "encoder": spec.name,
        "pretrained": cfg.pretrained,
        "device": str(device),
        "out_dir": str(out_dir),
        "count": count,
        "seconds": round(seconds, 3),
        "images_per_s": round(count / seconds, 2) if seconds > 0 else 0.0,
        "splits": summary,
    }


# --------------------------------------------------------------------------------------------
# Reading
# --------------------------------------------------------------------------------------------


class FeatureCache:
    """One split of a feature cache: memory-mapped features plus the index table.

    ``features[i]`` (grid*grid, channels) float16 belongs to ``image_ids[i]``, whose captions
    are ``captions[i]`` and whose other sample fields (e.g. objects) are ``row_meta[i]``.
    """

    def __init__(
        self, root: Path, split: str, features: np.ndarray, index: pa.Table, meta: dict
    ) -> None:
        self.root = root
        self.split = split
        self.features = features
        self.index = index
        self.meta = meta
        self.image_ids: list[int] = index.column("image_id").to_pylist()
        self.keys: list[str] = index.column("key").to_pylist()
        self.file_names: list[str] = index.column("file_name").to_pylist()
        self.captions: list[list[str]] = index.column("captions").to_pylist()

    @classmethod
    def open(
        cls,
        out_dir: str | Path,
        split: str,
        *,
        expect_encoder: str | None = None,
        expect_input_size: int | None = None,
    ) -> FeatureCache:
        """Open ``split`` of the cache at ``out_dir``, checking it is complete and consistent.

        ``expect_encoder`` (and ``expect_input_size``) refuse a cache made with another
        encoder; a registered encoder name also checks input size, grid and channels.
        """
        root = Path(out_dir)
        meta_path = root / META_FILE
        try:
            meta = json.loads(meta_path.read_text(encoding="utf-8"))
        except FileNotFoundError:
            raise FeatureCacheError(
                f"{meta_path}: no feature cache here (meta.json missing); run the features stage"
            ) from None
        missing = [
            k for k in ("encoder", "input_size", "grid", "channels", "splits") if k not in meta
        ]
        if missing:
            raise FeatureCacheError(f"{meta_path}: not a feature cache meta file (no {missing})")
        expected: dict[str, Any] = {}
        if expect_encoder is not None:
            expected["encoder"] = expect_encoder
            spec = get_encoder_spec(expect_encoder) if _registered(expect_encoder) else None
            if spec is not None:
                expected.update(input_size=spec.input_size, grid=spec.grid, channels=spec.channels)
        if expect_input_size is not None:
            expected["input_size"] = expect_input_size
        for field, want in expected.items():
            found = meta.get(field)
            if found != want:
                raise FeatureCacheError(
                    f"{meta_path}: feature cache was made with {field}={found!r}, expected "
                    f"{want!r}; re-run the features stage for this encoder"
                )
        splits = meta.get("splits", {})
        if split not in splits:
            raise FeatureCacheError(f"{meta_path}: no split {split!r} (has {sorted(splits)})")
        count = splits[split]
        npy_path = root / f"{split}.npy"
        index_path = root / f"{split}.parquet"
        try:
            features = np.load(npy_path, mmap_mode="r")
        except FileNotFoundError:
            raise FeatureCacheError(f"{npy_path}: missing from the feature cache") from None
        shape = (count, meta["grid"] * meta["grid"], meta["channels"])
        if features.shape != shape or features.dtype != np.dtype(meta.get("dtype", DTYPE)):
            raise FeatureCacheError(
                f"{npy_path}: array is {features.dtype} {features.shape}, {META_FILE} says "
                f"{meta.get('dtype', DTYPE)} {shape}"
            )
        try:
            index = pq.read_table(index_path)
        except FileNotFoundError:
            raise FeatureCacheError(f"{index_path}: missing from the feature cache") from None
        if index.num_rows != count:
            raise FeatureCacheError(
                f"{index_path}: {index.num_rows} rows, {npy_path.name} has {count}"
            )
        return cls(root, split, features, index, meta)

    def __len__(self) -> int:
        return self.features.shape[0]

    def __getitem__(self, row: int) -> np.ndarray:
        return self.features[row]

    @cached_property
    def row_meta(self) -> list[dict[str, Any]]:
        """Per-row extra sample fields (e.g. ``objects``), parsed on first use."""
        return [json.loads(m) for m in self.index.column("meta").to_pylist()]

    @cached_property
    def _rows_by_image_id(self) -> dict[int, int]:
        rows: dict[int, int] = {}
        for row, image_id in enumerate(self.image_ids):
            rows.setdefault(image_id, row)
        return rows

    def row_of(self, image_id: int) -> int:
        try:
            return self._rows_by_image_id[image_id]
        except KeyError:
            raise KeyError(f"image_id {image_id} is not in the {self.split!r} cache") from None

    def load_in_memory(self, as_tensor: bool = False) -> np.ndarray | torch.Tensor:
        """The whole split read into RAM (float16); a torch tensor sharing it if asked."""
        array = np.asarray(self.features).copy()  # a plain in-RAM ndarray, not a memmap
        return torch.from_numpy(array) if as_tensor else array


def _registered(name: str) -> bool:
    try:
        get_encoder_spec(name)
    except ValueError:
        return False
    return True
