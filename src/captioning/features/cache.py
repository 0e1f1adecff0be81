"""The feature cache: CNN feature maps of every image, computed once and memory-mapped.

Layout of a cache directory::

    meta.json          {encoder, input_size, grid, channels, mean, std, dtype, pretrained,
                        weights, weights_path, init_seed, weights_sha256, precision (what the
                        encoder computed in, as resolved on this machine), splits: {split: count}}
    <split>.npy        float16 (N, grid*grid, channels); row-major locations, i.e. a
                       (C, H, W) feature map becomes (H*W, C)
    <split>.parquet    row, image_id, key, file_name, captions, meta (JSON of the sample's
                       other fields); table row i describes array row i

Rows follow the manifest: shard after shard, samples in tar order, whatever the number of
DataLoader workers. Each shard owns a contiguous block of rows whose offset is known before any
image is decoded (the tar headers are scanned first), and it is encoded in batches of its own
(a batch never spans two shards), so a shard's rows are the same whichever shards are encoded
with it.

Resume: the cache is built in a sibling work directory ``.<name>.partial/`` (DVC deletes a
stage's outputs before running it, not this sibling). It holds ``fingerprint.json`` (encoder,
input size, normalisation, weights digest, precision, batch size, the shards and their checksums), the
split arrays as memory-mapped ``.npy`` files, and ``<split>/<shard>.parquet``, the shard's index
rows, written atomically once its features are flushed: a shard with its index file is done. A
re-run with the same fingerprint encodes only the shards not done; a different fingerprint
(another encoder, input size, weights or shards) discards the work directory, so two caches are
never mixed. At the end the split indexes are assembled, ``meta.json`` is written and the work
directory is renamed into place: a killed run leaves the previous cache (or none), never a
half-written one.
"""

from __future__ import annotations

import json
import logging
import os
import shutil
import time
import weakref
from collections.abc import Callable, Sequence
from functools import cached_property
from pathlib import Path
from typing import Any

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
import torch
from tqdm import tqdm

from captioning.config import FeaturesConfig
from captioning.devices import choose_device, resolve_precision
from captioning.features.encoders import EncoderSpec, get_encoder_spec, grid_shape
from captioning.features.encoding import DTYPE, encode_pixels, encoder_identity, load_encoder
from captioning.features.loader import (
    MANIFEST_FILE,
    FeatureCacheError,
    SampleInfo,
    Shard,
    extraction_loader,
    plan_split,
    scan_shard,
    shard_files,
    start_workers_early,
)
from captioning.io import atomic_path, read_json_input, replace_path, write_json

__all__ = [
    "FeatureCache",
    "FeatureCacheError",
    "encode_split",
    "extract_features",
    "scan_shard",
]

log = logging.getLogger(__name__)

META_FILE = "meta.json"
FINGERPRINT_FILE = "fingerprint.json"
# Bump when the bytes a given fingerprint produces change: older work directories are dropped.
CACHE_FORMAT = 2
# Fields of the sample JSON that get their own index column; the rest go to "meta".
_INDEX_FIELDS = ("image_id", "file_name", "captions")
INDEX_SCHEMA = pa.schema(
    [
        ("row", pa.int64()),
        ("image_id", pa.int64()),
        ("key", pa.string()),
        ("file_name", pa.string()),
        ("captions", pa.list_(pa.string())),
        ("meta", pa.string()),
    ]
)

ShardCallback = Callable[[Shard], None]
# Encodes the pending shards into the work directory elsewhere (e.g. on a Dask cluster: see
# features/distributed.py) and returns how many images it encoded.
ShardRunner = Callable[[Sequence[Shard], dict[str, list[Shard]], Path], int]


# --------------------------------------------------------------------------------------------
# Writing, shard by shard
# --------------------------------------------------------------------------------------------


