"""Reading a batch of rows from the feature cache file (``FeatureRows``): the rows asked for, in
the order asked, read in ascending order with neighbouring rows in one call, never the whole
split; a split held in memory reads the same."""

from __future__ import annotations

import json
import os
from pathlib import Path

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
import pytest
import torch

from captioning.features import cache as cache_module
from captioning.features.cache import INDEX_SCHEMA, FeatureCache, FeatureCacheError, FeatureRows
from captioning.io import write_json

WORDS = ["a", "red", "blue", "green", "circle", "square", "star", "left", "of", "big"]


def write_feature_cache(
    root: Path, counts: dict[str, int], *, grid: int = 2, channels: int = 8, seed: int = 0
) -> dict[str, np.ndarray]:
    """A small cache in the features stage's format (random float16 rows, three captions an
    image, every third image with three objects: a hard one); returns each split's array."""
    root.mkdir(parents=True, exist_ok=True)
    rng = np.random.default_rng(seed)
    arrays = {}
    for split, count in counts.items():
        arrays[split] = rng.standard_normal((count, grid * grid, channels)).astype(np.float16)
        np.save(root / f"{split}.npy", arrays[split])
        captions = [
            [" ".join(rng.choice(WORDS, size=int(rng.integers(2, 8)))) for _ in range(3)]
            for _ in range(count)
        ]
        objects = [
            [{"colour": "red", "shape": "circle"}] * (3 if row % 3 == 0 else 1)
            for row in range(count)
        ]
        index = {
            "row": list(range(count)),
            "image_id": [1000 + row for row in range(count)],
            "key": [f"{split}{row:06d}" for row in range(count)],
            "file_name": [f"{split}{row:06d}.jpg" for row in range(count)],
            "captions": captions,
            "meta": [json.dumps({"objects": o}) for o in objects],
        }
        pq.write_table(pa.table(index, schema=INDEX_SCHEMA), root / f"{split}.parquet")
    meta = {"encoder": "synthetic", "input_size": 32, "grid": grid, "channels": channels}
    write_json(root / "meta.json", {**meta, "dtype": "float16", "splits": counts})
    return arrays


@pytest.fixture()
def cached(tmp_path: Path) -> tuple[FeatureCache, np.ndarray]:
    arrays = write_feature_cache(tmp_path, {"train": 12})
    return FeatureCache.open(tmp_path, "train"), arrays["train"]


def spy_reads(monkeypatch) -> list[tuple[int, int]]:
    """(file position, rows) of every preadv call."""
    calls: list[tuple[int, int]] = []
    real = os.preadv

    def preadv(fd, buffers, position):
        calls.append((position, len(buffers)))
        return real(fd, buffers, position)

    monkeypatch.setattr(cache_module.os, "preadv", preadv)
    return calls


def test_rows_come_back_in_the_order_asked_repeats_included(cached):
    cache, array = cached
    rows = [9, 0, 9, 4, 11, 5, 0, 3]
    batch = FeatureRows(cache)[rows]
    assert batch.dtype == torch.float16 and batch.shape == (8, 4, 8)
    np.testing.assert_array_equal(batch.numpy(), array[rows])  # bit for bit
    np.testing.assert_array_equal(FeatureRows(cache)[torch.tensor(rows)].numpy(), array[rows])
    assert not batch.is_pinned()  # pinned only when asked (a CUDA device)


def test_rows_are_read_in_ascending_order_neighbours_in_one_call(cached, monkeypatch):
    cache, array = cached
    calls = spy_reads(monkeypatch)
    rows = [7, 2, 3, 9, 4, 2, 10]
    np.testing.assert_array_equal(FeatureRows(cache)[rows].numpy(), array[rows])
    row_bytes = 4 * 8 * 2
    header = cache.features.offset
    # rows 2-4 in one call (2 read once), then 7, then 9-10
    assert calls == [
        (header + 2 * row_bytes, 3),
        (header + 7 * row_bytes, 1),
        (header + 9 * row_bytes, 2),
    ]


def test_a_split_in_memory_reads_the_same(cached):
    cache, array = cached
    in_memory = FeatureCache(cache.root, "train", np.array(array), cache.index, cache.meta)
    rows = [5, 1, 1, 8]
    assert torch.equal(FeatureRows(in_memory)[rows], FeatureRows(cache)[rows])


def test_rows_outside_the_split_and_single_rows_are_refused(cached):
    rows = FeatureRows(cached[0])
    with pytest.raises(IndexError, match="of a split of 12"):
        rows[[3, 12]]
    with pytest.raises(IndexError):
        rows[[-1]]
    with pytest.raises(TypeError, match="list of rows"):
        rows[3]


def test_a_cache_truncated_under_a_reader_is_named(cached):
    cache, _ = cached
    rows = FeatureRows(cache)
    os.truncate(cache.npy_path, cache.features.offset + 5 * 4 * 8 * 2 + 10)
    assert rows[[4]].shape == (1, 4, 8)
    with pytest.raises(FeatureCacheError, match=r"train\.npy: ends inside row 5"):
        rows[[5]]
