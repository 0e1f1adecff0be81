"""Hostile data files through the fetch and shard stage CLIs: paths that leave their root,
text that is not UTF-8, and captions that are blank, dangling or too long.

Inputs live under ``tmp_path/in``; the stages write ``tmp_path/data/raw`` (fetch, with
``data/downloads``) and ``tmp_path/data/shards`` (shard). A refused input must leave every other
file under ``tmp_path`` as it was.
"""

from __future__ import annotations

import json
import os
import zipfile
from collections.abc import Callable
from pathlib import Path

import pytest
import yaml

from conftest import jpeg_bytes, make_layout
from fake_datasets import (
    FLICKR8K_NAMES,
    FLICKR8K_SPLITS,
    FLICKR30K_NAMES,
    FLICKR30K_SPLITS,
    flickr_captions,
    karpathy_flickr,
    make_coco,
)

from .conftest import REPO, assert_one_line_error, run_fetch, run_shard, tree_digest

# --- inputs ---------------------------------------------------------------------------------


def write_params(tmp_path: Path, fetch: dict) -> Path:
    """The repository's params.yaml with ``fetch`` overriding its fetch section (and one shard
    worker: the tiny inputs need no pool)."""
    params = yaml.safe_load((REPO / "params.yaml").read_text())
    params["fetch"].update(fetch)
    params["shard"]["workers"] = 1
    path = tmp_path / "params.yaml"
    path.write_text(yaml.safe_dump(params))
    return path


def coco_local_dir(tmp_path: Path) -> Path:
    """COCO 2017 as extracted folders (annotations/, train2017/, val2017/) in ``in/sets/coco``:
    three levels below ``in``, so that ``../../../x`` from an image folder is ``in/x``."""
    files = make_coco(tmp_path / "in" / "mirror", "2017")
    local = tmp_path / "in" / "sets" / "coco"
    for name in ("train2017.zip", "val2017.zip", "annotations_trainval2017.zip"):
        with zipfile.ZipFile(files[name]) as archive:
            archive.extractall(local)
    return local


def coco_params(tmp_path: Path, local: Path) -> Path:
    return write_params(
        tmp_path, {"source": "coco2017", "coco": {"local_dir": str(local), "split": "official"}}
    )


def edit_json(path: Path, change: Callable[[dict], None]) -> None:
    data = json.loads(path.read_text())
    change(data)
    path.write_text(json.dumps(data))


def flickr8k_folder(root: Path, layout: str) -> Path:
    """Flickr8k as a folder: the original layout (Flicker8k_Dataset/ + token file) or Kaggle's
    (Images/ + captions.txt), both with the Flickr_8k.*Images.txt split files."""
    images = root / ("Flicker8k_Dataset" if layout == "original" else "Images")
    images.mkdir(parents=True)
    for i, name in enumerate(FLICKR8K_NAMES):
        (images / name).write_bytes(jpeg_bytes(i, size=32))
    pairs = [(n, k, c) for n in FLICKR8K_NAMES for k, c in enumerate(flickr_captions(n))]
    if layout == "original":
        lines = [f"{n}#{k}\t{c}" for n, k, c in pairs]
        (root / "Flickr8k.token.txt").write_text("\n".join(lines) + "\n")
    else:
        rows = ["image,caption"] + [f'{n},"{c.replace(chr(34), chr(34) * 2)}"' for n, _, c in pairs]
        (root / "captions.txt").write_text("\n".join(rows) + "\n")
    for split, part in (("train", "train"), ("val", "dev"), ("test", "test")):
        names = FLICKR8K_SPLITS[split]
        (root / f"Flickr_8k.{part}Images.txt").write_text("\n".join(names) + "\n")
    return root


def flickr30k_folder(root: Path) -> Path:
    images = root / "flickr30k-images"
    images.mkdir(parents=True)
    for i, name in enumerate(FLICKR30K_NAMES):
        (images / name).write_bytes(jpeg_bytes(i, size=32))
    split = karpathy_flickr(FLICKR30K_SPLITS, "flickr30k")
    (root / "dataset_flickr30k.json").write_text(json.dumps(split))
    return root


def flickr_params(tmp_path: Path, source: str, root: Path) -> Path:
    return write_params(tmp_path, {"source": source, source: {"files": [str(root)]}})


def replace_line(path: Path, number: int, line: str) -> None:
    lines = path.read_text().splitlines()
    lines[number - 1] = line
    path.write_text("\n".join(lines) + "\n")


# --- the stages -----------------------------------------------------------------------------


def shard_stage(tmp_path: Path, raw: Path):
    params = write_params(tmp_path, {})
    return run_shard(params, raw, tmp_path / "data" / "shards", cwd=tmp_path)


def outputs(tmp_path: Path) -> tuple[Path, ...]:
    """What the fetch and shard stages may write (and params.yaml, written by the test)."""
    data = tmp_path / "data"
    return (
        data / "raw",
        data / "downloads",
        data / "shards",
        data / ".shards.partial",
        tmp_path / "params.yaml",
    )