class _SplitWriter:
    """One split's memory-mapped array and the index files of its finished shards."""

    def __init__(self, work: Path, split: str, shards: Sequence[Shard], spec: EncoderSpec):
        self.split = split
        self.shards = list(shards)
        self.index_dir = work / split
        self.index_dir.mkdir(exist_ok=True)
        self.total = sum(len(s.keys) for s in shards)
        self.path = work / f"{split}.npy"
        shape = (self.total, spec.locations, spec.channels)
        self.array: np.memmap | None = None
        if self.total == 0:
            np.save(self.path, np.zeros(shape, dtype=DTYPE))
        elif self.path.is_file():
            self.array = np.load(self.path, mmap_mode="r+")
            if self.array.shape != shape or self.array.dtype != np.dtype(DTYPE):
                raise FeatureCacheError(
                    f"{self.path}: {self.array.dtype} {self.array.shape} in a work directory "
                    f"whose fingerprint says {DTYPE} {shape}; delete {work}"
                )
        else:
            self.array = np.lib.format.open_memmap(self.path, mode="w+", dtype=DTYPE, shape=shape)
        self._rows: dict[str, dict[str, list]] = {}
        for shard in self.shards:
            if not shard.keys and not self.is_done(shard):
                self._write_index(shard, _empty_columns())

    def index_path(self, shard: Shard) -> Path:
        return self.index_dir / f"{shard.name}.parquet"

    def is_done(self, shard: Shard) -> bool:
        return self.index_path(shard).is_file()

    def add(self, shard: Shard, infos: Sequence[SampleInfo], feats: np.ndarray) -> bool:
        """Write a batch of ``shard``; True when it completes the shard."""
        positions = [position for _, position, _, _ in infos]
        for url, position, key, _ in infos:
            found = shard.keys[position] if 0 <= position < len(shard.keys) else None
            if found != key:
                raise FeatureCacheError(
                    f"{url}: sample {position} is {key!r}, the header scan found "
                    f"{found if found is not None else 'nothing'}"
                )
        first = shard.offset + positions[0]
        assert self.array is not None
        if positions == list(range(positions[0], positions[0] + len(positions))):
            self.array[first : first + len(positions)] = feats
        else:
            self.array[[shard.offset + p for p in positions]] = feats
        columns = self._rows.setdefault(shard.url, _empty_columns())
        _append_index_rows(columns, shard, infos)
        if len(columns["row"]) < len(shard.keys):
            return False
        self.array.flush()  # the features are on disk before the shard is marked done
        self._write_index(shard, self._rows.pop(shard.url))
        return True

    def _write_index(self, shard: Shard, columns: dict[str, list]) -> None:
        table = pa.table(columns, schema=INDEX_SCHEMA).sort_by("row")
        with atomic_path(self.index_path(shard)) as tmp:
            pq.write_table(table, tmp)

    def finish(self, out: Path) -> None:
        """Assemble the split's index from its shards' (read back, as a resumed run would)."""
        tables = [pq.read_table(self.index_path(s)) for s in self.shards]
        table = pa.concat_tables(tables).combine_chunks() if tables else INDEX_SCHEMA.empty_table()
        if table.column("row").to_pylist() != list(range(self.total)):
            raise FeatureCacheError(
                f"split {self.split!r}: the shard indexes in {self.index_dir} do not cover rows "
                f"0..{self.total - 1}; the shards changed while being read?"
            )
        pq.write_table(table, out / f"{self.split}.parquet")
        if self.array is not None:
            self.array.flush()
            del self.array
        shutil.rmtree(self.index_dir)


def _empty_columns() -> dict[str, list]:
    return {name: [] for name in INDEX_SCHEMA.names}


def _append_index_rows(columns: dict[str, list], shard: Shard, infos: Sequence[SampleInfo]) -> None:
    for _, position, key, record in infos:
        columns["row"].append(shard.offset + position)
        columns["image_id"].append(int(record["image_id"]))
        columns["key"].append(key)
        columns["file_name"].append(str(record.get("file_name", "")))
        columns["captions"].append(list(record["captions"]))
        other = {k: v for k, v in record.items() if k not in _INDEX_FIELDS}
        columns["meta"].append(json.dumps(other, sort_keys=True, separators=(",", ":")))


def partial_dir(out_dir: Path) -> Path:
    """The work directory of an unfinished cache: a hidden sibling that survives a kill."""
    return out_dir.with_name(f".{out_dir.name}.partial")


def _open_work_dir(work: Path, fingerprint: dict[str, Any]) -> None:
    """Keep ``work`` if it was started for the same fingerprint; otherwise start afresh."""
    fingerprint = json.loads(json.dumps(fingerprint))  # tuples -> lists, as read back
    if work.exists():
        try:
            old = json.loads((work / FINGERPRINT_FILE).read_text(encoding="utf-8"))
        except (FileNotFoundError, json.JSONDecodeError):
            old = None
        if old != fingerprint:
            log.info(
                "features: discarding the unfinished cache %s (%s)",
                work,
                _differences(old, fingerprint),
            )
            shutil.rmtree(work)
    if not work.exists():
        work.mkdir(parents=True)
        write_json(work / FINGERPRINT_FILE, fingerprint)


