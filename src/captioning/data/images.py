"""Decoding images the same way everywhere (sharding, feature extraction, prediction)."""

from __future__ import annotations

import io
import warnings
from pathlib import Path

from PIL import Image, ImageOps

from captioning.errors import CaptioningError

# A decompression bomb is refused rather than decoded (COCO's largest image is ~640x640).
Image.MAX_IMAGE_PIXELS = 64_000_000


class ImageDecodeError(CaptioningError, ValueError):
    """The bytes are not a decodable image."""


def load_rgb(source: bytes | str | Path, *, name: str | None = None) -> Image.Image:
    """Decode an image to 8-bit RGB, applying its EXIF orientation.

    Grayscale, CMYK, palette, RGBA and 16-bit images are converted; anything else raises
    ImageDecodeError naming the file and the reason.
    """
    label = name or (str(source) if not isinstance(source, bytes) else "<bytes>")
    try:
        if isinstance(source, bytes):
            if not source:
                raise ImageDecodeError(f"{label}: zero bytes, expected an image")
            image = Image.open(io.BytesIO(source))
        else:
            path = Path(source)
            if path.stat().st_size == 0:
                raise ImageDecodeError(f"{label}: zero bytes, expected an image")
            image = Image.open(path)
        with warnings.catch_warnings():
            warnings.simplefilter("error", Image.DecompressionBombWarning)
            image.load()
            image = ImageOps.exif_transpose(image)
    except ImageDecodeError:
        raise
    except (Image.DecompressionBombError, Image.DecompressionBombWarning) as exc:
        raise ImageDecodeError(f"{label}: decompression bomb refused ({exc})") from exc
    except FileNotFoundError as exc:
        raise ImageDecodeError(f"{label}: file not found") from exc
    except (OSError, SyntaxError, ValueError) as exc:
        raise ImageDecodeError(f"{label}: not a decodable image ({exc})") from exc
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
