import io
import json
import tarfile
from pathlib import Path

import pytest
from PIL import Image

from captioning.config import ShardConfig
from captioning.data.shards import iter_samples, read_manifest, sample_key, write_shards
from conftest import jpeg_bytes


def test_round_trip_keys_captions_and_images(tiny_layout, tmp_path):
    out = tmp_path / "shards"
    manifest = write_shards(tiny_layout, out, ShardConfig(max_count=4))
    assert manifest == read_manifest(out)
    assert manifest["splits"]["train"]["count"] == 6
    assert manifest["splits"]["train"]["shards"] == ["train-000000.tar", "train-000001.tar"]
    assert set(manifest["shards"]) == {
        "train-000000.tar",
        "train-000001.tar",
        "val-000000.tar",
        "test-000000.tar",
    }
    samples = list(iter_samples(out, "train"))
    assert [m["image_id"] for m, _ in samples] == [1, 2, 3, 4, 5, 6]
    meta, jpg = samples[0]
    assert meta["captions"] == ["a picture number 0", "a picture number 1"]
    # JPEG bytes pass through untouched when no conversion is needed.
    assert jpg == (tiny_layout / "images" / "img_0001.jpg").read_bytes()
    with tarfile.open(out / "train-000000.tar") as tar:
        assert tar.getnames()[:2] == [f"{sample_key(1)}.jpg", f"{sample_key(1)}.json"]


def test_shards_are_deterministic(tiny_layout, tmp_path):
    write_shards(tiny_layout, tmp_path / "a", ShardConfig())
    write_shards(tiny_layout, tmp_path / "b", ShardConfig())
    assert (tmp_path / "a" / "train-000000.tar").read_bytes() == (
        tmp_path / "b" / "train-000000.tar"
    ).read_bytes()


def test_missing_and_corrupt_images_are_counted_skips(tiny_layout, tmp_path):
    (tiny_layout / "images" / "img_0002.jpg").unlink()
    (tiny_layout / "images" / "img_0003.jpg").write_bytes(b"\xff\xd8\xff not really a jpeg")
    (tiny_layout / "images" / "img_0004.jpg").write_bytes(b"")
    manifest = write_shards(tiny_layout, tmp_path / "shards", ShardConfig())
    assert manifest["splits"]["train"]["count"] == 3
    assert manifest["splits"]["train"]["skipped"] == 3
    reasons = {s["file_name"]: s["reason"] for s in manifest["skipped"]}
    assert "missing file" in reasons["img_0002.jpg"]
    assert "not a decodable image" in reasons["img_0003.jpg"]
    kinds = {s["file_name"]: s["kind"] for s in manifest["skipped"]}
    assert kinds["img_0003.jpg"] == "not an image"
    assert "zero bytes" in reasons["img_0004.jpg"]
    on_disk = json.loads((tmp_path / "shards" / "manifest.json").read_text())
    assert len(on_disk["skipped"]) == 3
    assert [m["image_id"] for m, _ in iter_samples(tmp_path / "shards", "train")] == [1, 5, 6]


def test_png_named_jpg_and_grayscale_are_converted(tiny_layout, tmp_path):
    (tiny_layout / "images" / "img_0001.jpg").write_bytes(jpeg_bytes(1, fmt="PNG"))
    (tiny_layout / "images" / "img_0002.jpg").write_bytes(jpeg_bytes(2, mode="L"))
    write_shards(tiny_layout, tmp_path / "shards", ShardConfig())
    samples = dict((m["image_id"], jpg) for m, jpg in iter_samples(tmp_path / "shards", "train"))
    for image_id in (1, 2):
        image = Image.open(io.BytesIO(samples[image_id]))
        assert image.format == "JPEG" and image.mode == "RGB"


def test_rerun_replaces_output_atomically(tiny_layout, tmp_path):
    out = tmp_path / "shards"
    write_shards(tiny_layout, out, ShardConfig(max_count=2))
    write_shards(tiny_layout, out, ShardConfig(max_count=100))
    assert sorted(p.name for p in out.iterdir()) == [
        "manifest.json",
        "test-000000.tar",
        "train-000000.tar",
        "val-000000.tar",
    ]
    assert not any(p.name.startswith(".") for p in tmp_path.iterdir())