def refused_untouched(tmp_path: Path, run: Callable[[], object], *fragments: str) -> str:
    """``run`` fails with one line holding ``fragments``, writes no output and changes nothing
    else under ``tmp_path``."""
    before = tree_digest(tmp_path, exclude=outputs(tmp_path))
    line = assert_one_line_error(run(), *fragments)
    assert tree_digest(tmp_path, exclude=outputs(tmp_path)) == before
    assert not (tmp_path / "data" / "raw").exists()
    assert not (tmp_path / "data" / "shards").exists()
    return line


# --- 1. paths that leave their root ---------------------------------------------------------


def test_coco_file_name_that_climbs_out_is_refused(tmp_path):
    """Issue 18.1: ``../../../planted.jpg`` made fetch write data/planted.jpg (and overwrite a
    file there); a re-run crashed with SameFileError."""
    local = coco_local_dir(tmp_path)
    (tmp_path / "in" / "planted.jpg").write_bytes(jpeg_bytes(1, size=32))
    (tmp_path / "data").mkdir()
    (tmp_path / "data" / "planted.jpg").write_bytes(b"the user's file")
    captions = local / "annotations" / "captions_train2017.json"
    edit_json(captions, lambda d: d["images"][3].update(file_name="../../../planted.jpg"))
    params = coco_params(tmp_path, local)
    refused_untouched(
        tmp_path,
        lambda: run_fetch(tmp_path, params),
        f"{captions}: images[3].file_name: '../../../planted.jpg'",
        "escapes",
        str(local / "train2017"),
    )


def test_coco_image_that_is_a_link_out_of_its_folder_is_refused(tmp_path):
    local = coco_local_dir(tmp_path)
    (tmp_path / "in" / "secret.jpg").write_bytes(jpeg_bytes(2, size=32))
    image = local / "train2017" / "000000000025.jpg"
    image.unlink()
    image.symlink_to(tmp_path / "in" / "secret.jpg")
    params = coco_params(tmp_path, local)
    refused_untouched(
        tmp_path,
        lambda: run_fetch(tmp_path, params),
        "captions_train2017.json: images[1].file_name: '000000000025.jpg' resolves outside",
    )


# (source, layout, data file, how to break it, the place named in the error)
FLICKR_NAMES = {
    "split file": ("flickr8k", "original", "Flickr_8k.trainImages.txt", 2, "line 2"),
    "token file": ("flickr8k", "original", "Flickr8k.token.txt", 3, "line 3"),
    "Kaggle captions.txt": ("flickr8k", "kaggle", "captions.txt", 4, "line 4"),
    "Karpathy filename": ("flickr30k", "", "dataset_flickr30k.json", 2, "images[2].filename"),
}


@pytest.mark.parametrize("case", FLICKR_NAMES)
def test_flickr_name_that_climbs_out_is_refused(tmp_path, case):
    source, layout, name, index, place = FLICKR_NAMES[case]
    root = tmp_path / "in" / "flickr"
    if source == "flickr8k":
        flickr8k_folder(root, layout)
    else:
        flickr30k_folder(root)
    (tmp_path / "in" / "planted.jpg").write_bytes(jpeg_bytes(3, size=32))
    bad = "../../planted.jpg"
    path = root / name
    if name.endswith(".json"):
        edit_json(path, lambda d: d["images"][index].update(filename=bad))
    elif name == "Flickr8k.token.txt":
        replace_line(path, index, f"{bad}#0\tA planted caption .")
    elif name == "captions.txt":
        replace_line(path, index, f"{bad},A planted caption .")
    else:
        replace_line(path, index, bad)
    params = flickr_params(tmp_path, source, root)
    refused_untouched(
        tmp_path, lambda: run_fetch(tmp_path, params), f"{path}: {place}: {bad!r}", "escapes"
    )


@pytest.mark.parametrize("how", ["..", "absolute", "link"])
def test_layout_file_name_outside_images_is_refused_by_shard(tmp_path, how):
    """Issue 18.1: the shard stage opened ``images/<file_name>`` for any name (/etc/hostname)."""
    raw = tmp_path / "in" / "raw"
    make_layout(raw, {"train": 4, "val": 1, "test": 1})
    outside = tmp_path / "in" / "outside.jpg"
    outside.write_bytes(jpeg_bytes(4))
    name = {"..": "../../outside.jpg", "absolute": str(outside), "link": "img_0003.jpg"}[how]
    if how == "link":
        (raw / "images" / name).unlink()
        (raw / "images" / name).symlink_to(outside)
    captions = raw / "captions.json"
    edit_json(captions, lambda d: d["images"][2].update(file_name=name))
    reason = {"..": "escapes", "absolute": "absolute path", "link": "resolves outside"}[how]
    refused_untouched(
        tmp_path,
        lambda: shard_stage(tmp_path, raw),
        f"{captions}: images[2].file_name: {name!r}",
        reason,
    )


# --- 2. text that is not UTF-8 --------------------------------------------------------------


