"""Safe extraction: entries that escape are refused, nothing half-extracted is ever visible."""

from __future__ import annotations

import io
import shutil
import stat
import tarfile
import zipfile

import pytest

from captioning.data import extract
from captioning.data.extract import ExtractError, archive_stem, safe_extract
from fake_datasets import write_tar, write_zip

FILES = {"pics/a.jpg": b"a" * 100, "pics/b.jpg": b"b" * 200, "readme.txt": b"hi"}


def tar_with(path, member: tarfile.TarInfo, data: bytes = b"") -> None:
    with tarfile.open(path, "w") as archive:
        archive.addfile(member, io.BytesIO(data) if data else None)


def nothing_left(parent, dest) -> bool:
    """No target and no temporary sibling."""
    return not dest.exists() and not [p for p in parent.iterdir() if p.name.startswith(".")]


@pytest.mark.parametrize("kind", ["zip", "tar.gz", "tar"])
def test_extracts_every_file(tmp_path, kind):
    archive = tmp_path / f"x.{kind}"
    if kind == "zip":
        write_zip(archive, FILES)
    else:
        write_tar(archive, FILES, mode="w:gz" if kind == "tar.gz" else "w")
    out = safe_extract(archive, tmp_path / "out" / "x")
    for name, data in FILES.items():
        assert (out / name).read_bytes() == data


def test_include_selects_entries(tmp_path):
    archive = write_zip(tmp_path / "x.zip", FILES)
    out = safe_extract(archive, tmp_path / "x", include=lambda name: name.endswith(".txt"))
    assert sorted(p.name for p in out.rglob("*") if p.is_file()) == [
        extract.STAMP,
        "readme.txt",
    ]


@pytest.mark.parametrize(
    "name,reason",
    [
        ("../evil.txt", "escapes the target directory"),
        ("pics/../../evil.txt", "escapes the target directory"),
        ("/etc/evil.txt", "absolute path"),
        ("C:/evil.txt", "absolute path"),
        ("\\evil.txt", "absolute path"),
    ],
)
def test_zip_entries_that_escape_are_refused(tmp_path, name, reason):
    archive = write_zip(tmp_path / "bad.zip", {"ok.txt": b"fine", name: b"evil"})
    out_parent = tmp_path / "out"
    out_parent.mkdir()
    with pytest.raises(ExtractError, match=reason) as err:
        safe_extract(archive, out_parent / "bad")
    assert repr(name) in str(err.value)
    assert nothing_left(out_parent, out_parent / "bad")
    assert not (tmp_path / "evil.txt").exists()


def test_tar_with_dotdot_is_refused(tmp_path):
    archive = write_tar(tmp_path / "bad.tar.gz", {"ok.txt": b"fine", "../evil.txt": b"evil"})
    with pytest.raises(ExtractError, match=r"'\.\./evil\.txt' escapes"):
        safe_extract(archive, tmp_path / "out")
    assert nothing_left(tmp_path, tmp_path / "out")
    assert not (tmp_path / "evil.txt").exists()


@pytest.mark.parametrize("link", [tarfile.SYMTYPE, tarfile.LNKTYPE, tarfile.CHRTYPE])
def test_tar_links_and_devices_are_refused(tmp_path, link):
    member = tarfile.TarInfo("pics/link.jpg")
    member.type = link
    member.linkname = "/etc/passwd"
    tar_with(tmp_path / "bad.tar", member)
    with pytest.raises(ExtractError, match="links and special files are refused"):
        safe_extract(tmp_path / "bad.tar", tmp_path / "out")
    assert not (tmp_path / "out").exists()


def test_zip_symlink_is_refused(tmp_path):
    info = zipfile.ZipInfo("pics/link.jpg")
    info.external_attr = (stat.S_IFLNK | 0o777) << 16
    with zipfile.ZipFile(tmp_path / "bad.zip", "w") as archive:
        archive.writestr(info, "/etc/passwd")
    with pytest.raises(ExtractError, match="symbolic link"):
        safe_extract(tmp_path / "bad.zip", tmp_path / "out")


def test_failure_midway_leaves_no_tree_and_the_old_one_intact(tmp_path, monkeypatch):
    archive = write_zip(tmp_path / "x.zip", FILES)
    dest = tmp_path / "out" / "x"
    safe_extract(archive, dest)
    write_zip(archive, {**FILES, "new.txt": b"new"})  # the archive changed: extract again
    calls = []

    def fails_on_second_file(source, sink, length=0):
        calls.append(1)
        if len(calls) == 2:
            raise OSError("disk full")
        shutil.copyfileobj(source, sink)

    monkeypatch.setattr(extract.shutil, "copyfileobj", fails_on_second_file)
    with pytest.raises(OSError, match="disk full"):
        safe_extract(archive, dest)
    # The previous, complete extraction is what is visible; no temporary tree is left.
    assert sorted(p.name for p in (tmp_path / "out").iterdir()) == ["x"]
    assert not (dest / "new.txt").exists() and (dest / "readme.txt").read_bytes() == b"hi"


def test_unchanged_archive_is_not_extracted_again(tmp_path, monkeypatch):
    archive = write_zip(tmp_path / "x.zip", FILES)
    safe_extract(archive, tmp_path / "x")
    monkeypatch.setattr(extract, "atomic_path", None)  # would fail if it extracted
    assert safe_extract(archive, tmp_path / "x") == tmp_path / "x"


def test_damaged_archives_fail_clearly(tmp_path):
    (tmp_path / "cut.zip").write_bytes(write_zip(tmp_path / "x.zip", FILES).read_bytes()[:50])
    with pytest.raises(ExtractError, match="not a readable archive"):
        safe_extract(tmp_path / "cut.zip", tmp_path / "out")
    (tmp_path / "notes.txt").write_text("hello")
    with pytest.raises(ExtractError, match="not a known archive type"):
        safe_extract(tmp_path / "notes.txt", tmp_path / "out")


def test_archive_stem():
    assert archive_stem("a/train2014.zip") == "train2014"
    assert archive_stem("flickr30k-images.tar.gz") == "flickr30k-images"
