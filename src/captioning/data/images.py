"""Decoding images the same way everywhere (sharding, feature extraction, prediction)."""

from __future__ import annotations

import io
import warnings
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

from PIL import Image, ImageOps, UnidentifiedImageError

from captioning.errors import CaptioningError

# A decompression bomb is refused rather than decoded (COCO's largest image is ~640x640).
Image.MAX_IMAGE_PIXELS = 64_000_000
_ORIENTATION = 0x0112  # EXIF tag


# Why an image could not be used: the ``kind`` of an ImageDecodeError.
MISSING, ZERO_BYTES, NOT_AN_IMAGE, CORRUPT, BOMB, TOO_LARGE = (
    "missing file",
    "zero bytes",
    "not an image",
    "truncated or corrupt",
    "decompression bomb",
    "too many pixels",
)


class ImageDecodeError(CaptioningError, ValueError):
    """The bytes are not a decodable image; ``kind`` says why, ``reason`` says it in words."""

    def __init__(self, label: str, reason: str, kind: str) -> None:
        super().__init__(f"{label}: {reason}")
        self.reason = reason
        self.kind = kind


def load_rgb(
    source: bytes | str | Path, *, name: str | None = None, max_pixels: int | None = None
) -> Image.Image:
    """Decode an image to 8-bit RGB, applying its EXIF orientation.

    Grayscale, CMYK, palette, RGBA and 16-bit images are converted; anything else raises
    ImageDecodeError naming the file and the reason. ``max_pixels`` refuses a larger image
    from its header, before its pixels are decoded (a served model's bound per image).
    """
    label = name or (str(source) if not isinstance(source, bytes) else "<bytes>")
    with _decoding(label):
        if isinstance(source, bytes):
            if not source:
                raise ImageDecodeError(label, "zero bytes, expected an image", ZERO_BYTES)
            image = Image.open(io.BytesIO(source))
        else:
            path = Path(source)
            if path.stat().st_size == 0:
                raise ImageDecodeError(label, "zero bytes, expected an image", ZERO_BYTES)
            image = Image.open(path)
        width, height = image.size
        if max_pixels is not None and width * height > max_pixels:
            reason = f"{width}x{height} pixels, more than the {max_pixels:,} allowed per image"
            raise ImageDecodeError(label, reason, TOO_LARGE)
        image.load()
        image = ImageOps.exif_transpose(image)
    return _to_rgb(image)


def _to_rgb(image: Image.Image) -> Image.Image:
    if image.mode in ("I;16", "I;16B", "I;16L", "I"):
        # 16-bit grayscale: scale to 8 bits instead of clipping.
        image = image.point(lambda v: v / 256).convert("L")
    if image.mode in ("RGBA", "LA") or (image.mode == "P" and "transparency" in image.info):
        rgba = image.convert("RGBA")
        background = Image.new("RGB", rgba.size, (255, 255, 255))
        background.paste(rgba, mask=rgba.getchannel("A"))
        return background
    return image.convert("RGB")


@contextmanager
def _decoding(label: str) -> Iterator[None]:
    """Turn what PIL raises while opening or decoding into ImageDecodeError with its kind."""
    try:
        # PIL warns about a too-large image when it opens it, and raises above twice the limit.
        with warnings.catch_warnings():
            warnings.simplefilter("error", Image.DecompressionBombWarning)
            yield
    except ImageDecodeError:
        raise
    except (Image.DecompressionBombError, Image.DecompressionBombWarning) as exc:
        raise ImageDecodeError(label, f"decompression bomb refused ({exc})", BOMB) from exc
    except FileNotFoundError as exc:
        raise ImageDecodeError(label, "file not found", MISSING) from exc
    except UnidentifiedImageError as exc:
        # PIL's message names a BytesIO object's address: keep the reason reproducible.
        reason = "not a decodable image (not an image: no known image format)"
        raise ImageDecodeError(label, reason, NOT_AN_IMAGE) from exc
    except (OSError, SyntaxError, ValueError) as exc:
        reason = f"not a decodable image (truncated or corrupt: {exc})"
        raise ImageDecodeError(label, reason, CORRUPT) from exc


def shard_jpeg(
    data: bytes, *, name: str, max_side: int = 0, quality: int = 95
) -> tuple[bytes, bool]:
    """JPEG bytes for a shard, and whether they had to be re-encoded.

    An 8-bit RGB JPEG with no EXIF rotation that already fits in ``max_side`` (0 = any size)
    passes through byte for byte, after a decode at 1/8 scale: libjpeg still reads every
    entropy-coded byte, so a truncated file fails as it would at full size, at a third of the
    cost. Anything else (grayscale, CMYK, PNG named .jpg, rotated, 16-bit, too large) goes
    through ``load_rgb``, is resized to ``max_side`` if needed and re-encoded.
    """
    with _decoding(name):
        if not data:
            raise ImageDecodeError(name, "zero bytes, expected an image", ZERO_BYTES)
        image = Image.open(io.BytesIO(data))
        fits = max_side == 0 or max(image.size) <= max_side
        rotated = image.getexif().get(_ORIENTATION, 1) not in (0, 1)
        if image.format == "JPEG" and image.mode == "RGB" and fits and not rotated:
            image.draft("RGB", (1, 1))
            image.load()
            return data, False
    rgb = load_rgb(data, name=name)
    if max_side and max(rgb.size) > max_side:
        scale = max_side / max(rgb.size)
        size = (max(1, round(rgb.width * scale)), max(1, round(rgb.height * scale)))
        rgb = rgb.resize(size, Image.Resampling.BICUBIC, reducing_gap=3.0)
    buffer = io.BytesIO()
    rgb.save(buffer, format="JPEG", quality=quality)
    return buffer.getvalue(), True
