"""COCO 2014 / 2017 from files in the official layout (local here; over HTTP in integration)."""

from __future__ import annotations

import dataclasses
import hashlib
import json
import shutil
import zipfile
from pathlib import Path

import pytest

from captioning.config import CocoConfig, FetchConfig
from captioning.data.download import DownloadError
from captioning.data.layout import AnnotationError, load_dataset
from captioning.data.sources.common import SourceError
from captioning.data.sources.registry import fetch
from fake_datasets import (
    COCO_HOST,
    COCO_SPLITS,
    KARPATHY_URL,
    coco_captions,
    karpathy_coco,
    make_coco,
    write_zip,
)


def sha256(path: Path) -> str:
    return "sha256:" + hashlib.sha256(path.read_bytes()).hexdigest()


def coco_cfg(files: dict[str, Path], **coco) -> FetchConfig:
    """Checksums of the tiny files replace the shipped ones of the real files."""
    checksums = {name: sha256(path) for name, path in files.items()}
    coco = {"karpathy": KARPATHY_URL, "checksums": checksums, **coco}
    return FetchConfig(source="coco2014", coco=CocoConfig(**coco))


@pytest.fixture
def mirror(tmp_path) -> tuple[Path, dict[str, Path]]:
    root = tmp_path / "mirror"
    return root, make_coco(root, "2014")


def test_coco2014_karpathy_split_from_a_local_mirror(mirror, tmp_path):
    root, files = mirror
    cfg = dataclasses.replace(coco_cfg(files), mirror=str(root))
    summary = fetch(cfg, tmp_path / "raw", tmp_path / "downloads")
    assert summary == {"train": 6, "val": 2, "test": 2, "images": 10, "annotations": 50}
    data = load_dataset(tmp_path / "raw")
    assert {split: [r.image_id for r in records] for split, records in data.items()} == COCO_SPLITS
    first = data["train"][0]
    assert first.file_name == "train2014/COCO_train2014_000000000009.jpg"
    assert first.captions == tuple(coco_captions(9))  # official captions, stripped
    assert first.extra == {"width": 32, "height": 32}
    # restval (from val2014) joined train, with its folder.
    assert data["train"][-1].file_name == "val2014/COCO_val2014_000000000073.jpg"
    with zipfile.ZipFile(files["train2014.zip"]) as archive:
        original = archive.read("train2014/COCO_train2014_000000000009.jpg")
    assert (tmp_path / "raw" / "images" / first.file_name).read_bytes() == original
    info = json.loads((tmp_path / "raw" / "captions.json").read_text())["info"]
    assert info == {"source": "coco2014", "year": "2014", "split": "karpathy"}


def test_only_caption_files_are_extracted_from_the_annotations(mirror, tmp_path):
    root, files = mirror
    fetch(dataclasses.replace(coco_cfg(files), mirror=str(root)), tmp_path / "raw", tmp_path / "dl")
    extracted = [p.name for p in (tmp_path / "dl" / "extracted").rglob("*.json")]
    assert "captions_train2014.json" in extracted and "instances_train2014.json" not in extracted


def test_coco2017_with_the_official_split(tmp_path):
    files = make_coco(tmp_path / "mirror", "2017")
    cfg = dataclasses.replace(
        coco_cfg(files, split="official", karpathy=""),
        source="coco2017",
        mirror=str(tmp_path / "mirror"),
    )
    fetch(cfg, tmp_path / "raw", tmp_path / "dl")
    data = load_dataset(tmp_path / "raw")
    assert [r.image_id for r in data["train"]] == [9, 25, 30, 34]
    # val2017 halved by image id into val and test.
    assert [r.image_id for r in data["val"]] == [42, 73, 74]
    assert [r.image_id for r in data["test"]] == [133, 136, 139]
    assert data["val"][0].file_name == "val2017/000000000042.jpg"


