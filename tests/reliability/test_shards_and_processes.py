"""Damaged shards and killed stages, through the real stage CLIs.

Damaged shards: every stage that reads shards checks them against manifest.json (sizes up
front, sha256 as it reads) and names the bad shard in one line, exit 2.

Killed stages: SIGKILL of the stage's process only (what a user's ``kill`` or the OOM killer
does, not the process group) must leave none of its processes behind (workers, forkserver,
resource tracker), and the re-run must neither race the dying workers nor differ from an
uninterrupted run. Processes are followed through /proc, by pid and start time (Linux).
"""

from __future__ import annotations

import contextlib
import os
import shutil
import signal
import subprocess
import sys
import time
from collections.abc import Callable, Iterator
from pathlib import Path

import pytest
import yaml
from tests.reliability.conftest import (
    REPO,
    assert_one_line_error,
    run_shard,
    run_stage,
    tree_digest,
)

from conftest import make_layout

pytestmark = pytest.mark.skipif(not Path("/proc/self/stat").is_file(), reason="needs /proc")

SHARD = "train-000001.tar"  # the shard the damage tests break (train has three)


def write_params(path: Path, **sections: dict) -> Path:
    """The repository's params.yaml with some keys of some sections replaced."""
    params = yaml.safe_load((REPO / "params.yaml").read_text(encoding="utf-8"))
    for section, values in sections.items():
        params[section].update(values)
    path.write_text(yaml.safe_dump(params), encoding="utf-8")
    return path


# --------------------------------------------------------------------------------------------
# Damaged shards
# --------------------------------------------------------------------------------------------


