import io
import json
import tarfile

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
