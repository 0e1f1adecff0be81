"""Tiny archives in the real COCO and Flickr layouts (file names, folders, annotation formats),
made on the fly for the fetch tests. Images are small random JPEGs."""

from __future__ import annotations

import io
import json
import tarfile
import zipfile
from pathlib import Path

from conftest import jpeg_bytes

# Where the official files live, below a mirror root laid out as <host>/<path>.
COCO_HOST = "images.cocodataset.org"
KARPATHY_URL = "http://cs.stanford.edu/people/karpathy/deepimagesent/caption_datasets.zip"
KARPATHY_PATH = "cs.stanford.edu/people/karpathy/deepimagesent/caption_datasets.zip"

# COCO ids of the tiny train<year> / val<year> subsets, and their Karpathy split.
COCO_TRAIN_IDS = [9, 25, 30, 34]
COCO_VAL_IDS = [42, 73, 74, 133, 136, 139]
COCO_KARPATHY = {42: "restval", 73: "restval", 74: "val", 133: "val", 136: "test", 139: "test"}
COCO_SPLITS = {"train": [9, 25, 30, 34, 42, 73], "val": [74, 133], "test": [136, 139]}


def write_zip(path: Path, files: dict[str, bytes]) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    with zipfile.ZipFile(path, "w") as archive:
        for name, data in files.items():
            archive.writestr(name, data)
    return path


def write_tar(path: Path, files: dict[str, bytes], mode: str = "w:gz") -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    with tarfile.open(path, mode) as archive:
        for name, data in files.items():
            info = tarfile.TarInfo(name)
            info.size = len(data)
            archive.addfile(info, io.BytesIO(data))
    return path


def coco_file_name(image_id: int, subset: str, year: str) -> str:
    if year == "2014":
        return f"COCO_{subset}_{image_id:012d}.jpg"
    return f"{image_id:012d}.jpg"


def coco_captions(image_id: int) -> list[str]:
    return [f"a photo of thing {image_id} seen from side {k}" for k in range(5)]


def make_coco(root: Path, year: str = "2014", image_size: int = 32) -> dict[str, Path]:
    """The official zips under ``root/images.cocodataset.org/`` and Karpathy's zip under
    ``root/cs.stanford.edu/...``; returns the path of each file by name. Images are random
    ``image_size``-pixel squares (a larger size makes archives of megabytes)."""
    paths: dict[str, Path] = {}
    annotations: dict[str, bytes] = {}
    for subset_name, ids in (("train", COCO_TRAIN_IDS), ("val", COCO_VAL_IDS)):
        subset = f"{subset_name}{year}"
        images = {
            f"{subset}/{coco_file_name(i, subset, year)}": jpeg_bytes(i, size=image_size)
            for i in ids
        }
        paths[f"{subset}.zip"] = write_zip(root / COCO_HOST / "zips" / f"{subset}.zip", images)
        captions = {
            "info": {"description": "tiny COCO"},
            "licenses": [],
            "images": [
                {
                    "id": i,
                    "file_name": coco_file_name(i, subset, year),
                    "width": image_size,
                    "height": image_size,
                    "license": 1,
                }
                for i in ids
            ],
            "annotations": [
                {"id": i * 10 + k, "image_id": i, "caption": caption + " "}
                for i in ids
                for k, caption in enumerate(coco_captions(i))
            ],
        }
        annotations[f"annotations/captions_{subset}.json"] = json.dumps(captions).encode()
        annotations[f"annotations/instances_{subset}.json"] = b'{"not": "needed"}'
    name = f"annotations_trainval{year}.zip"
    paths[name] = write_zip(root / COCO_HOST / "annotations" / name, annotations)
    paths["caption_datasets.zip"] = write_zip(
        root / KARPATHY_PATH, {"dataset_coco.json": json.dumps(karpathy_coco()).encode()}
    )
    return paths


def karpathy_coco() -> dict:
    images = []
    for i in COCO_TRAIN_IDS + COCO_VAL_IDS:
        subset = "train2014" if i in COCO_TRAIN_IDS else "val2014"
        images.append(
            {
                "filepath": subset,
                "filename": coco_file_name(i, subset, "2014"),
                "cocoid": i,
                "imgid": len(images),
                "split": COCO_KARPATHY.get(i, "train"),
                "sentences": [{"raw": c, "tokens": c.split()} for c in coco_captions(i)],
            }
        )
    return {"images": images, "dataset": "coco"}


