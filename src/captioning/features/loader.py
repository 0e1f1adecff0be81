"""Decoded, preprocessed images from the WebDataset shards, through a DataLoader.

Two pipelines share the decoding: feature extraction reads shards in order and batches inside
each shard (a batch never spans two shards, so a shard's features do not depend on which other
shards are read: what a per-shard resume needs), and encoder fine-tuning reads them shuffled.
Decoding runs in DataLoader workers; everything they run is module-level and picklable.
"""

from __future__ import annotations

import json
import random
import re
import tarfile
from collections.abc import Callable, Iterable, Iterator, Sequence
from dataclasses import dataclass
from functools import partial
from pathlib import Path
from typing import Any

import torch
import webdataset as wds
from torch.utils.data import DataLoader, get_worker_info
from webdataset.tariterators import base_plus_ext, group_by_keys, tar_file_expander

from captioning.data.images import ImageDecodeError, load_rgb
from captioning.data.shard_check import (
    ShardFile,
    listed_shards,
    reading,
    sample_problem,
    unreadable,
)
from captioning.data.shards import read_manifest
from captioning.devices import pin_memory
from captioning.errors import CaptioningError
from captioning.features.encoders import EncoderSpec
from captioning.processes import worker_guard
from captioning.runtime import start_forkserver

MANIFEST_FILE = "manifest.json"
IMAGE_EXTENSIONS = ("jpg", "jpeg", "png", "webp")
# Tar members webdataset skips (tariterators.tar_file_iterator): keep the scan identical.
_SKIP_META = re.compile(r"__[^/]*__($|/)")

SampleInfo = tuple[str, int, str, dict]  # (shard url, position in the shard, key, json record)


class FeatureCacheError(CaptioningError, ValueError):
    """A feature cache (or its input shards) that is missing, inconsistent or mismatched."""


# --------------------------------------------------------------------------------------------
# Shards
# --------------------------------------------------------------------------------------------


@dataclass(frozen=True)
class Shard:
    path: Path
    keys: tuple[str, ...]  # sample keys in tar order
    offset: int  # first row of this shard in the split's arrays
    split: str = ""
    checksum: str = ""  # sha256 from the manifest, else size and mtime
    file: ShardFile | None = None  # what the manifest records, checked as it is read

    @property
    def url(self) -> str:
        return str(self.path)

    @property
    def name(self) -> str:
        return self.path.name


def shard_files(shard_dir: Path) -> dict[str, dict[str, Any]]:
    """``{split: {"shards": [ShardFile, ...], "count": int, "checksums": [str, ...]}}`` from
    the shard manifest; every shard checked to be there with its recorded size."""
    manifest = read_manifest(shard_dir)
    out: dict[str, dict[str, Any]] = {}
    for split, entry in manifest["splits"].items():
        files = listed_shards(Path(shard_dir), manifest, split)
        checksums = []
        for shard in files:
            stat = shard.path.stat()
            sha = shard.sha256
            checksums.append(f"sha256:{sha}" if sha else f"{stat.st_size}:{stat.st_mtime_ns}")
        out[split] = {"shards": files, "count": entry.get("count"), "checksums": checksums}
    return out


def scan_shard(path: Path) -> tuple[str, ...]:
    """Sample keys of a tar shard in order, grouped exactly as webdataset groups them.

    Reads only the tar headers (members are seeked over), so it is cheap next to decoding.
    Shards are plain tars ("r:": a compression guess would only blur the error of a bad one).
    """
    keys: list[str] = []
    try:
        with tarfile.open(path, mode="r:") as tar:
            for member in tar:
                if not member.isreg() or _SKIP_META.match(member.name):
                    continue
                prefix, _ = base_plus_ext(member.name)
                if prefix is not None and (not keys or keys[-1] != prefix):
                    keys.append(prefix)
    except (tarfile.TarError, EOFError, OSError) as exc:
        raise unreadable(path, exc) from None
    return tuple(keys)