def latin1(path: Path, old: str, new: str) -> int:
    """Rewrite ``path`` in Latin-1 with ``old`` replaced by ``new`` (which has an accent);
    return the byte offset of the first byte that is not UTF-8."""
    text = path.read_text()
    assert old in text
    data = text.replace(old, new, 1).encode("latin-1")
    path.write_bytes(data)
    return next(i for i, byte in enumerate(data) if byte >= 0x80)


def test_coco_caption_file_in_latin1_is_refused(tmp_path):
    local = coco_local_dir(tmp_path)
    captions = local / "annotations" / "captions_val2017.json"
    offset = latin1(captions, "a photo of thing 74", "un café 74")
    params = coco_params(tmp_path, local)
    refused_untouched(
        tmp_path,
        lambda: run_fetch(tmp_path, params),
        f"{captions}: line 1, byte offset {offset}:",
        "expected UTF-8",
    )


# (source, layout, data file, text to replace) for the Flickr text files
FLICKR_TEXT = {
    "token file": ("flickr8k", "original", "Flickr8k.token.txt", "A dog"),
    "Kaggle captions.txt": ("flickr8k", "kaggle", "captions.txt", "A dog"),
    "split file": ("flickr8k", "original", "Flickr_8k.devImages.txt", FLICKR8K_NAMES[7]),
    "Karpathy json": ("flickr30k", "", "dataset_flickr30k.json", "A dog"),
}


@pytest.mark.parametrize("case", FLICKR_TEXT)
def test_flickr_text_file_in_latin1_is_refused(tmp_path, case):
    source, layout, name, old = FLICKR_TEXT[case]
    root = tmp_path / "in" / "flickr"
    if source == "flickr8k":
        flickr8k_folder(root, layout)
    else:
        flickr30k_folder(root)
    offset = latin1(root / name, old, "Un chien é")
    params = flickr_params(tmp_path, source, root)
    refused_untouched(
        tmp_path,
        lambda: run_fetch(tmp_path, params),
        f"{root / name}: line ",
        f"byte offset {offset}:",
        "expected UTF-8",
    )


def test_layout_captions_in_latin1_are_refused_by_shard(tmp_path):
    raw = tmp_path / "in" / "raw"
    make_layout(raw, {"train": 4, "val": 1, "test": 1})
    offset = latin1(raw / "captions.json", "a picture number 1", "une photo numéro 1")
    refused_untouched(
        tmp_path,
        lambda: shard_stage(tmp_path, raw),
        f"{raw / 'captions.json'}: line 1, byte offset {offset}:",
        "expected UTF-8",
    )


# --- 4. blank, dangling and over-long captions ----------------------------------------------

TOO_LONG = "a very long caption " * 25_000  # 500 KB, far past layout.MAX_CAPTION_CHARS


def spoil(annotation: dict, kind: str) -> None:
    if kind == "blank":
        annotation["caption"] = "   "
    elif kind == "dangling":
        annotation["image_id"] = 999_999
    else:
        annotation["caption"] = TOO_LONG


def counts(kind: str) -> dict[str, int]:
    return {k: int(k == kind) for k in ("blank", "dangling", "too long")}


def logged_counts(kind: str) -> str:
    """How the stages log the counts: ``captions skipped: 1 blank, 0 dangling, 0 too long``."""
    return "captions skipped: " + ", ".join(f"{n} {k}" for k, n in counts(kind).items())


@pytest.mark.parametrize("kind", ["blank", "dangling", "too long"])
def test_coco_bad_caption_is_skipped_and_counted_by_fetch(tmp_path, kind):
    """Issue 18.4: a blank caption was kept, a dangling one failed the fetch, a long one kept."""
    local = coco_local_dir(tmp_path)
    captions = local / "annotations" / "captions_train2017.json"
    edit_json(captions, lambda d: spoil(d["annotations"][6], kind))
    result = run_fetch(tmp_path, coco_params(tmp_path, local))
    assert result.returncode == 0, result.stderr
    assert f"'captions_skipped': {counts(kind)}" in result.stderr  # the summary
    assert logged_counts(kind) in result.stderr
    written = json.loads((tmp_path / "data" / "raw" / "captions.json").read_text())
    assert len(written["annotations"]) == 49
    assert all(a["caption"].strip() and len(a["caption"]) < 100 for a in written["annotations"])


@pytest.mark.parametrize("kind", ["blank", "dangling", "too long"])
def test_layout_bad_caption_is_skipped_and_counted_by_shard(tmp_path, kind):
    raw = tmp_path / "in" / "raw"
    make_layout(raw, {"train": 4, "val": 1, "test": 1})
    edit_json(raw / "captions.json", lambda d: spoil(d["annotations"][2], kind))
    result = shard_stage(tmp_path, raw)
    assert result.returncode == 0, result.stderr
    assert logged_counts(kind) in result.stderr
    shards = tmp_path / "data" / "shards"
    manifest = json.loads((shards / "manifest.json").read_text())
    assert manifest["captions_skipped"] == counts(kind)
    assert manifest["splits"]["train"]["count"] == 4  # every image is still there
    assert os.path.getsize(shards / "train-000000.tar") < 100_000  # the long caption is not
