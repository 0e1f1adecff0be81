"""Downloads against a local HTTP server: resume, retries, checksums, atomic rename, mirrors."""

from __future__ import annotations

import hashlib
import json

import numpy as np
import pytest

from captioning.data import download as dl
from captioning.data.download import DownloadError, Expected, acquire, apply_mirror, download

# A few chunks' worth, so that a dropped connection leaves a real partial file.
PAYLOAD = np.random.default_rng(0).integers(0, 256, 3 * dl.CHUNK_BYTES + 12345, np.uint8).tobytes()
SHA256 = "sha256:" + hashlib.sha256(PAYLOAD).hexdigest()


def no_sleep(seconds: float) -> None:
    pass


@pytest.fixture
def served(file_server):
    (file_server.root / "files").mkdir()
    (file_server.root / "files" / "big.bin").write_bytes(PAYLOAD)
    return file_server, f"{file_server.url}/files/big.bin"


def test_download_verifies_and_renames(served, tmp_path):
    server, url = served
    dest = tmp_path / "dl" / "big.bin"
    assert download(url, dest, expected=Expected(len(PAYLOAD), SHA256)) == dest
    assert dest.read_bytes() == PAYLOAD
    assert not dest.with_name("big.bin.part").exists()
    record = json.loads((tmp_path / "dl" / dl.VERIFIED_FILE).read_text())
    assert record[str(dest.resolve())]["checksum"] == SHA256


def test_dropped_connection_is_resumed_with_a_range_request(served, tmp_path):
    server, url = served
    server.drop_after["/files/big.bin"] = dl.CHUNK_BYTES + 1000
    dest = tmp_path / "big.bin"
    download(url, dest, expected=Expected(len(PAYLOAD), SHA256), sleep=no_sleep)
    assert dest.read_bytes() == PAYLOAD
    assert server.requested("/files/big.bin") == [None, f"bytes={dl.CHUNK_BYTES + 1000}-"]


class Killed(Exception):
    pass


def killed(seconds: float) -> None:
    raise Killed


def test_interrupted_run_leaves_a_part_file_that_the_next_run_resumes(served, tmp_path):
    server, url = served
    server.drop_after["/files/big.bin"] = 2 * dl.CHUNK_BYTES
    dest = tmp_path / "big.bin"
    with pytest.raises(Killed):  # killed while waiting to retry
        download(url, dest, expected=Expected(checksum=SHA256), sleep=killed)
    assert not dest.exists()
    assert dest.with_name("big.bin.part").stat().st_size == 2 * dl.CHUNK_BYTES
    download(url, dest, expected=Expected(checksum=SHA256))
    assert dest.read_bytes() == PAYLOAD
    assert server.requested("/files/big.bin")[-1] == f"bytes={2 * dl.CHUNK_BYTES}-"


def test_gives_up_after_retries_without_progress(served, tmp_path):
    server, _ = served
    url = f"{server.url}/files/big.bin"
    delays: list[float] = []
    server.fail_with["/files/big.bin"] = 503
    with pytest.raises(DownloadError, match="giving up after 0 retries without progress: HTTP 503"):
        download(url, tmp_path / "big.bin", retries=0, sleep=delays.append)
    assert delays == []


def test_wrong_checksum_fails_clearly_and_the_file_is_not_used(served, tmp_path):
    server, url = served
    wrong = "sha256:" + "0" * 64
    dest = tmp_path / "big.bin"
    with pytest.raises(DownloadError) as err:
        download(url, dest, expected=Expected(checksum=wrong))
    message = str(err.value)
    assert url in message and f"expected {wrong}, found {SHA256}" in message
    assert "deleted and is not used" in message
    assert not dest.exists() and not dest.with_name("big.bin.part").exists()


def test_complete_files_are_not_downloaded_or_hashed_again(served, tmp_path, monkeypatch):
    server, url = served
    dest = tmp_path / "big.bin"
    download(url, dest, expected=Expected(len(PAYLOAD), SHA256))
    hashed = []
    monkeypatch.setattr(dl, "file_digest", lambda *a: hashed.append(a) or "")
    download(url, dest, expected=Expected(len(PAYLOAD), SHA256))
    assert len(server.requested("/files/big.bin")) == 1 and hashed == []