def _differences(old: dict[str, Any] | None, new: dict[str, Any]) -> str:
    if not isinstance(old, dict):
        return "no readable fingerprint"
    changed = [k for k in sorted(set(old) | set(new)) if old.get(k) != new.get(k)]
    shown = [
        f"{k} {old.get(k)!r} -> {new.get(k)!r}" if k != "splits" else "shards changed"
        for k in changed
    ]
    return "made with " + "; ".join(shown)


def extract_features(
    shard_dir: Path,
    out_dir: Path,
    cfg: FeaturesConfig,
    device: torch.device | None = None,
    *,
    splits: Sequence[str] | None = None,
    seed: int | None = None,
    precision: str = "auto",
    on_shard: ShardCallback | None = None,
    run_shards: ShardRunner | None = None,
) -> dict[str, Any]:
    """Encode every image of the shards in ``shard_dir`` into a feature cache at ``out_dir``.

    ``splits`` restricts the work to some of the manifest's splits (default: all of them).
    With ``cfg.pretrained=False`` the encoder is randomly initialised from ``seed`` (recorded,
    so prediction can rebuild it) or, if None, from torch's current RNG state. The encoder
    computes in ``precision`` (``common.precision``) as resolved on ``device``, recorded in
    the fingerprint and meta.json: auto may resolve otherwise elsewhere. An unfinished
    run with the same fingerprint is resumed from its last complete shard; ``on_shard`` is
    called after each shard is written. ``run_shards`` encodes the pending shards somewhere
    else (every shard's rows and index written into the work directory, as here); the cache is
    the same. Returns a summary (counts, timings).
    """
    shard_dir, out_dir = Path(shard_dir), Path(out_dir)
    spec = get_encoder_spec(cfg.encoder)
    if cfg.num_workers > 0 and run_shards is None:
        start_workers_early()  # their imports overlap the shard scan and the model build
    device = device if device is not None else choose_device("auto")
    precision = resolve_precision(precision, device)
    manifest = shard_files(shard_dir)
    wanted = list(manifest) if splits is None else list(splits)
    for split in wanted:
        if split not in manifest:
            raise FeatureCacheError(
                f"{shard_dir / MANIFEST_FILE}: no split {split!r} (has {sorted(manifest)})"
            )
    plans = {
        s: plan_split(s, manifest[s]["shards"], manifest[s]["count"], manifest[s]["checksums"])
        for s in wanted
    }

    # With run_shards the workers encode (each on its own device): this process needs only the
    # encoder's identity, so it builds it on the CPU rather than hold a GPU the workers use.
    here = device if run_shards is None else torch.device("cpu")
    model = load_encoder(spec, cfg.pretrained, here, weights_path=cfg.weights_path, seed=seed)
    identity = encoder_identity(
        spec, model, pretrained=cfg.pretrained, weights_path=cfg.weights_path, seed=seed
    )
    fingerprint = {
        "format": CACHE_FORMAT,
        **identity,
        "precision": precision,
        "batch_size": cfg.batch_size,
        "splits": {
            split: [[s.name, s.checksum, len(s.keys)] for s in shards]
            for split, shards in plans.items()
        },
    }
    work = partial_dir(out_dir)
    _open_work_dir(work, fingerprint)
    writers = {split: _SplitWriter(work, split, shards, spec) for split, shards in plans.items()}
    pending = [
        s for split, shards in plans.items() for s in shards if not writers[split].is_done(s)
    ]
    all_shards = sum(len(shards) for shards in plans.values())
    if len(pending) < all_shards:
        log.info(
            "features: resuming %s, %d of %d shards already done",
            work,
            all_shards - len(pending),
            all_shards,
        )
    log.info(
        "features: encoder %s (%s) on %s in %s, batch %d, %d workers, %d shards to encode",
        spec.name,
        identity["weights"],
        device,
        precision,
        cfg.batch_size,
        cfg.num_workers,
        len(pending),
    )

    start = time.perf_counter()
    if run_shards is None:
        encoded, startup = _encode_shards(
            pending, writers, model, spec, cfg, device, precision, on_shard
        )
    else:
        encoded, startup = run_shards(pending, plans, work), 0.0
    seconds = time.perf_counter() - start
    for writer in writers.values():
        writer.finish(work)
    meta = {
        **identity,
        "precision": precision,
        "splits": {split: w.total for split, w in writers.items()},
    }
    write_json(work / META_FILE, meta)
    (work / FINGERPRINT_FILE).unlink()
    replace_path(work, out_dir)

    rate = encoded / seconds if seconds > 0 else 0.0
    log.info("features: %d images encoded in %.1fs (%.1f img/s)", encoded, seconds, rate)
    return {
        "encoder": spec.name,
        "pretrained": cfg.pretrained,
        "device": str(device),
        "precision": precision,
        "out_dir": str(out_dir),
        "count": sum(w.total for w in writers.values()),
        "encoded": encoded,
        "seconds": round(seconds, 3),
        "images_per_s": round(rate, 2),
        # after the first batch: the rate a long run approaches
        "startup_s": round(startup, 3),
        "steady_images_per_s": round(encoded / (seconds - startup), 2)
        if seconds > startup
        else 0.0,
        "splits": {
            split: {
                "count": writers[split].total,
                "shards": len(shards),
                "resumed_shards": sum(1 for s in shards if s not in pending),
            }
            for split, shards in plans.items()
        },
    }


