"""Shards checked against their manifest: sizes up front, sha256 as they are read."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from captioning.config import ShardConfig
from captioning.data.shard_check import ShardError
from captioning.data.shards import iter_samples, write_shards


@pytest.fixture
def shards(tiny_layout: Path, tmp_path: Path) -> Path:
    write_shards(tiny_layout, tmp_path / "shards", ShardConfig(max_count=2, workers=1))
    return tmp_path / "shards"


def test_a_truncated_shard_fails_before_the_first_sample(shards: Path) -> None:
    path = shards / "train-000002.tar"
    size = path.stat().st_size
    path.write_bytes(path.read_bytes()[:1000])
    samples = iter_samples(shards, "train")
    with pytest.raises(ShardError, match=f"1000 bytes, the manifest says {size}: truncated"):
        next(samples)


def test_a_shard_read_to_its_end_must_have_its_sha256(shards: Path) -> None:
    path = shards / "train-000000.tar"
    data = bytearray(path.read_bytes())
    data[-1] ^= 0xFF
    path.write_bytes(bytes(data))
    with pytest.raises(ShardError, match=r"train-000000\.tar: sha256 [0-9a-f]{16}\.\.\., the man"):
        list(iter_samples(shards, "train", images=False))


def test_a_sample_record_that_is_not_json_names_the_shard_and_member(shards: Path) -> None:
    path = shards / "val-000000.tar"
    data = path.read_bytes()
    start = data.index(b'{"captions"')
    path.write_bytes(data[:start] + b"X" + data[start + 1 :])  # same size
    with pytest.raises(ShardError, match=r"val-000000\.tar: not a readable shard at byte \d+ \("):
        list(iter_samples(shards, "val"))


def test_a_manifest_cannot_name_a_shard_outside_its_directory(shards: Path) -> None:
    manifest = json.loads((shards / "manifest.json").read_text())
    manifest["splits"]["test"]["shards"] = ["../raw/captions.json"]
    (shards / "manifest.json").write_text(json.dumps(manifest))
    with pytest.raises(ShardError, match=r"splits\.test\.shards\[0\] is '\.\./raw/captions\.json'"):
        list(iter_samples(shards, "test"))


def test_a_reader_that_stops_early_gets_the_size_check_only(shards: Path) -> None:
    """register reads one test image: a digest needs the whole shard, so none is checked."""
    path = shards / "test-000000.tar"
    data = bytearray(path.read_bytes())
    data[-1] ^= 0xFF
    path.write_bytes(bytes(data))
    meta, jpg = next(iter_samples(shards, "test"))
    assert jpg and meta["split"] == "test"
