"""A corpus of hostile files, made on the fly, each with the treatment it must get.

Images go through the shard stage (skipped and counted by kind, or converted) and
``captioning predict`` (one line naming the file, exit 2; or a caption); archives go through
the fetch stage (refused with one line naming the archive and the entry, nothing written
outside the stage's outputs). docs/reliability.md lists them with the tests that use them.
"""

from __future__ import annotations

import io
import stat
import tarfile
import zipfile
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import numpy as np
from PIL import Image

# Treatments.
CONVERTED = "converted"  # re-encoded as 8-bit RGB JPEG, kept
KEPT = "kept"  # passed through byte for byte
SKIPPED = "skipped"  # counted in the manifest under ``kind``; the run goes on


def _noise(size: tuple[int, int] = (64, 48), seed: int = 0) -> Image.Image:
    rng = np.random.default_rng(seed)
    return Image.fromarray(rng.integers(0, 256, (size[1], size[0], 3), dtype=np.uint8))


def _encode(image: Image.Image, fmt: str = "JPEG", **options) -> bytes:
    buffer = io.BytesIO()
    image.save(buffer, format=fmt, **options)
    return buffer.getvalue()


def _exif_rotated() -> bytes:
    exif = Image.Exif()
    exif[0x0112] = 6
    return _encode(_noise(), exif=exif.tobytes())


def _sixteen_bit_png() -> bytes:
    ramp = np.linspace(0, 65535, 64 * 48).reshape(48, 64).astype(np.uint16)
    return _encode(Image.fromarray(ramp), "PNG")


def _bomb_png() -> bytes:
    # 9,000 x 9,000 = 81 Mpixels of one colour: a few KB that decode past the 64 Mpixel limit.
    return _encode(Image.new("L", (9000, 9000)), "PNG")


@dataclass(frozen=True)
class ImageCase:
    name: str
    make: Callable[[], bytes]
    treatment: str
    kind: str = ""  # the manifest's skip kind (data/images.py) when skipped


IMAGE_CASES = [
    ImageCase("plain_rgb", lambda: _encode(_noise()), KEPT),
    ImageCase("grayscale", lambda: _encode(_noise().convert("L")), CONVERTED),
    ImageCase("cmyk", lambda: _encode(_noise().convert("CMYK")), CONVERTED),
    ImageCase("exif_rotated", _exif_rotated, CONVERTED),
    ImageCase("sixteen_bit_png", _sixteen_bit_png, CONVERTED),
    ImageCase("png_named_jpg", lambda: _encode(_noise(), "PNG"), CONVERTED),
    ImageCase("rgba_png", lambda: _encode(_noise().convert("RGBA"), "PNG"), CONVERTED),
    ImageCase("zero_bytes", lambda: b"", SKIPPED, "zero bytes"),
    ImageCase(
        "truncated", lambda: _encode(_noise((320, 240)))[:600], SKIPPED, "truncated or corrupt"
    ),
    ImageCase(
        "html_as_jpeg",
        lambda: b"<html><body>404 Not Found</body></html>\n",
        SKIPPED,
        "not an image",
    ),
    ImageCase("bomb", _bomb_png, SKIPPED, "decompression bomb"),
]


@dataclass(frozen=True)
class ArchiveCase:
    name: str
    write: Callable[[Path], Path]  # writes the archive into a folder, returns its path
    message: str  # in the one-line error


def _zip(path: Path, entries: dict[str, bytes]) -> Path:
    with zipfile.ZipFile(path, "w") as archive:
        for name, data in entries.items():
            archive.writestr(name, data)
    return path


def _tar(path: Path, members: list[tuple[tarfile.TarInfo, bytes]]) -> Path:
    with tarfile.open(path, "w:gz") as archive:
        for info, data in members:
            info.size = len(data) if info.isfile() else 0
            archive.addfile(info, io.BytesIO(data) if info.isfile() else None)
    return path


def _zip_slip(folder: Path) -> Path:
    return _zip(folder / "slip.zip", {"Images/a.jpg": b"x", "Images/../../../planted.txt": b"evil"})


def _zip_absolute(folder: Path) -> Path:
    return _zip(folder / "absolute.zip", {"Images/a.jpg": b"x", "/tmp/planted.txt": b"evil"})


def _zip_symlink(folder: Path) -> Path:
    info = zipfile.ZipInfo("Images/link.jpg")
    info.external_attr = (stat.S_IFLNK | 0o777) << 16
    with zipfile.ZipFile(folder / "symlink.zip", "w") as archive:
        archive.writestr(info, "/etc/passwd")
    return folder / "symlink.zip"


def _tar_symlink(folder: Path) -> Path:
    link = tarfile.TarInfo("Images/link.jpg")
    link.type, link.linkname = tarfile.SYMTYPE, "/etc/passwd"
    return _tar(folder / "symlink.tar.gz", [(tarfile.TarInfo("Images/a.jpg"), b"x"), (link, b"")])


def _tar_dotdot(folder: Path) -> Path:
    return _tar(folder / "dotdot.tar.gz", [(tarfile.TarInfo("../planted.txt"), b"evil")])


def _truncated(folder: Path, name: str, write: Callable[[Path], Path]) -> Path:
    whole = write(folder / f"whole-{name}")
    cut = folder / name
    cut.write_bytes(whole.read_bytes()[: whole.stat().st_size // 2])
    whole.unlink()
    return cut


_BIG = {f"Images/{i}.jpg": np.random.default_rng(i).bytes(4000) for i in range(8)}
ARCHIVE_CASES = [
    ArchiveCase("zip_slip", _zip_slip, "escapes the target directory"),
    ArchiveCase("zip_absolute_path", _zip_absolute, "absolute path"),
    ArchiveCase("zip_symlink", _zip_symlink, "symbolic link"),
    ArchiveCase("tar_symlink", _tar_symlink, "links and special files are refused"),
    ArchiveCase("tar_dotdot", _tar_dotdot, "escapes"),
    ArchiveCase(
        "truncated_zip",
        lambda folder: _truncated(folder, "cut.zip", lambda p: _zip(p, _BIG)),
        "not a readable archive",
    ),
    ArchiveCase(
        "truncated_tar",
        lambda folder: _truncated(
            folder,
            "cut.tar.gz",
            lambda p: _tar(p, [(tarfile.TarInfo(n), d) for n, d in _BIG.items()]),
        ),
        "damaged archive",
    ),
]
