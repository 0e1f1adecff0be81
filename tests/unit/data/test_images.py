"""Image decoding for shards: what passes through, what is converted, what is refused and why."""

from __future__ import annotations

import io

import numpy as np
import pytest
from PIL import Image

from captioning.data import images
from captioning.data.images import ImageDecodeError, load_rgb, shard_jpeg
from conftest import jpeg_bytes


def encode(image: Image.Image, fmt: str = "JPEG", **options) -> bytes:
    buffer = io.BytesIO()
    image.save(buffer, format=fmt, **options)
    return buffer.getvalue()


def noise(size: tuple[int, int], seed: int = 0) -> Image.Image:
    rng = np.random.default_rng(seed)
    return Image.fromarray(rng.integers(0, 255, (size[1], size[0], 3), dtype=np.uint8))


def decoded(data: bytes) -> Image.Image:
    image = Image.open(io.BytesIO(data))
    assert image.format == "JPEG" and image.mode == "RGB"
    return image


def test_plain_rgb_jpeg_passes_through_byte_for_byte():
    data = jpeg_bytes(1)
    assert shard_jpeg(data, name="a.jpg") == (data, False)
    assert shard_jpeg(data, name="a.jpg", max_side=64) == (data, False)


def rotated_jpeg() -> bytes:
    exif = Image.Exif()
    exif[0x0112] = 6  # rotate 90 degrees clockwise to display
    return encode(noise((64, 32)), exif=exif)


def cmyk_jpeg() -> bytes:
    return encode(noise((40, 30)).convert("CMYK"))


def sixteen_bit_png() -> bytes:
    ramp = np.linspace(0, 65535, 40 * 30).reshape(30, 40).astype(np.uint16)
    return encode(Image.fromarray(ramp), "PNG")


def rgba_png() -> bytes:
    image = noise((40, 30)).convert("RGBA")
    image.putalpha(0)  # fully transparent: must come out white, not black
    return encode(image, "PNG")


CONVERTIBLE = {
    "grayscale": (lambda: encode(noise((40, 30)).convert("L")), (40, 30)),
    "cmyk": (cmyk_jpeg, (40, 30)),
    "rgba": (rgba_png, (40, 30)),
    "16-bit": (sixteen_bit_png, (40, 30)),
    "png named .jpg": (lambda: jpeg_bytes(2, size=40, fmt="PNG"), (40, 40)),
    "palette": (lambda: encode(noise((40, 30)).convert("P"), "PNG"), (40, 30)),
    "exif-rotated": (rotated_jpeg, (32, 64)),
}


@pytest.mark.parametrize("kind", sorted(CONVERTIBLE))
def test_convertible_images_are_reencoded_as_rgb_jpeg(kind):
    make, size = CONVERTIBLE[kind]
    data, reencoded = shard_jpeg(make(), name=f"{kind}.jpg")
    assert reencoded
    assert decoded(data).size == size


def test_conversions_keep_the_picture():
    white = np.asarray(decoded(shard_jpeg(rgba_png(), name="x.jpg")[0]))
    assert white.min() > 240
    ramp = np.asarray(decoded(shard_jpeg(sixteen_bit_png(), name="x.jpg")[0]))
    # 16-bit values are scaled to 8 bits, not clipped to white.
    assert ramp[0, 0].max() < 15 and ramp[-1, -1].min() > 240


def test_larger_images_are_resized_to_max_side_and_others_kept():
    big = encode(noise((200, 100)))
    data, reencoded = shard_jpeg(big, name="big.jpg", max_side=50)
    assert reencoded and decoded(data).size == (50, 25)
    small = encode(noise((40, 20)))
    assert shard_jpeg(small, name="small.jpg", max_side=50) == (small, False)


def truncated_jpeg() -> bytes:
    data = jpeg_bytes(3)
    return data[: len(data) // 2]


def corrupt_png() -> bytes:
    data = bytearray(encode(noise((40, 30)), "PNG"))
    start = data.index(b"IDAT") + 8
    data[start : start + 40] = bytes(40)  # zlib stream damaged
    return bytes(data)


BAD = {
    "truncated jpeg": (truncated_jpeg, images.CORRUPT),
    "corrupt png": (corrupt_png, images.CORRUPT),
    "zero bytes": (lambda: b"", images.ZERO_BYTES),
    "text": (lambda: b"hello, I am not an image\n", images.NOT_AN_IMAGE),
    "jpeg marker then junk": (lambda: b"\xff\xd8\xff not really a jpeg", images.NOT_AN_IMAGE),
}


@pytest.mark.parametrize("case", sorted(BAD))
def test_bad_images_fail_with_their_kind(case):
    make, kind = BAD[case]
    with pytest.raises(ImageDecodeError) as err:
        shard_jpeg(make(), name="bad.jpg")
    assert err.value.kind == kind
    assert str(err.value).startswith("bad.jpg: ")
    with pytest.raises(ImageDecodeError) as err:
        load_rgb(make(), name="bad.jpg")
    assert err.value.kind == kind


@pytest.mark.parametrize("pixels", [(40, 40), (64, 64)], ids=["over the limit", "over twice"])
def test_decompression_bombs_are_refused(monkeypatch, pixels):
    # PIL warns above MAX_IMAGE_PIXELS (when it opens the file) and raises above twice that.
    monkeypatch.setattr(Image, "MAX_IMAGE_PIXELS", 1000)
    data = encode(noise(pixels))
    for decode in (shard_jpeg, load_rgb):
        with pytest.raises(ImageDecodeError) as err:
            decode(data, name="bomb.jpg")
        assert err.value.kind == images.BOMB
        assert "decompression bomb" in str(err.value)


def test_reasons_are_reproducible():
    # A reason goes into manifest.json: it must not name a memory address.
    reasons = set()
    for _ in range(2):
        with pytest.raises(ImageDecodeError) as err:
            shard_jpeg(b"not an image", name="x.jpg")
        reasons.add(err.value.reason)
    assert len(reasons) == 1 and "0x" not in reasons.pop()


def test_missing_file(tmp_path):
    with pytest.raises(ImageDecodeError) as err:
        load_rgb(tmp_path / "nope.jpg")
    assert err.value.kind == images.MISSING
