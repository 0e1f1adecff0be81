"""Shared fixtures: tiny datasets in the internal layout, made on the fly (no network)."""

from __future__ import annotations

import atexit
import io
import json
import os
import shutil
import tempfile
from collections.abc import Callable
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

os.environ.setdefault("MLFLOW_DISABLE_TELEMETRY", "true")
os.environ.setdefault("DVC_NO_ANALYTICS", "1")
# Prefect state of the tests stays out of the user's ~/.prefect; no analytics.
if "PREFECT_HOME" not in os.environ:
    _prefect_home = tempfile.mkdtemp(prefix="prefect-home-")
    os.environ["PREFECT_HOME"] = _prefect_home
    atexit.register(shutil.rmtree, _prefect_home, ignore_errors=True)  # every session made one
os.environ.setdefault("PREFECT_SERVER_ANALYTICS_ENABLED", "false")
os.environ.setdefault("DO_NOT_TRACK", "1")


def jpeg_bytes(seed: int, size: int = 64, mode: str = "RGB", fmt: str = "JPEG") -> bytes:
    rng = np.random.default_rng(seed)
    array = rng.integers(0, 255, (size, size, 3), dtype=np.uint8)
    image = Image.fromarray(array).convert(mode)
    buffer = io.BytesIO()
    image.save(buffer, format=fmt)
    return buffer.getvalue()


def picture_number(image_id: int, index: int) -> str:
    return f"a picture number {index}"


def make_layout(
    root: Path,
    splits: dict[str, int],
    captions_per_image: int = 2,
    caption: Callable[[int, int], str] = picture_number,
) -> dict:
    """images/ + captions.json + splits.json with random images and simple captions
    (``caption(image_id, index)``; by default the same for every image)."""
    (root / "images").mkdir(parents=True)
    images, annotations, split_ids = [], [], {}
    image_id = 1
    for split, count in splits.items():
        split_ids[split] = []
        for _ in range(count):
            name = f"img_{image_id:04d}.jpg"
            (root / "images" / name).write_bytes(jpeg_bytes(image_id))
            images.append({"id": image_id, "file_name": name, "width": 64, "height": 64})
            for c in range(captions_per_image):
                annotations.append(
                    {
                        "id": len(annotations) + 1,
                        "image_id": image_id,
                        "caption": caption(image_id, c),
                    }
                )
            split_ids[split].append(image_id)
            image_id += 1
    coco = {"images": images, "annotations": annotations}
    (root / "captions.json").write_text(json.dumps(coco))
    (root / "splits.json").write_text(json.dumps(split_ids))
    return coco


def feature_workspace(root: Path, caption: Callable[[int, int], str] = picture_number) -> Path:
    """``root`` with raw/ (8 train, 2 val, 2 test images), shards/, features/ (a random-weight
    encoder's) and vocab.json: what a training run reads."""
    import torch

    from captioning.config import FeaturesConfig, ShardConfig, VocabConfig
    from captioning.data.shards import split_captions, write_shards
    from captioning.data.vocab import build_vocab
    from captioning.features.cache import extract_features

    make_layout(root / "raw", {"train": 8, "val": 2, "test": 2}, caption=caption)
    write_shards(root / "raw", root / "shards", ShardConfig())
    torch.manual_seed(0)
    extract_features(
        root / "shards",
        root / "features",
        FeaturesConfig(pretrained=False, batch_size=8, num_workers=0),
    )
    vocab, _ = build_vocab(split_captions(root / "shards", "train"), VocabConfig())
    vocab.save(root / "vocab.json")
    return root


def pytest_collection_modifyitems(config, items):
    """Tests marked ``cuda`` need a GPU: skipped, with the reason, where torch sees none."""
    marked = [item for item in items if item.get_closest_marker("cuda")]
    if not marked:
        return
    import torch

    if torch.cuda.is_available():
        return
    skip = pytest.mark.skip(
        reason=f"needs CUDA, which torch {torch.__version__} does not see here "
        "(make gpu-check runs these on a GPU: docs/gpu-check.md)"
    )
    for item in marked:
        item.add_marker(skip)


@pytest.fixture
def tiny_layout(tmp_path: Path) -> Path:
    root = tmp_path / "raw"
    make_layout(root, {"train": 6, "val": 2, "test": 2})
    return root


@pytest.fixture
def file_server(tmp_path: Path):
    """A file server on 127.0.0.1 (a free port) serving ``server.root``; stopped at teardown."""
    from fileserver import FileServer

    root = tmp_path / "served"
    root.mkdir()
    server = FileServer(root)
    yield server
    server.close()


@pytest.fixture(autouse=True, scope="module")
def one_thread_for_tiny_decoders(request):
    """The decoders of tests/unit/models are tiny: on 2 busy cores, 2 threads ran them ~6x
    slower than one. (A fixture here, not a conftest.py there: tests import this module's
    helpers as ``conftest``, which a second conftest.py would shadow.)"""
    import torch

    if "models" not in request.path.parts:
        yield
        return
    before = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(before)