def split3(names: list[str], val_start: int, test_start: int) -> dict[str, list[str]]:
    return {
        "train": names[:val_start],
        "val": names[val_start:test_start],
        "test": names[test_start:],
    }


# Flickr8k: names shaped like the real ones (<photo id>_<secret>.jpg) and the standard split.
FLICKR8K_NAMES = [f"{1000268201 + 7919 * i}_{0x693B08CB0E + i:010x}.jpg" for i in range(10)]
FLICKR8K_SPLITS = split3(FLICKR8K_NAMES, 6, 8)


def flickr_captions(name: str) -> list[str]:
    stem = name.split("_")[0].split(".")[0]
    return [
        f"A dog , number {stem} , runs on the grass .",  # commas, as in the real captions
        f'Someone says "hello" to {stem} .',
        *[f"Picture {stem} with {k} things ." for k in range(3)],
    ]


def flickr8k_original(root: Path) -> list[Path]:
    """Flickr8k_Dataset.zip (images in Flicker8k_Dataset/) and Flickr8k_text.zip."""
    images = {
        f"Flicker8k_Dataset/{n}": jpeg_bytes(i, size=32) for i, n in enumerate(FLICKR8K_NAMES)
    }
    # The real archive carries macOS resource forks; they must not be taken for images.
    images[f"__MACOSX/Flicker8k_Dataset/._{FLICKR8K_NAMES[0]}"] = b"\x00\x05\x16\x07junk"
    tokens = [f"{n}#{k}\t{c}" for n in FLICKR8K_NAMES for k, c in enumerate(flickr_captions(n))]
    # The real token file also lists captions of an image that is in no split and no folder.
    tokens.append("2258277193_586949ec62.jpg.1#0\tA stray caption .")
    text = {
        "Flickr8k.token.txt": "\n".join(tokens) + "\n",
        "Flickr8k.lemma.token.txt": "\n".join(tokens) + "\n",
        "readme.txt": "tiny Flickr8k\n",
        **{
            f"Flickr_8k.{part}Images.txt": "\n".join(FLICKR8K_SPLITS[split]) + "\n"
            for split, part in (("train", "train"), ("val", "dev"), ("test", "test"))
        },
    }
    return [
        write_zip(root / "Flickr8k_Dataset.zip", images),
        write_zip(root / "Flickr8k_text.zip", {k: v.encode() for k, v in text.items()}),
    ]


def flickr8k_kaggle(root: Path) -> Path:
    """The Kaggle archive: Images/ + captions.txt (CSV with header image,caption)."""
    rows = ["image,caption"]
    for name in FLICKR8K_NAMES:
        for caption in flickr_captions(name):
            quoted = caption.replace('"', '""')
            # Kaggle quotes a caption with commas or quotes; test both forms it takes.
            rows.append(f'{name},"{quoted}"' if '"' in caption else f"{name},{caption}")
    files = {f"Images/{n}": jpeg_bytes(i, size=32) for i, n in enumerate(FLICKR8K_NAMES)}
    files["captions.txt"] = ("\n".join(rows) + "\n").encode()
    return write_zip(root / "flickr8k.zip", files)


def karpathy_flickr(names_by_split: dict[str, list[str]], dataset: str) -> dict:
    images = []
    for split, names in names_by_split.items():
        for name in names:
            images.append(
                {
                    "filename": name,
                    "imgid": len(images),
                    "split": split,
                    "sentences": [{"raw": c, "tokens": c.split()} for c in flickr_captions(name)],
                }
            )
    return {"images": images, "dataset": dataset}


FLICKR30K_NAMES = [f"{1000092795 + 31 * i}.jpg" for i in range(8)]
FLICKR30K_SPLITS = split3(FLICKR30K_NAMES, 5, 7)


def flickr30k(root: Path) -> list[Path]:
    """flickr30k-images.tar.gz and dataset_flickr30k.json."""
    images = {
        f"flickr30k-images/{n}": jpeg_bytes(i, size=32) for i, n in enumerate(FLICKR30K_NAMES)
    }
    images["flickr30k-images/readme.txt"] = b"tiny Flickr30k\n"
    split_file = root / "dataset_flickr30k.json"
    root.mkdir(parents=True, exist_ok=True)
    split_file.write_text(json.dumps(karpathy_flickr(FLICKR30K_SPLITS, "flickr30k")))
    return [write_tar(root / "flickr30k-images.tar.gz", images), split_file]
