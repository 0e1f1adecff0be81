"""Flickr8k in both layouts found in the wild, and Flickr30k, from files in the real layouts."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from captioning.config import FetchConfig, Flickr8kConfig, Flickr30kConfig
from captioning.data.layout import AnnotationError, load_dataset
from captioning.data.sources.common import SourceError, photo_ids
from captioning.data.sources.flickr import read_kaggle_captions
from captioning.data.sources.registry import fetch
from fake_datasets import (
    FLICKR8K_NAMES,
    FLICKR8K_SPLITS,
    FLICKR30K_SPLITS,
    flickr8k_kaggle,
    flickr8k_original,
    flickr30k,
    flickr_captions,
    karpathy_flickr,
    write_zip,
)


def fetch8k(tmp_path: Path, name: str, files: list[Path], layout: str = "auto") -> Path:
    cfg = FetchConfig(
        source="flickr8k", flickr8k=Flickr8kConfig(files=[str(f) for f in files], layout=layout)
    )
    fetch(cfg, tmp_path / name, tmp_path / "downloads")
    return tmp_path / name


def layout_files(root: Path) -> dict:
    captions = json.loads((root / "captions.json").read_text())
    captions["info"].pop("layout")
    images = {p.name: p.read_bytes() for p in (root / "images").iterdir()}
    return {"captions": captions, "splits": (root / "splits.json").read_text(), "images": images}


def test_both_flickr8k_layouts_normalise_to_the_same_internal_layout(tmp_path):
    original = fetch8k(tmp_path, "original", flickr8k_original(tmp_path / "orig"))
    text_zip = tmp_path / "orig" / "Flickr8k_text.zip"  # the Kaggle layout has no split
    kaggle = fetch8k(tmp_path, "kaggle", [flickr8k_kaggle(tmp_path / "kaggle"), text_zip])
    assert json.loads((original / "captions.json").read_text())["info"]["layout"] == "original"
    assert json.loads((kaggle / "captions.json").read_text())["info"]["layout"] == "kaggle"
    assert layout_files(original) == layout_files(kaggle)

    data = load_dataset(original)
    ids = photo_ids(FLICKR8K_NAMES)
    for split, names in FLICKR8K_SPLITS.items():
        assert [r.file_name for r in data[split]] == sorted(names, key=ids.__getitem__)
    record = data["train"][0]
    assert record.image_id == 1000268201 and record.file_name == FLICKR8K_NAMES[0]
    assert record.captions == tuple(flickr_captions(FLICKR8K_NAMES[0]))
    assert record.extra == {"width": 32, "height": 32}
    # The token file's stray entry and the macOS resource forks are not images of the dataset.
    assert sorted(p.name for p in (original / "images").iterdir()) == sorted(FLICKR8K_NAMES)


def test_kaggle_layout_with_the_karpathy_split_file(tmp_path):
    original = fetch8k(tmp_path, "original", flickr8k_original(tmp_path / "orig"))
    split_file = tmp_path / "dataset_flickr8k.json"
    split_file.write_text(json.dumps(karpathy_flickr(FLICKR8K_SPLITS, "flickr8k")))
    kaggle = fetch8k(
        tmp_path, "kaggle", [flickr8k_kaggle(tmp_path / "kaggle"), split_file], layout="kaggle"
    )
    assert layout_files(original) == layout_files(kaggle)


def test_kaggle_layout_without_a_split_says_what_to_add(tmp_path):
    with pytest.raises(SourceError, match=r"no split found; add Flickr8k_text\.zip"):
        fetch8k(tmp_path, "raw", [flickr8k_kaggle(tmp_path / "kaggle")])
    assert not (tmp_path / "raw").exists()


def test_layout_forced_to_original_without_its_files(tmp_path):
    with pytest.raises(SourceError, match=r"Flickr8k\.token\.txt not found"):
        fetch8k(tmp_path, "raw", [flickr8k_kaggle(tmp_path / "kaggle")], layout="original")


def test_no_files_configured(tmp_path):
    with pytest.raises(SourceError, match=r"fetch\.flickr8k\.files is empty"):
        fetch8k(tmp_path, "raw", [])


def test_malformed_token_file_names_the_line(tmp_path):
    images, _ = flickr8k_original(tmp_path / "orig")
    text = tmp_path / "text"
    text.mkdir()
    (text / "Flickr8k.token.txt").write_text(f"{FLICKR8K_NAMES[0]}#0\tfine .\nno tab here\n")
    with pytest.raises(AnnotationError, match=r"Flickr8k\.token\.txt: line 2: expected"):
        fetch8k(tmp_path, "raw", [images, text])


def test_kaggle_captions_header_and_commas(tmp_path):
    path = tmp_path / "captions.txt"
    path.write_text('image,caption\na.jpg,A dog , running .\nb.jpg,"A ""quoted"" cat ."\n')
    assert read_kaggle_captions(path, tmp_path) == {
        "a.jpg": ["A dog , running ."],
        "b.jpg": ['A "quoted" cat .'],
    }
    path.write_text("name,text\na.jpg,x\n")
    with pytest.raises(AnnotationError, match="line 1: expected the header 'image,caption'"):
        read_kaggle_captions(path, tmp_path)


def test_flickr30k_from_a_tarball_and_the_karpathy_file(tmp_path):
    files = flickr30k(tmp_path / "f30k")
    cfg = FetchConfig(source="flickr30k", flickr30k=Flickr30kConfig(files=[str(f) for f in files]))
    summary = fetch(cfg, tmp_path / "raw", tmp_path / "dl")
    assert summary == {"train": 5, "val": 2, "test": 1, "images": 8, "annotations": 40}
    data = load_dataset(tmp_path / "raw")
    assert {s: [r.file_name for r in rs] for s, rs in data.items()} == FLICKR30K_SPLITS
    assert data["test"][0].image_id == int(FLICKR30K_SPLITS["test"][0].removesuffix(".jpg"))
    assert data["test"][0].captions == tuple(flickr_captions(FLICKR30K_SPLITS["test"][0]))


def test_flickr30k_split_file_inside_caption_datasets_zip(tmp_path):
    images, split_file = flickr30k(tmp_path / "f30k")
    bundle = write_zip(
        tmp_path / "caption_datasets.zip", {"dataset_flickr30k.json": split_file.read_bytes()}
    )
    cfg = FetchConfig(
        source="flickr30k", flickr30k=Flickr30kConfig(files=[str(images), str(bundle)])
    )
    fetch(cfg, tmp_path / "raw", tmp_path / "dl")
    assert len(load_dataset(tmp_path / "raw")["train"]) == 5


def test_flickr30k_images_missing(tmp_path):
    _, split_file = flickr30k(tmp_path / "f30k")
    cfg = FetchConfig(source="flickr30k", flickr30k=Flickr30kConfig(files=[str(split_file)]))
    with pytest.raises(SourceError, match="is in none of fetch.flickr30k.files"):
        fetch(cfg, tmp_path / "raw", tmp_path / "dl")


def test_photo_ids_fall_back_to_numbering_in_name_order():
    assert photo_ids(["20_b.jpg", "3_a.jpg"]) == {"20_b.jpg": 20, "3_a.jpg": 3}
    assert photo_ids(["b.jpg", "a.jpg"]) == {"a.jpg": 1, "b.jpg": 2}
    assert photo_ids(["7_a.jpg", "7_b.jpg"]) == {"7_a.jpg": 1, "7_b.jpg": 2}


def test_blank_captions_are_skipped_and_counted(tmp_path):
    images, _ = flickr8k_original(tmp_path / "orig")
    text = tmp_path / "text"
    text.mkdir()
    tokens = [f"{n}#0\t{c}" for n in FLICKR8K_NAMES for c in flickr_captions(n)[:1]]
    tokens[0] = f"{FLICKR8K_NAMES[0]}#0\t   "  # well formed, but blank
    (text / "Flickr8k.token.txt").write_text("\n".join(tokens) + "\n")
    for split, part in (("train", "train"), ("val", "dev"), ("test", "test")):
        (text / f"Flickr_8k.{part}Images.txt").write_text("\n".join(FLICKR8K_SPLITS[split]))
    cfg = FetchConfig(source="flickr8k", flickr8k=Flickr8kConfig(files=[str(images), str(text)]))
    summary = fetch(cfg, tmp_path / "raw", tmp_path / "downloads")
    assert summary["captions_skipped"] == {"blank": 1, "dangling": 0, "too long": 0}
    assert summary["annotations"] == len(FLICKR8K_NAMES) - 1