def test_every_bad_kind_is_listed_with_its_kind(tiny_layout, tmp_path, monkeypatch):
    images = tiny_layout / "images"
    good = (images / "img_0001.jpg").read_bytes()
    (images / "img_0002.jpg").write_bytes(good[: len(good) // 2])  # truncated
    (images / "img_0003.jpg").write_bytes(b"")
    (images / "img_0004.jpg").write_bytes(b"<html>not an image</html>")
    (images / "img_0005.jpg").unlink()
    Image.new("RGB", (128, 128)).save(images / "img_0006.jpg")
    monkeypatch.setattr(Image, "MAX_IMAGE_PIXELS", 64 * 64)  # img_0006 is a bomb, not the others
    manifest = write_shards(tiny_layout, tmp_path / "shards", ShardConfig(workers=1))
    kinds = {s["file_name"]: s["kind"] for s in manifest["skipped"]}
    assert kinds == {
        "img_0002.jpg": "truncated or corrupt",
        "img_0003.jpg": "zero bytes",
        "img_0004.jpg": "not an image",
        "img_0005.jpg": "missing file",
        "img_0006.jpg": "decompression bomb",
    }
    assert manifest["splits"]["train"] | {"shards": None} == {
        "count": 1,
        "reencoded": 0,
        "skipped": 5,
        "shards": None,
    }


def test_converted_images_are_counted_as_reencoded(tiny_layout, tmp_path):
    images = tiny_layout / "images"
    (images / "img_0001.jpg").write_bytes(jpeg_bytes(1, mode="CMYK"))
    Image.open(io.BytesIO(jpeg_bytes(2))).convert("RGBA").save(images / "img_0002.jpg", "PNG")
    manifest = write_shards(tiny_layout, tmp_path / "shards", ShardConfig(workers=1))
    assert manifest["splits"]["train"]["reencoded"] == 2
    assert manifest["splits"]["train"]["skipped"] == 0


def test_max_side_resizes(tiny_layout, tmp_path):
    manifest = write_shards(tiny_layout, tmp_path / "shards", ShardConfig(max_side=32, workers=1))
    assert manifest["splits"]["train"]["reencoded"] == 6
    for _, jpg in iter_samples(tmp_path / "shards", "train"):
        assert Image.open(io.BytesIO(jpg)).size == (32, 32)


def test_parallel_workers_write_the_same_bytes(tiny_layout, tmp_path):
    serial = write_shards(tiny_layout, tmp_path / "a", ShardConfig(max_count=2, workers=1))
    parallel = write_shards(tiny_layout, tmp_path / "b", ShardConfig(max_count=2, workers=2))
    assert serial == parallel
    for name in serial["shards"]:
        assert (tmp_path / "a" / name).read_bytes() == (tmp_path / "b" / name).read_bytes()


def test_shards_are_planned_by_source_bytes(tiny_layout, tmp_path):
    one_image = (tiny_layout / "images" / "img_0001.jpg").stat().st_size
    cfg = ShardConfig(max_size_mb=(2.5 * one_image) / 2**20, workers=1)
    manifest = write_shards(tiny_layout, tmp_path / "shards", cfg)
    assert [manifest["shards"][n]["count"] for n in manifest["splits"]["train"]["shards"]] == [
        2,
        2,
        2,
    ]


def test_a_shard_whose_images_are_all_skipped_leaves_no_gap(tiny_layout, tmp_path):
    for name in ("img_0003.jpg", "img_0004.jpg"):
        (tiny_layout / "images" / name).unlink()
    manifest = write_shards(tiny_layout, tmp_path / "shards", ShardConfig(max_count=2, workers=1))
    assert manifest["splits"]["train"]["shards"] == ["train-000000.tar", "train-000001.tar"]
    ids = [m["image_id"] for m, _ in iter_samples(tmp_path / "shards", "train")]
    assert ids == [1, 2, 5, 6]


class Killed(Exception):
    pass


def test_killed_run_leaves_no_output_and_the_rerun_resumes(tiny_layout, tmp_path, monkeypatch):
    from captioning.data import shards

    out = tmp_path / "shards"
    cfg = ShardConfig(max_count=2, workers=1)
    real = shards.shard_jpeg
    seen: list[str] = []

    def dies_at_image_5(data, *, name, **kw):
        seen.append(Path(name).name)
        if name.endswith("img_0005.jpg"):
            raise Killed
        return real(data, name=name, **kw)

    monkeypatch.setattr(shards, "shard_jpeg", dies_at_image_5)
    with pytest.raises(Killed):
        write_shards(tiny_layout, out, cfg)
    assert not out.exists()
    work = tmp_path / ".shards.partial"
    # Two shards done (images 1-4); the third was being written under a temporary name.
    assert sorted(p.name for p in work.iterdir()) == [
        "train-000000.json",
        "train-000000.tar",
        "train-000001.json",
        "train-000001.tar",
        "train-000002.tar.tmp",
    ]
    # A recorded shard damaged since is noticed by its sha256 and written again.
    (work / "train-000001.tar").write_bytes(b"damaged")

    seen.clear()
    monkeypatch.setattr(
        shards, "shard_jpeg", lambda data, **kw: (seen.append(kw["name"]), real(data, **kw))[1]
    )
    manifest = write_shards(tiny_layout, out, cfg)
    assert sorted(Path(n).name for n in seen) == [f"img_{i:04d}.jpg" for i in range(3, 11)]
    assert not work.exists()
    fresh = write_shards(tiny_layout, tmp_path / "fresh", cfg)
    assert manifest == fresh
    for name in fresh["shards"]:
        assert (out / name).read_bytes() == (tmp_path / "fresh" / name).read_bytes()


def test_manifest_checksums_match_the_shards(tiny_layout, tmp_path):
    import hashlib

    manifest = write_shards(tiny_layout, tmp_path / "shards", ShardConfig(max_count=4, workers=1))
    for name, entry in manifest["shards"].items():
        data = (tmp_path / "shards" / name).read_bytes()
        assert hashlib.sha256(data).hexdigest() == entry["sha256"]
        assert len(data) == entry["bytes"]


def test_skipped_captions_are_counted_in_the_manifest_only_when_there_are_some(
    tiny_layout, tmp_path
):
    clean = write_shards(tiny_layout, tmp_path / "clean", ShardConfig(workers=1))
    assert "captions_skipped" not in clean  # clean input: the manifest as it always was
    path = tiny_layout / "captions.json"
    coco = json.loads(path.read_text())
    coco["annotations"][0]["caption"] = " "
    coco["annotations"][1]["image_id"] = 404
    path.write_text(json.dumps(coco))
    manifest = write_shards(tiny_layout, tmp_path / "shards", ShardConfig(workers=1))
    assert manifest["captions_skipped"] == {"blank": 1, "dangling": 1, "too long": 0}
    # Image 1 lost both captions: a training image without captions is skipped as before.
    assert [s["kind"] for s in manifest["skipped"]] == ["no captions"]
    assert manifest["splits"]["train"]["count"] == 5