def plan_split(
    split: str,
    files: Sequence[ShardFile],
    count: int | None,
    checksums: Sequence[str] | None = None,
) -> list[Shard]:
    """Scan the shards of a split and give each its block of rows."""
    shards: list[Shard] = []
    offset = 0
    for i, file in enumerate(files):
        keys = scan_shard(file.path)
        checksum = checksums[i] if checksums else ""
        shards.append(Shard(file.path, keys, offset, split, checksum, file))
        offset += len(keys)
    if count is not None and count != offset:
        raise FeatureCacheError(
            f"split {split!r}: the manifest says {count} samples, the shards hold {offset}"
        )
    return shards


def _read_shards(sources: Iterable[dict], files: dict[str, ShardFile]) -> Iterator[dict]:
    """webdataset's samples of each shard (its own tar_file_expander and group_by_keys, so
    they are grouped as wds.WebDataset groups them), the shard read through shard_check's
    ``reading``: a damaged shard fails, naming itself, after its last member."""
    for source in sources:
        url = source["url"]
        shard = files[url]
        with reading(shard) as stream:
            opened = {"url": url, "stream": stream, "local_path": str(shard.path)}
            yield from group_by_keys(tar_file_expander([opened]))
            stream.finish()


class _ShardPipeline(wds.DataPipeline, wds.FluidInterface):
    pass


def shard_samples(files: Sequence[ShardFile]) -> _ShardPipeline:
    """The samples of ``files`` in the given order, the shards split between DataLoader
    workers (what ``wds.WebDataset(urls, shardshuffle=False, nodesplitter=None)`` does, with
    every shard checked against its manifest record as it is read)."""
    urls = [str(f.path) for f in files]
    return _ShardPipeline(
        wds.SimpleShardList(urls),
        wds.split_by_worker,
        partial(_read_shards, files=dict(zip(urls, files, strict=True))),
    )


# --------------------------------------------------------------------------------------------
# Decoding and batching (run in DataLoader workers)
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


class DecodeSample:
    """A webdataset sample -> (resized uint8 pixels (S, S, 3), (url, position, key, record)).

    Normalising to float is left to the consumer (``spec.normalize`` on a batch): a worker
    then sends a quarter of the bytes, and spends less of the CPU the encoder needs."""

    def __init__(self, spec: EncoderSpec) -> None:
        self.spec = spec

    def __call__(self, sample: dict) -> tuple[torch.Tensor, SampleInfo]:
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
        check_record(record, where)
        try:
            image = load_rgb(sample[ext], name=f"{url}:{key}.{ext}")
        except ImageDecodeError as exc:
            if get_worker_info() is None:
                raise
            # torch rebuilds a worker's exception from its message alone (_Loader): this one
            # takes three arguments, and would reach the caller as a RuntimeError.
            raise FeatureCacheError(str(exc)) from None
        position = sample.get("__position__", -1)
        return self.spec.pixels(image), (url, position, key, record)


def check_record(record: Any, where: str) -> None:
    problem = sample_problem(record)
    if problem is not None:
        raise FeatureCacheError(f"{where}: {problem}")


def collate(batch: Sequence[tuple[torch.Tensor, SampleInfo]]) -> tuple[torch.Tensor, list]:
    images, infos = zip(*batch, strict=True)
    return torch.stack(images), list(infos)


def _batches_within_shards(
    samples: Iterable[tuple[torch.Tensor, SampleInfo]], batch_size: int
) -> Iterator[tuple[torch.Tensor, list[SampleInfo]]]:
    """Consecutive samples of one shard, ``batch_size`` at a time; a shard's last batch may be
    smaller. The batches of a shard are then the same whichever shards are read with it."""
    pending: list[tuple[torch.Tensor, SampleInfo]] = []
    for item in samples:
        if pending and (len(pending) == batch_size or pending[-1][1][0] != item[1][0]):
            yield collate(pending)
            pending = []
        pending.append(item)
    if pending:
        yield collate(pending)


def _repeat_where(
    samples: Iterable[tuple[torch.Tensor, SampleInfo]], times: Callable[[dict], int]
) -> Iterator[tuple[torch.Tensor, SampleInfo]]:
    for item in samples:
        for _ in range(times(item[1][3])):
            yield item