def test_coco2017_takes_the_karpathy_split_by_image_id(tmp_path):
    files = make_coco(tmp_path / "mirror", "2017")
    cfg = dataclasses.replace(coco_cfg(files), source="coco2017", mirror=str(tmp_path / "mirror"))
    fetch(cfg, tmp_path / "raw", tmp_path / "dl")
    data = load_dataset(tmp_path / "raw")
    assert {split: [r.image_id for r in records] for split, records in data.items()} == COCO_SPLITS


def test_local_dir_with_extracted_folders(mirror, tmp_path):
    root, files = mirror
    local = tmp_path / "coco"
    for name in ("train2014.zip", "val2014.zip", "annotations_trainval2014.zip"):
        with zipfile.ZipFile(files[name]) as archive:
            archive.extractall(local)
    karpathy = tmp_path / "dataset_coco.json"
    karpathy.write_text(json.dumps(karpathy_coco()))
    cfg = FetchConfig(
        source="coco2014", coco=CocoConfig(local_dir=str(local), karpathy=str(karpathy))
    )
    fetch(cfg, tmp_path / "raw", tmp_path / "dl")
    assert len(load_dataset(tmp_path / "raw")["train"]) == 6
    assert not (tmp_path / "dl" / "extracted").exists()  # nothing to extract


def test_local_dir_zips_are_checked_against_the_shipped_sizes(mirror, tmp_path):
    root, files = mirror
    local = tmp_path / "coco"
    local.mkdir()
    for name in ("train2014.zip", "val2014.zip", "annotations_trainval2014.zip"):
        shutil.copy(files[name], local / name)
    cfg = FetchConfig(
        source="coco2014", coco=CocoConfig(local_dir=str(local), karpathy=KARPATHY_URL)
    )
    with pytest.raises(
        DownloadError, match=r"annotations_trainval2014\.zip: \d+ bytes, expected 252872794"
    ):
        fetch(cfg, tmp_path / "raw", tmp_path / "dl")
    assert not (tmp_path / "raw").exists()


def test_karpathy_must_be_set_for_the_karpathy_split(mirror, tmp_path):
    root, files = mirror
    cfg = dataclasses.replace(coco_cfg(files, karpathy=""), mirror=str(root))
    with pytest.raises(SourceError, match="fetch.coco.karpathy is not set"):
        fetch(cfg, tmp_path / "raw", tmp_path / "dl")


def test_karpathy_image_missing_from_the_annotations(mirror, tmp_path):
    root, files = mirror
    split = karpathy_coco()
    split["images"][3]["cocoid"] = 999999
    karpathy = tmp_path / "dataset_coco.json"
    karpathy.write_text(json.dumps(split))
    cfg = dataclasses.replace(coco_cfg(files, karpathy=str(karpathy)), mirror=str(root))
    with pytest.raises(AnnotationError, match=r"dataset_coco.json: images\[3\]: cocoid 999999"):
        fetch(cfg, tmp_path / "raw", tmp_path / "dl")


def test_malformed_caption_file_names_the_file_and_the_place(mirror, tmp_path):
    root, files = mirror
    name = "annotations/captions_val2014.json"
    with zipfile.ZipFile(files["annotations_trainval2014.zip"]) as archive:
        content = {n: archive.read(n) for n in archive.namelist()}
    captions = json.loads(content[name])
    captions["annotations"][7]["caption"] = None
    content[name] = json.dumps(captions).encode()
    write_zip(files["annotations_trainval2014.zip"], content)
    cfg = dataclasses.replace(coco_cfg(files), mirror=str(root))
    with pytest.raises(
        AnnotationError, match=r"captions_val2014.json: annotations\[7\]\.caption: expected str"
    ):
        fetch(cfg, tmp_path / "raw", tmp_path / "dl")


def test_urls_follow_coco_url(mirror, tmp_path):
    root, files = mirror
    cfg = coco_cfg(
        files, url=f"file://{root / COCO_HOST}", karpathy=str(files["caption_datasets.zip"])
    )
    fetch(cfg, tmp_path / "raw", tmp_path / "dl")
    assert len(load_dataset(tmp_path / "raw")["test"]) == 2
