"""Real-dataset fetching end to end against a local HTTP server (127.0.0.1) acting as a mirror.

The server serves tiny archives in the real COCO and Flickr layouts, made here; every URL of
the sources is re-pointed at it with ``fetch.mirror``. Then the shard stage runs on the result.
"""

from __future__ import annotations

import dataclasses
import hashlib
import json
import subprocess
import sys
from pathlib import Path

import pytest
import yaml

from captioning.config import CocoConfig, FetchConfig, Flickr8kConfig, ShardConfig
from captioning.data.download import DownloadError
from captioning.data.extract import ExtractError
from captioning.data.layout import load_dataset
from captioning.data.shards import iter_samples, write_shards
from captioning.data.sources.registry import fetch
from fake_datasets import (
    COCO_HOST,
    COCO_SPLITS,
    KARPATHY_URL,
    flickr8k_kaggle,
    flickr8k_original,
    make_coco,
    write_zip,
)

REPO = Path(__file__).resolve().parents[2]
TRAIN_ZIP = f"/{COCO_HOST}/zips/train2014.zip"


def sha256(path: Path) -> str:
    return "sha256:" + hashlib.sha256(path.read_bytes()).hexdigest()


@pytest.fixture
def coco_mirror(file_server):
    files = make_coco(file_server.root, "2014")
    checksums = {name: sha256(path) for name, path in files.items()}
    cfg = FetchConfig(
        source="coco2014",
        mirror=file_server.url,
        coco=CocoConfig(karpathy=KARPATHY_URL, checksums=checksums),
    )
    return file_server, files, cfg


def test_coco_download_resumes_a_dropped_connection_and_shards(coco_mirror, tmp_path, monkeypatch):
    server, files, cfg = coco_mirror
    waits: list[float] = []
    monkeypatch.setattr("captioning.data.download.time.sleep", waits.append)
    size = files["train2014.zip"].stat().st_size
    server.drop_after[TRAIN_ZIP] = size // 2
    raw, downloads = tmp_path / "raw", tmp_path / "downloads"
    fetch(cfg, raw, downloads)
    # The first request was cut half-way; the second asked for the rest only.
    assert server.requested(TRAIN_ZIP) == [None, f"bytes={size // 2}-"]
    assert waits == [2.0]  # one retry, after the first backoff
    kept = downloads / server.url.removeprefix("http://").replace(":", "_") / TRAIN_ZIP[1:]
    assert kept.read_bytes() == files["train2014.zip"].read_bytes()
    data = load_dataset(raw)
    assert {split: [r.image_id for r in records] for split, records in data.items()} == COCO_SPLITS

    manifest = write_shards(raw, tmp_path / "shards", ShardConfig(max_count=4, workers=1))
    assert {s: e["count"] for s, e in manifest["splits"].items()} == {
        "train": 6,
        "val": 2,
        "test": 2,
    }
    assert manifest["skipped"] == [] and manifest["splits"]["train"]["reencoded"] == 0
    meta, jpg = next(iter_samples(tmp_path / "shards", "test"))
    assert meta["file_name"] == "val2014/COCO_val2014_000000000136.jpg"
    assert jpg == (raw / "images" / meta["file_name"]).read_bytes()

    # A re-run with every file complete downloads nothing.
    before = len(server.requests)
    fetch(cfg, tmp_path / "raw2", downloads)
    assert len(server.requests) == before
    assert (tmp_path / "raw2" / "captions.json").read_bytes() == (
        raw / "captions.json"
    ).read_bytes()


def test_coco_wrong_checksum_fails_clearly_and_the_file_is_not_used(coco_mirror, tmp_path):
    server, files, cfg = coco_mirror
    wrong = "sha256:" + "1" * 64
    checksums = {**cfg.coco.checksums, "val2014.zip": wrong}
    cfg = dataclasses.replace(cfg, coco=dataclasses.replace(cfg.coco, checksums=checksums))
    with pytest.raises(DownloadError) as err:
        fetch(cfg, tmp_path / "raw", tmp_path / "downloads")
    message = str(err.value)
    assert f"{server.url}/{COCO_HOST}/zips/val2014.zip" in message
    assert f"checksum mismatch: expected {wrong}, found {sha256(files['val2014.zip'])}" in message
    assert not list((tmp_path / "downloads").rglob("val2014.zip*"))
    assert not (tmp_path / "raw").exists()


def test_archive_with_an_escaping_entry_is_refused(coco_mirror, tmp_path):
    server, files, cfg = coco_mirror
    evil = write_zip(
        files["train2014.zip"],
        {"train2014/COCO_train2014_000000000009.jpg": b"x", "../../../escaped.txt": b"gotcha"},
    )
    cfg = dataclasses.replace(
        cfg,
        coco=dataclasses.replace(
            cfg.coco, checksums={**cfg.coco.checksums, "train2014.zip": sha256(evil)}
        ),
    )
    with pytest.raises(ExtractError, match=r"'\.\./\.\./\.\./escaped\.txt' escapes the target"):
        fetch(cfg, tmp_path / "raw", tmp_path / "downloads")
    assert not list(tmp_path.rglob("escaped.txt"))
    assert not (tmp_path / "raw").exists()
    assert not list((tmp_path / "downloads" / "extracted").glob("train2014*"))


def test_both_flickr8k_layouts_over_http_give_the_same_layout(file_server, tmp_path):
    original = flickr8k_original(file_server.root / "example.org" / "flickr8k")
    kaggle = flickr8k_kaggle(file_server.root / "example.org" / "kaggle")
    roots = {}
    for name, paths in (("original", original), ("kaggle", [kaggle, original[1]])):
        urls = [f"http://{p.relative_to(file_server.root)}" for p in paths]
        cfg = FetchConfig(
            source="flickr8k", mirror=file_server.url, flickr8k=Flickr8kConfig(files=urls)
        )
        roots[name] = tmp_path / name
        fetch(cfg, roots[name], tmp_path / "downloads")
    assert (roots["original"] / "splits.json").read_bytes() == (
        roots["kaggle"] / "splits.json"
    ).read_bytes()
    captions = {n: json.loads((r / "captions.json").read_text()) for n, r in roots.items()}
    for entry in captions.values():
        entry["info"].pop("layout")
    assert captions["original"] == captions["kaggle"]


def test_fetch_stage_cli_on_the_mirror(coco_mirror, tmp_path):
    server, _, cfg = coco_mirror
    params = yaml.safe_load((REPO / "params.yaml").read_text())
    params["fetch"].update(
        source="coco2014",
        mirror=server.url,
        coco={**params["fetch"]["coco"], "karpathy": KARPATHY_URL, "checksums": cfg.coco.checksums},
    )
    (tmp_path / "params.yaml").write_text(yaml.safe_dump(params))
    result = subprocess.run(
        [
            sys.executable,
            str(REPO / "stages" / "fetch.py"),
            "--params",
            str(tmp_path / "params.yaml"),
            "--out",
            str(tmp_path / "data" / "raw"),
            "--downloads",
            str(tmp_path / "data" / "downloads"),
        ],
        capture_output=True,
        text=True,
        env={"PYTHONPATH": str(REPO / "src"), "PATH": "/usr/bin:/bin"},
    )
    assert result.returncode == 0, result.stderr
    assert len(load_dataset(tmp_path / "data" / "raw")["train"]) == 6