def start_workers_early() -> None:
    """Start the forkserver now, with the decoding code (torch, webdataset, PIL) imported.

    DataLoader workers fork from it. Started cold by the first loader, a worker spent 5-6 s
    importing before its first batch on a busy 2-core machine, and every new loader (one per
    fine-tuning epoch) paid it again; started here, while the caller builds its model and
    scans shards, and preloaded, the first batch came after ~1 s and later loaders' after
    0.1 s. Has no effect once the forkserver runs.
    """
    start_forkserver([__name__])


class _Loader(DataLoader):
    """A DataLoader whose workers' CaptioningErrors reach the caller as one line again."""

    def __iter__(self) -> Iterator[Any]:
        batches = super().__iter__()
        while True:
            try:
                batch = next(batches)
            except StopIteration:
                return
            except CaptioningError as exc:
                message = worker_message(exc)
                if message is None:
                    raise
                raise type(exc)(message) from None
            yield batch


def worker_message(exc: CaptioningError) -> str | None:
    """The message a DataLoader worker raised (None: not raised in a worker). torch re-raises
    a worker's exception in the main process as ``type(exc)("Caught <type> in DataLoader
    worker process N.\nOriginal Traceback ... <module>.<type>: <message>")``."""
    text = str(exc)
    kind = type(exc)
    if not text.startswith(f"Caught {kind.__name__} in DataLoader worker"):
        return None
    _, found, message = text.rpartition(f"{kind.__module__}.{kind.__qualname__}: ")
    return message.strip() if found else text


def _loader(dataset: Any, num_workers: int, device: torch.device) -> DataLoader:
    if num_workers > 0:
        start_workers_early()
    return _Loader(
        dataset,
        batch_size=None,  # the pipeline batches
        num_workers=num_workers,
        pin_memory=pin_memory(device),
        # forkserver, not fork: a process that already runs threads (an MLflow client, a
        # Prefect flow) can leave a forked worker in a broken state.
        multiprocessing_context="forkserver" if num_workers > 0 else None,
        # The workers' parent is the forkserver: the guard ends them when this process dies.
        worker_init_fn=worker_guard() if num_workers > 0 else None,
        persistent_workers=False,
    )


def extraction_loader(
    shards: Sequence[Shard],
    spec: EncoderSpec,
    *,
    batch_size: int,
    num_workers: int,
    device: torch.device,
) -> DataLoader:
    """Batches ``(pixels (B, S, S, 3) uint8, [(url, position, key, record), ...])``, each from
    one shard, shards in the given order per worker."""
    dataset = (
        shard_samples([s.file or ShardFile(s.path) for s in shards])
        .compose(_number_samples)
        .map(DecodeSample(spec))
        .compose(partial(_batches_within_shards, batch_size=batch_size))
    )
    # A worker without a shard would only idle (and webdataset can complain about it).
    return _loader(dataset, min(num_workers, len(shards)), device)


def training_loader(
    files: Sequence[ShardFile],
    spec: EncoderSpec,
    *,
    batch_size: int,
    num_workers: int,
    device: torch.device,
    seed: int,
    shuffle_buffer: int = 1000,
    repeats: Callable[[dict], int] | None = None,
) -> DataLoader:
    """Shuffled batches ``(pixels (B, S, S, 3) uint8, [info, ...])`` for one epoch: shard order and a sample
    shuffle buffer both drawn from ``seed`` (pass a new one per epoch), so an epoch is
    reproducible for a given number of workers. ``repeats(record)`` draws a sample that many
    times (hard scenes)."""
    order = list(files)
    random.Random(seed).shuffle(order)
    pipeline = shard_samples(order).map(DecodeSample(spec))
    if repeats is not None:
        pipeline = pipeline.compose(partial(_repeat_where, times=repeats))
    dataset = pipeline.shuffle(shuffle_buffer, seed=seed).batched(
        batch_size, collation_fn=collate, partial=True
    )
    return _loader(dataset, min(num_workers, len(order)), device)