def test_a_complete_file_that_changed_is_downloaded_again(served, tmp_path):
    server, url = served
    dest = tmp_path / "big.bin"
    download(url, dest, expected=Expected(checksum=SHA256))
    dest.write_bytes(b"tampered")
    download(url, dest, expected=Expected(checksum=SHA256))
    assert dest.read_bytes() == PAYLOAD
    assert len(server.requested("/files/big.bin")) == 2


def test_transient_status_is_retried_with_backoff(served, tmp_path):
    server, url = served
    server.fail_with["/files/big.bin"] = 503
    delays: list[float] = []
    download(url, tmp_path / "big.bin", backoff_s=0.5, sleep=delays.append)
    assert delays == [0.5]
    assert (tmp_path / "big.bin").read_bytes() == PAYLOAD


def test_not_found_fails_at_once(served, tmp_path):
    server, _ = served
    delays: list[float] = []
    with pytest.raises(DownloadError, match="HTTP 404"):
        download(f"{server.url}/files/nope.bin", tmp_path / "nope.bin", sleep=delays.append)
    assert delays == [] and len(server.requests) == 1


def test_server_that_ignores_range_starts_over(served, tmp_path):
    server, url = served
    server.drop_after["/files/big.bin"] = 1000
    server.ignore_range.add("/files/big.bin")
    download(url, tmp_path / "big.bin", expected=Expected(checksum=SHA256), sleep=no_sleep)
    assert (tmp_path / "big.bin").read_bytes() == PAYLOAD


def test_complete_part_file_is_finished_without_a_body(served, tmp_path):
    server, url = served
    (tmp_path / "big.bin.part").write_bytes(PAYLOAD)  # killed after the last byte, before rename
    download(url, tmp_path / "big.bin", expected=Expected(checksum=SHA256))
    assert (tmp_path / "big.bin").read_bytes() == PAYLOAD
    assert server.requested("/files/big.bin") == [f"bytes={len(PAYLOAD)}-"]


def test_size_announced_by_the_server_must_match(served, tmp_path):
    server, url = served
    with pytest.raises(DownloadError, match=f"offers {len(PAYLOAD)} bytes, expected 10"):
        download(url, tmp_path / "big.bin", expected=Expected(size=10))
    assert not (tmp_path / "big.bin").exists()


def test_mirror_repoints_urls_only():
    url = "http://images.cocodataset.org/zips/train2014.zip"
    assert apply_mirror(url, "") == url
    assert (
        apply_mirror(url, "http://mirror.internal/coco/")
        == "http://mirror.internal/coco/images.cocodataset.org/zips/train2014.zip"
    )
    assert apply_mirror("/data/train2014.zip", "http://m") == "/data/train2014.zip"


def test_acquire_downloads_through_an_http_mirror(served, tmp_path):
    server, _ = served
    (server.root / "example.org" / "a").mkdir(parents=True)
    (server.root / "example.org" / "a" / "f.bin").write_bytes(b"mirrored")
    path = acquire("http://example.org/a/f.bin", tmp_path / "dl", mirror=server.url)
    # Kept below the host it came from (the mirror's): <downloads>/<host_port>/<path>.
    host = server.url.removeprefix("http://").replace(":", "_")
    assert path == tmp_path / "dl" / host / "example.org" / "a" / "f.bin"
    assert path.read_bytes() == b"mirrored"


def test_acquire_uses_a_local_mirror_and_local_paths_in_place(tmp_path):
    mirror = tmp_path / "mirror"
    (mirror / "example.org").mkdir(parents=True)
    (mirror / "example.org" / "f.bin").write_bytes(b"local")
    checksum = "sha256:" + hashlib.sha256(b"local").hexdigest()
    found = acquire(
        "http://example.org/f.bin",
        tmp_path / "dl",
        mirror=str(mirror),
        expected=Expected(5, checksum),
    )
    assert found == mirror / "example.org" / "f.bin"
    assert acquire(f"file://{found}", tmp_path / "dl") == found
    with pytest.raises(DownloadError, match="checksum mismatch"):
        acquire(str(found), tmp_path / "dl", expected=Expected(checksum="md5:" + "0" * 32))
    with pytest.raises(DownloadError, match="no such file"):
        acquire(str(tmp_path / "missing.zip"), tmp_path / "dl")


def test_expected_rejects_a_malformed_checksum():
    with pytest.raises(ValueError, match="sha256"):
        Expected(checksum="abc")