def _encode_shards(
    pending: Sequence[Shard],
    writers: dict[str, _SplitWriter],
    model: torch.nn.Module,
    spec: EncoderSpec,
    cfg: FeaturesConfig,
    device: torch.device,
    precision: str,
    on_shard: ShardCallback | None,
) -> tuple[int, float]:
    """Encode the pending shards; returns the number of images encoded and the seconds until
    the first batch arrived (worker start-up and the first decodes)."""
    if not pending:
        return 0, 0.0
    start = time.perf_counter()
    first_batch: float | None = None
    by_url = {s.url: s for s in pending}
    total = sum(len(s.keys) for s in pending)
    loader = extraction_loader(
        pending, spec, batch_size=cfg.batch_size, num_workers=cfg.num_workers, device=device
    )
    encoded = 0
    with tqdm(total=total, desc="features", unit="img", mininterval=2.0) as bar:
        for pixels, infos in loader:
            if first_batch is None:
                first_batch = time.perf_counter() - start
            shard = by_url[infos[0][0]]
            feats = encode_pixels(model, pixels, spec, device, precision=precision)
            if writers[shard.split].add(shard, infos, feats) and on_shard is not None:
                on_shard(shard)
            encoded += len(infos)
            bar.update(len(infos))
    return encoded, first_batch or 0.0


def encode_split(
    shard_dir: str | Path,
    split: str,
    model: torch.nn.Module,
    spec: EncoderSpec,
    device: torch.device,
    *,
    precision: str,
    batch_size: int = 32,
    num_workers: int = 1,
    meta: dict[str, Any] | None = None,
) -> FeatureCache:
    """One split encoded in memory by ``model`` (e.g. an encoder being fine-tuned) in the
    resolved ``precision``, as a FeatureCache that no file backs; rows in the same order as the cache's."""
    manifest = shard_files(Path(shard_dir))
    if split not in manifest:
        raise FeatureCacheError(
            f"{Path(shard_dir) / MANIFEST_FILE}: no split {split!r} (has {sorted(manifest)})"
        )
    entry = manifest[split]
    shards = plan_split(split, entry["shards"], entry["count"], entry["checksums"])
    by_url = {s.url: s for s in shards}
    total = sum(len(s.keys) for s in shards)
    features = np.zeros((total, spec.locations, spec.channels), dtype=DTYPE)
    columns = _empty_columns()
    if shards:
        loader = extraction_loader(
            shards, spec, batch_size=batch_size, num_workers=num_workers, device=device
        )
        for pixels, infos in loader:
            shard = by_url[infos[0][0]]
            rows = [shard.offset + position for _, position, _, _ in infos]
            features[rows] = encode_pixels(model, pixels, spec, device, precision=precision)
            _append_index_rows(columns, shard, infos)
    index = pa.table(columns, schema=INDEX_SCHEMA).sort_by("row")
    if index.column("row").to_pylist() != list(range(total)):
        raise FeatureCacheError(f"split {split!r}: rows missing after encoding {shard_dir}")
    return FeatureCache(
        Path(shard_dir), split, features, index, {**(meta or {}), "splits": {split: total}}
    )


# --------------------------------------------------------------------------------------------
# Reading
# --------------------------------------------------------------------------------------------


class FeatureCache:
    """One split of a feature cache: memory-mapped features plus the index table.

    ``features[i]`` (grid*grid, channels) float16 belongs to ``image_ids[i]``, whose captions
    are ``captions[i]`` and whose other sample fields (e.g. objects) are ``row_meta[i]``.
    """

    def __init__(
        self,
        root: Path,
        split: str,
        features: np.ndarray,
        index: pa.Table,
        meta: dict,
        npy_path: Path | None = None,
    ) -> None:
        self.root = root
        self.split = split
        self.features = features
        self.npy_path = npy_path  # the file ``features`` maps; None for a split held in memory
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
        meta = read_json_input(
            meta_path,
            "no feature cache here (meta.json missing); run the features stage",
            FeatureCacheError,
        )
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
        grid_h, grid_w = grid_shape(meta)
        shape = (count, grid_h * grid_w, meta["channels"])
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
        return cls(root, split, features, index, meta, npy_path=npy_path)

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
        """The whole split read into RAM (float16); a torch tensor sharing it if asked.
        Training never does this (``FeatureRows`` reads the rows of each batch)."""
        array = np.asarray(self.features).copy()  # a plain in-RAM ndarray, not a memmap
        return torch.from_numpy(array) if as_tensor else array