@pytest.fixture(scope="module")
def good_shards(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """Shards of a small layout (train: 3 shards of 4 images), written by the shard stage."""
    root = tmp_path_factory.mktemp("shards")
    make_layout(root / "raw", {"train": 12, "val": 4, "test": 4})
    params = write_params(root / "params.yaml", shard={"max_count": 4, "workers": 1})
    result = run_shard(params, root / "raw", root / "shards")
    assert result.returncode == 0, result.stderr
    return root / "shards"


def truncate(path: Path) -> None:
    data = path.read_bytes()
    path.write_bytes(data[: len(data) // 2])


def alter_padding(path: Path) -> None:
    """Same size, one byte changed where only a digest can see it: the tar's end padding."""
    data = bytearray(path.read_bytes())
    data[-1] ^= 0xFF
    path.write_bytes(bytes(data))


def alter_header(path: Path) -> None:
    """Same size, one byte of the first member's name changed: its header checksum fails."""
    data = bytearray(path.read_bytes())
    data[3] ^= 0x01
    path.write_bytes(bytes(data))


DAMAGE: dict[str, tuple[Callable[[Path], None], str]] = {
    "truncated": (truncate, "truncated or replaced"),
    "altered": (alter_padding, "sha256"),
    "bad-header": (alter_header, "not a readable shard"),
}


@pytest.fixture(params=sorted(DAMAGE))
def damaged(request, good_shards: Path, tmp_path: Path) -> tuple[Path, str]:
    """A copy of the good shards with SHARD damaged; the expected words of the error."""
    shards = tmp_path / "shards"
    shutil.copytree(good_shards, shards)
    damage, words = DAMAGE[request.param]
    damage(shards / SHARD)
    return shards, words


def test_vocab_names_a_damaged_shard(damaged: tuple[Path, str], tmp_path: Path) -> None:
    shards, words = damaged
    params = write_params(tmp_path / "params.yaml")
    out = tmp_path / "vocab.json"
    result = run_stage(
        "vocab.py", "--params", str(params), "--shards", str(shards), "--out", str(out)
    )
    assert_one_line_error(result, str(shards / SHARD), words, "re-run the shard stage")
    assert not out.exists()


def test_features_names_a_damaged_shard(damaged: tuple[Path, str], tmp_path: Path) -> None:
    shards, words = damaged
    # num_workers 1: a shard is read in a DataLoader worker, as by default
    features = {"encoder": "small_cnn", "pretrained": False, "num_workers": 1, "batch_size": 4}
    params = write_params(tmp_path / "params.yaml", features=features)
    out = tmp_path / "features"
    result = run_stage(
        "features.py", "--params", str(params), "--shards", str(shards), "--out", str(out)
    )
    assert_one_line_error(result, str(shards / SHARD), words, "re-run the shard stage")
    assert not out.exists()
    # The damaged shard is not marked done (its index file) for a resume to keep.
    assert not list(tmp_path.glob(f".features.partial/train/{Path(SHARD).stem}.*"))


# --------------------------------------------------------------------------------------------
# Killed stages
# --------------------------------------------------------------------------------------------


def _stat(pid: int) -> tuple[str, int, int] | None:
    """(state, parent pid, start time) from /proc/<pid>/stat; None once the pid is gone."""
    try:
        text = Path(f"/proc/{pid}/stat").read_text()
    except (FileNotFoundError, ProcessLookupError):
        return None
    fields = text[text.rindex(")") + 2 :].split()
    return fields[0], int(fields[1]), int(fields[19])


def descendants(pid: int) -> dict[int, int]:
    """pid -> start time of every process below ``pid``."""
    children: dict[int, list[int]] = {}
    starts: dict[int, int] = {}
    for entry in Path("/proc").iterdir():
        if entry.name.isdigit() and (stat := _stat(int(entry.name))) is not None:
            children.setdefault(stat[1], []).append(int(entry.name))
            starts[int(entry.name)] = stat[2]
    found: dict[int, int] = {}
    todo = list(children.get(pid, []))
    while todo:
        child = todo.pop()
        found[child] = starts[child]
        todo.extend(children.get(child, []))
    return found


def alive(processes: dict[int, int]) -> list[int]:
    """The ones still running (a zombie has ended; a reused pid is another process)."""
    living = []
    for pid, start in processes.items():
        stat = _stat(pid)
        if stat is not None and stat[2] == start and stat[0] not in "ZX":
            living.append(pid)
    return living


def send(processes: dict[int, int], sig: signal.Signals) -> None:
    for pid in alive(processes):
        with contextlib.suppress(ProcessLookupError):  # ended meanwhile
            os.kill(pid, sig)


def wait_until(condition: Callable[[], object], what: str, limit: float = 60) -> None:
    """Poll ``condition`` until it holds; fail, saying ``what`` was awaited, after ``limit`` s."""
    deadline = time.monotonic() + limit
    while not condition():
        if time.monotonic() > deadline:
            raise AssertionError(f"gave up waiting ({limit:.0f} s) for {what}")
        time.sleep(0.02)


@pytest.fixture
def leftovers() -> Iterator[dict[int, int]]:
    """Processes a test collects here are killed at teardown, whatever the outcome: a test
    never leaves processes behind, least of all when it fails because the code did."""
    processes: dict[int, int] = {}
    yield processes
    send(processes, signal.SIGCONT)
    send(processes, signal.SIGKILL)


def start_stage(script: str, *args: str, log: Path) -> subprocess.Popen:
    with log.open("w") as handle:
        return subprocess.Popen(
            [sys.executable, str(REPO / "stages" / script), *args],
            stdout=handle,
            stderr=subprocess.STDOUT,
            cwd=REPO,
            env={**os.environ, "PYTHONUNBUFFERED": "1"},
        )


def kill_when(stage: subprocess.Popen, ready: Callable[[], object], what: str, into: dict) -> None:
    """Wait until ``ready()``, note the stage's processes in ``into``, SIGKILL the stage alone."""
    wait_until(lambda: ready() or stage.poll() is not None, what)
    assert stage.poll() is None, f"the stage ended before {what}: make its input bigger"
    into.update(descendants(stage.pid))
    os.kill(stage.pid, signal.SIGKILL)
    stage.wait()


def listing(directory: Path) -> dict[str, int]:
    return {p.name: p.stat().st_size for p in directory.iterdir()} if directory.exists() else {}


@pytest.fixture(scope="module")
def big_layout(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, Path, dict[str, str]]:
    """400 images in shards of 10 written by 2 workers (re-encoded at 32 px, to take a few
    seconds); the params, and the digest of an uninterrupted run's output."""
    root = tmp_path_factory.mktemp("big")
    make_layout(root / "raw", {"train": 400, "val": 20, "test": 20})
    params = write_params(
        root / "params.yaml", shard={"max_count": 10, "workers": 2, "max_side": 32}
    )
    clean = run_shard(params, root / "raw", root / "clean")
    assert clean.returncode == 0, clean.stderr
    return root / "raw", params, tree_digest(root / "clean")


def test_killed_shard_stage_leaves_no_process_and_resumes(
    big_layout: tuple[Path, Path, dict[str, str]], tmp_path: Path, leftovers: dict[int, int]
) -> None:
    raw, params, clean = big_layout
    out, work = tmp_path / "shards", tmp_path / ".shards.partial"
    args = ("--params", str(params), "--raw", str(raw), "--out", str(out))
    stage = start_stage("shard.py", *args, log=tmp_path / "killed.log")
    # A shard's record is written after its tar: the resume then has at least one to keep.
    kill_when(stage, lambda: any(work.glob("train-*.json")), "the first finished shard", leftovers)
    assert len(leftovers) >= 3, f"expected workers, a forkserver, a tracker: {leftovers}"

    wait_until(lambda: not alive(leftovers), f"the killed stage's processes {leftovers} to end", 20)
    before = listing(work)
    time.sleep(0.5)
    assert listing(work) == before, "the work directory still changes"

    resumed = run_stage("shard.py", *args)
    assert resumed.returncode == 0, resumed.stderr
    assert "resumed:" in resumed.stderr
    assert tree_digest(out) == clean
    assert not work.exists() and not (tmp_path / ".shards.partial.lock").exists()


def test_resume_waits_for_the_workers_of_a_killed_shard_stage(
    big_layout: tuple[Path, Path, dict[str, str]], tmp_path: Path, leftovers: dict[int, int]
) -> None:
    """Workers that have not yet noticed their stage died (here: stopped) may still write:
    the re-run waits for them instead of racing them."""
    raw, params, clean = big_layout
    out, work = tmp_path / "shards", tmp_path / ".shards.partial"
    args = ("--params", str(params), "--raw", str(raw), "--out", str(out))
    stage = start_stage("shard.py", *args, log=tmp_path / "killed.log")
    wait_until(lambda: any(work.glob("train-*.json")) or stage.poll() is not None, "a shard")
    assert stage.poll() is None, "the stage ended before it could be stopped"
    leftovers.update(descendants(stage.pid))
    send(leftovers, signal.SIGSTOP)
    os.kill(stage.pid, signal.SIGKILL)
    stage.wait()

    log = tmp_path / "resume.log"
    resume = start_stage("shard.py", *args, log=log)
    try:
        wait_until(
            lambda: "waiting for" in log.read_text() or resume.poll() is not None,
            "the re-run to wait",
        )
        assert resume.poll() is None, f"the re-run did not wait for the workers:\n{log.read_text()}"
        send(leftovers, signal.SIGCONT)  # they notice the stage is gone, and end
        wait_until(
            lambda: not alive(leftovers), f"the killed stage's processes {leftovers} to end", 20
        )
        assert resume.wait(timeout=300) == 0, log.read_text()
    finally:
        if resume.poll() is None:
            resume.kill()
            resume.wait()
    assert tree_digest(out) == clean


def test_killed_features_stage_leaves_no_process(
    good_shards: Path, tmp_path: Path, leftovers: dict[int, int]
) -> None:
    """DataLoader workers are forkserver children: torch's watchdog, which looks for a new
    parent, does not see the stage die; the guard does."""
    features = {"encoder": "small_cnn", "pretrained": False, "num_workers": 2, "batch_size": 1}
    params = write_params(tmp_path / "params.yaml", features=features)
    out = tmp_path / "features"
    args = ("--params", str(params), "--shards", str(good_shards), "--out", str(out))
    stage = start_stage("features.py", *args, log=tmp_path / "killed.log")
    work = tmp_path / ".features.partial"
    kill_when(stage, lambda: any(work.glob("*/*.parquet")), "the first encoded shard", leftovers)
    assert len(leftovers) >= 3, f"expected workers, a forkserver, a tracker: {leftovers}"
    wait_until(lambda: not alive(leftovers), f"the killed stage's processes {leftovers} to end", 20)


def test_killed_captcha_fetch_leaves_no_process(tmp_path: Path, leftovers: dict[int, int]) -> None:
    """The CAPTCHA source's pool (3 chunks of 500 images, 2 workers), killed after a chunk."""
    captcha = {"count": 1500, "n_train": 1000, "n_val": 200, "n_words": 50, "workers": 2}
    params = write_params(tmp_path / "params.yaml", fetch={"source": "captcha", "captcha": captcha})
    out, downloads = tmp_path / "raw", tmp_path / "downloads"
    args = ("--params", str(params), "--out", str(out), "--downloads", str(downloads))
    stage = start_stage("fetch.py", *args, log=tmp_path / "killed.log")
    chunks = tmp_path / ".raw.partial" / "chunks"
    kill_when(stage, lambda: any(chunks.glob("*.json")), "the first chunk", leftovers)
    assert len(leftovers) >= 3, f"expected workers, a forkserver, a tracker: {leftovers}"
    wait_until(lambda: not alive(leftovers), f"the killed stage's processes {leftovers} to end", 20)
    before = listing(tmp_path / ".raw.partial" / "images")
    time.sleep(0.5)
    assert listing(tmp_path / ".raw.partial" / "images") == before, "images are still written"
