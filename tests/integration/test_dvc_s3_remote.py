"""A DVC remote on S3-compatible storage: push, lose everything local, pull it back.

The S3 server is moto's (`moto_server`), started on 127.0.0.1 for this module and stopped by
its PID. The remote is configured exactly as docs/scaling.md tells users to: the URL and the
endpoint in .dvc/config (committed), the credentials in .dvc/config.local (git-ignored).
"""

from __future__ import annotations

import hashlib
import os
import shutil
import socket
import subprocess
import sys
import time
import urllib.request
from pathlib import Path

import pytest

BIN = Path(sys.executable).parent
KEY_ID, SECRET = "captioning-test-key", "captioning-test-secret"


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


@pytest.fixture(scope="module")
def s3_endpoint():
    if shutil.which("moto_server", path=str(BIN)) is None:
        pytest.fail("moto_server is not installed: pip install -e '.[dev]'")
    port = free_port()
    server = subprocess.Popen(
        [str(BIN / "moto_server"), "-H", "127.0.0.1", "-p", str(port)],
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
    )
    url = f"http://127.0.0.1:{port}"
    try:
        deadline = time.monotonic() + 30
        while True:
            try:
                urllib.request.urlopen(f"{url}/moto-api/", timeout=1).close()
                break
            except OSError:
                if server.poll() is not None or time.monotonic() > deadline:
                    pytest.fail(f"moto_server did not start on {url}")
                time.sleep(0.2)
        import boto3

        boto3.client(
            "s3",
            endpoint_url=url,
            aws_access_key_id=KEY_ID,
            aws_secret_access_key=SECRET,
            region_name="us-east-1",
        ).create_bucket(Bucket="captioning-dvc")
        yield url
    finally:
        server.terminate()
        try:
            server.wait(timeout=10)
        except subprocess.TimeoutExpired:
            server.kill()
            server.wait()


def dvc(repo: Path, *args: str) -> str:
    env = {
        **os.environ,
        "PATH": f"{BIN}{os.pathsep}{os.environ['PATH']}",
        "DVC_NO_ANALYTICS": "1",
        # DVC must take the credentials from .dvc/config.local, not from the environment.
        "AWS_ACCESS_KEY_ID": "",
        "AWS_SECRET_ACCESS_KEY": "",
    }
    result = subprocess.run(
        [str(BIN / "dvc"), *args], cwd=repo, env=env, capture_output=True, text=True
    )
    if result.returncode != 0:
        pytest.fail(f"dvc {' '.join(args)} failed:\n{result.stdout}\n{result.stderr}")
    return result.stdout


def digest_tree(root: Path) -> dict[str, str]:
    return {
        str(p.relative_to(root)): hashlib.sha256(p.read_bytes()).hexdigest()
        for p in sorted(root.rglob("*"))
        if p.is_file()
    }


def test_push_then_pull_restores_outputs_byte_for_byte(tmp_path, s3_endpoint):
    repo = tmp_path / "repo"
    repo.mkdir()
    subprocess.run(["git", "init", "-q"], cwd=repo, check=True)
    dvc(repo, "init", "-q")
    dvc(repo, "remote", "add", "-d", "storage", "s3://captioning-dvc/cache")
    dvc(repo, "remote", "modify", "storage", "endpointurl", s3_endpoint)
    dvc(repo, "remote", "modify", "--local", "storage", "access_key_id", KEY_ID)
    dvc(repo, "remote", "modify", "--local", "storage", "secret_access_key", SECRET)
    committed = (repo / ".dvc" / "config").read_text()
    assert SECRET not in committed and s3_endpoint in committed
    assert SECRET in (repo / ".dvc" / "config.local").read_text()

    data = repo / "data" / "shards"
    data.mkdir(parents=True)
    for i in range(3):
        (data / f"train-{i:06d}.tar").write_bytes(os.urandom(50_000 + i))
    (data / "manifest.json").write_text('{"splits": {}}')
    before = digest_tree(data)
    dvc(repo, "add", "-q", "data/shards")
    assert "5 files pushed" in dvc(repo, "push")  # 4 files + the directory's listing
    import boto3

    bucket = boto3.client(
        "s3",
        endpoint_url=s3_endpoint,
        aws_access_key_id=KEY_ID,
        aws_secret_access_key=SECRET,
        region_name="us-east-1",
    ).list_objects_v2(Bucket="captioning-dvc", Prefix="cache/")
    assert bucket["KeyCount"] == 5

    shutil.rmtree(repo / ".dvc" / "cache")
    shutil.rmtree(data)
    dvc(repo, "pull", "-q")
    assert digest_tree(data) == before
    assert "in sync" in dvc(repo, "status", "-c")