class FeatureRows:
    """A split's features (N, L, C) read a batch at a time, never the whole split.

    ``rows[index]`` (a 1-D list, array or tensor of row numbers, repeats allowed) is a new
    float16 tensor of those rows in that order, in pinned memory if ``pin`` (the staging
    buffer of an asynchronous copy to a GPU). From a cache file the rows are read in ascending
    order, a run of neighbouring rows in one call, each straight into its place in the batch.
    They are read with ``pread``, not through the memory map: the file's pages then stay in
    the page cache and out of this process's resident memory (a memory map's touched pages
    count in it, and would grow with the split). A split held in memory (``encode_split``) is
    indexed.
    """

    def __init__(self, cache: FeatureCache, *, pin: bool = False) -> None:
        self.shape: tuple[int, ...] = tuple(cache.features.shape)
        self.pin = pin
        self._dtype = torch.from_numpy(np.empty(0, dtype=cache.features.dtype)).dtype
        self._row_bytes = int(np.prod(self.shape[1:])) * cache.features.dtype.itemsize
        self._in_memory: np.ndarray | None = None
        self._path = cache.npy_path
        if cache.npy_path is None:
            self._in_memory = cache.features
        else:
            self._offset = int(cache.features.offset)  # the .npy header's length
            self._fd = os.open(cache.npy_path, os.O_RDONLY)
            weakref.finalize(self, os.close, self._fd)

    def __len__(self) -> int:
        return self.shape[0]

    def __getitem__(self, index: Sequence[int] | np.ndarray | torch.Tensor) -> torch.Tensor:
        if isinstance(index, int | np.integer):
            raise TypeError("FeatureRows reads a batch of rows: index it with a list of rows")
        rows = np.asarray(index, dtype=np.int64).reshape(-1)
        if rows.size and (rows.min() < 0 or rows.max() >= self.shape[0]):
            raise IndexError(f"rows {rows.min()}..{rows.max()} of a split of {self.shape[0]}")
        batch = torch.empty((len(rows), *self.shape[1:]), dtype=self._dtype, pin_memory=self.pin)
        if self._in_memory is not None:
            batch.numpy()[:] = self._in_memory[rows]
        else:
            self._read(rows, batch.numpy())
        return batch

    def _read(self, rows: np.ndarray, out: np.ndarray) -> None:
        """Rows in ascending order, each run of consecutive rows in one ``preadv``; a row
        asked for twice is read once and copied."""
        run: list[memoryview] = []
        repeats: list[tuple[int, int]] = []  # (slot, the slot that reads the same row)
        run_start = previous = read_slot = -1
        for slot in np.argsort(rows, kind="stable").tolist():
            row = int(rows[slot])
            if row == previous:
                repeats.append((slot, read_slot))
                continue
            if run and (row != previous + 1 or len(run) == _IOV_MAX):
                self._read_run(run_start, run)
                run = []
            if not run:
                run_start = row
            run.append(memoryview(out[slot]).cast("B"))
            previous, read_slot = row, slot
        if run:
            self._read_run(run_start, run)
        for slot, read in repeats:
            out[slot] = out[read]

    def _read_run(self, first_row: int, buffers: list[memoryview]) -> None:
        position = self._offset + first_row * self._row_bytes
        if os.preadv(self._fd, buffers, position) == len(buffers) * self._row_bytes:
            return
        for i, view in enumerate(buffers):  # a short read (signal, network file system)
            done, start = 0, position + i * self._row_bytes
            while done < self._row_bytes:
                got = os.preadv(self._fd, [view[done:]], start + done)
                if got == 0:
                    raise FeatureCacheError(
                        f"{self._path}: ends inside row {first_row + i}; the cache is "
                        "truncated, re-run the features stage"
                    )
                done += got


# The most buffers one preadv call takes.
_IOV_MAX = os.sysconf("SC_IOV_MAX") if hasattr(os, "sysconf") else 16


def _registered(name: str) -> bool:
    try:
        get_encoder_spec(name)
    except ValueError:
        return False
    return True
