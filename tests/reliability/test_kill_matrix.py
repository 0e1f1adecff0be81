"""The kill matrix: SIGKILL each stage part-way, re-run it, and get an uninterrupted run's outputs.

One uninterrupted run of the DAG (fetch, shard, vocab, features, train, evaluate, register) on a
tiny COCO 2017 served from 127.0.0.1 is the reference. Each case then gives a fresh repository
the stage's inputs (the reference's files, as dvc.yaml names them), runs the stage's command as
dvc.yaml writes it, watches the file system for the case's kill point, SIGKILLs the stage's
process (only it: whatever it started must go by itself), re-runs the same command, and checks:

- the re-run picked up the killed run's work (its log says so), where the stage resumes;
- every output (dvc.yaml's outs, metrics and plots of the stage) has the reference's sha256,
  except the values that are wall-clock time (``VOLATILE``);
- for register: exactly one model version, and the reference's aliases;
- no process the stage had started (collected from /proc just before the kill) is left.
"""

from __future__ import annotations

import contextlib
import hashlib
import json
import os
import re
import shlex
import shutil
import signal
import sqlite3
import subprocess
import sys
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import pytest
import yaml
from tests.integration.tiny_repo import merge
from tests.reliability.conftest import REPO, tree_digest

from fake_datasets import KARPATHY_URL, make_coco
from fileserver import FileServer

pytestmark = pytest.mark.slow

DECODER = "soft_attention"
REPORTS = f"reports/decoders/{DECODER}"
# The downloads the fetch case slows down and interrupts: 6 images of 640x640, 1.5 MB.
SLOW_DOWNLOAD = "/images.cocodataset.org/zips/val2017.zip"
CHUNK = 1 << 20  # data.download appends to the .part file a MiB at a time
POLL_S = 0.005
# Values that are wall-clock time, so no two runs share them; each JSON file is compared with
# these keys (dotted paths) left out, every other byte of it must match.
VOLATILE = {
    f"models/{DECODER}/config.json": ("training.train_seconds",),
    f"{REPORTS}/train_summary.json": ("train_seconds",),
    f"{REPORTS}/registration.json": ("run_id",),  # a new MLflow run id for every run
}


def tiny_params(mirror: str, checksums: dict[str, str]) -> dict:
    return {
        "fetch": {
            "source": "coco2017",
            "mirror": mirror,
            "coco": {"karpathy": KARPATHY_URL, "checksums": checksums},
        },
        # 2 images a shard: several shards per split, so a kill can fall between two of them.
        "shard": {"max_count": 2, "workers": 2},
        "features": {"batch_size": 2, "num_workers": 1},
        # An epoch draws one caption of each of the 6 training images: 6 steps of 1, a
        # checkpoint every 2 (mid-epoch after steps 2 and 4).
        "train": {
            "decoders": [DECODER],
            "epochs": 2,
            "batch_size": 1,
            "warmup_steps": 2,
            "checkpoint_every_steps": 2,
            "early_stopping": {"metric": "CIDEr", "batch_size": 8},
        },
        "evaluate": {"n_attention_figures": 2, "n_gallery": 2, "spice": False},
        "register": {"gate": {"resamples": 200}},
    }


# --------------------------------------------------------------------------------------------
# The stages as dvc.yaml writes them
# --------------------------------------------------------------------------------------------


@dataclass(frozen=True)
class Stage:
    name: str
    argv: list[str]
    deps: list[str]
    outputs: list[str]  # outs, metrics and plots


def stage(name: str) -> Stage:
    entry = yaml.safe_load((REPO / "dvc.yaml").read_text())["stages"][name]
    if "foreach" in entry:  # train/evaluate/register@<decoder>
        entry = json.loads(json.dumps(entry["do"]).replace("${item}", DECODER))
    argv = shlex.split(entry["cmd"])
    assert argv[0] == "python", entry["cmd"]
    outputs = [
        out if isinstance(out, str) else next(iter(out))
        for key in ("outs", "metrics", "plots")
        for out in entry.get(key, [])
    ]
    return Stage(name, [sys.executable, *argv[1:]], list(entry.get("deps", [])), outputs)


PIPELINE = ("fetch", "shard", "vocab", "features", "train", "evaluate", "register")


def make_repo(root: Path, params: dict) -> dict[str, str]:
    """stages/, dvc.yaml and a tiny params.yaml in ``root``; returns the stages' environment."""
    root.mkdir(parents=True)
    shutil.copytree(REPO / "stages", root / "stages", ignore=shutil.ignore_patterns("__pycache__"))
    shutil.copy(REPO / "dvc.yaml", root / "dvc.yaml")
    full = merge(yaml.safe_load((REPO / "params.yaml").read_text()), params)
    (root / "params.yaml").write_text(yaml.safe_dump(full, sort_keys=False))
    return {
        **os.environ,
        "PYTHONPATH": os.pathsep.join([str(REPO / "src"), os.environ.get("PYTHONPATH", "")]),
        "PYTHONUNBUFFERED": "1",
        "MLFLOW_TRACKING_URI": f"sqlite:///{root / 'mlflow.db'}",
        "DVC_NO_ANALYTICS": "1",
    }


def run_to_end(step: Stage, root: Path, env: dict[str, str]) -> subprocess.CompletedProcess:
    result = subprocess.run(step.argv, cwd=root, env=env, capture_output=True, text=True)
    assert result.returncode == 0, (
        f"{step.name} failed ({result.returncode}):\n{result.stdout}\n{result.stderr[-6000:]}"
    )
    return result


@dataclass
class Reference:
    root: Path
    params: dict
    server: FileServer


@pytest.fixture(scope="module")
def reference(tmp_path_factory) -> Reference:
    """The uninterrupted run every case is compared with."""
    served = tmp_path_factory.mktemp("served")
    server = FileServer(served)
    files = make_coco(served, "2017", image_size=640)
    checksums = {
        name: "sha256:" + hashlib.sha256(path.read_bytes()).hexdigest()
        for name, path in files.items()
    }
    params = tiny_params(server.url, checksums)
    root = tmp_path_factory.mktemp("reference") / "repo"
    env = make_repo(root, params)
    for name in PIPELINE:
        run_to_end(stage(name), root, env)
    yield Reference(root, params, server)
    server.close()


# --------------------------------------------------------------------------------------------
# Processes
# --------------------------------------------------------------------------------------------


def _stat(pid: int) -> list[str] | None:
    """Fields of /proc/<pid>/stat after the command name (state is [0], ppid [1]); None if
    there is no such process."""
    try:
        text = Path(f"/proc/{pid}/stat").read_text()
    except OSError:
        return None
    return text.rpartition(")")[2].split()


def descendants(pid: int) -> dict[int, str]:
    """Every process below ``pid``, or in its session (started as a session leader, the stage
    keeps its children, and theirs, in its session even once they are orphans): pid -> start
    time, to tell a reused pid from it."""
    children: dict[int, list[int]] = {}
    session: dict[int, str] = {}
    for entry in Path("/proc").iterdir():
        if entry.name.isdigit() and (fields := _stat(int(entry.name))) is not None:
            children.setdefault(int(fields[1]), []).append(int(entry.name))
            if int(fields[3]) == pid and int(entry.name) != pid:
                session[int(entry.name)] = fields[19]
    found: dict[int, str] = {}
    todo = list(children.get(pid, []))
    while todo:
        child = todo.pop()
        if (fields := _stat(child)) is not None:
            found[child] = fields[19]
            todo.extend(children.get(child, []))
    return {**session, **found}


def alive(processes: dict[int, str]) -> dict[int, str]:
    """The ones still running (zombies are dead): pid -> command line."""
    out = {}
    for pid, started in processes.items():
        fields = _stat(pid)
        if fields is None or fields[0] == "Z" or fields[19] != started:
            continue
        try:
            cmdline = Path(f"/proc/{pid}/cmdline").read_bytes()
        except OSError:  # it ended just now
            continue
        out[pid] = cmdline.replace(b"\0", b" ").decode(errors="replace").strip()
    return out


@dataclass
class Killed:
    pid: int
    family: dict[int, str]  # what the stage had started, seen just before the kill
    log: str


def run_and_kill(step: Stage, root: Path, env: dict, ready: Callable[[Path], bool]) -> Killed:
    """Start ``step``; SIGKILL its process (only it) once ``ready(root)``."""
    log_path = root / f"{step.name}.killed.log"
    with log_path.open("w") as log:
        # Its own session: what it starts, even after the kill, can be told from the rest.
        process = subprocess.Popen(
            step.argv, cwd=root, env=env, stdout=log, stderr=log, start_new_session=True
        )
    deadline = time.monotonic() + 300  # a guard against a hang, not a timing assertion
    try:
        while not ready(root):
            if process.poll() is not None:
                pytest.fail(
                    f"{step.name} ended ({process.returncode}) before its kill point:\n"
                    + log_path.read_text()[-6000:]
                )
            if time.monotonic() > deadline:
                pytest.fail(f"{step.name} never reached its kill point:\n{log_path.read_text()}")
            time.sleep(POLL_S)
        family = descendants(process.pid)
        process.send_signal(signal.SIGKILL)
    finally:
        process.kill()
        process.wait()
    assert process.returncode == -signal.SIGKILL, "the stage ended before the kill"
    return Killed(process.pid, family, log_path.read_text())


def stragglers(killed: Killed) -> dict[int, str]:
    """What is left of the killed stage's processes (those seen before the kill, and any in
    its session since) once orphans had time to notice their parent's death; the test ends
    those it finds so that they do not outlive it (or race the re-run)."""
    deadline = time.monotonic() + 20  # a bound on the wait, not a timing assertion
    while (left := alive({**killed.family, **descendants(killed.pid)})) and (
        time.monotonic() < deadline
    ):
        time.sleep(0.1)
    for pid in left:
        with contextlib.suppress(ProcessLookupError):  # it ended in the meantime
            os.kill(pid, signal.SIGKILL)
    return left


# --------------------------------------------------------------------------------------------
# Outputs
# --------------------------------------------------------------------------------------------


def _without(data: dict, dotted: str) -> None:
    *parents, last = dotted.split(".")
    for key in parents:
        data = data[key]
    del data[last]


def file_digest(root: Path, relative: str) -> str:
    path = root / relative
    if relative not in VOLATILE:
        return hashlib.sha256(path.read_bytes()).hexdigest()
    data = json.loads(path.read_text())
    for key in VOLATILE[relative]:
        _without(data, key)
    return (
        "json-less-volatile:"
        + hashlib.sha256(json.dumps(data, sort_keys=True).encode()).hexdigest()
    )


def output_digests(root: Path, step: Stage) -> dict[str, str]:
    """Relative path -> digest of every file the stage outputs."""
    out: dict[str, str] = {}
    for output in step.outputs:
        path = root / output
        if path.is_dir():
            for name in tree_digest(path):
                out[f"{output}/{name}"] = file_digest(root, f"{output}/{name}")
        elif path.is_file():
            out[output] = file_digest(root, output)
        else:
            out[output] = "missing"
    return out


def copy_inputs(reference: Path, root: Path, step: Stage) -> None:
    """The stage's data dependencies (dvc.yaml's deps other than code), from the reference."""
    for dep in step.deps:
        if dep.startswith(("stages/", "src/")):
            continue
        source, target = reference / dep, root / dep
        target.parent.mkdir(parents=True, exist_ok=True)
        if source.is_dir():
            shutil.copytree(source, target)
        elif source.is_file():
            shutil.copy2(source, target)


# --------------------------------------------------------------------------------------------
# Kill points, seen from outside
# --------------------------------------------------------------------------------------------


def found(root: Path, pattern: str, *, min_size: int = 0) -> bool:
    """A file matching ``pattern`` (of at least ``min_size`` bytes) exists now. The stage
    renames temporary files while we look: one that vanishes mid-glob (or that glob took for
    a directory as it went) is not there yet."""
    try:
        return any(p.stat().st_size >= min_size for p in root.glob(pattern))
    except (FileNotFoundError, NotADirectoryError):
        return False


def download_past_first_chunk(root: Path) -> bool:
    """The slow archive's .part file holds its first MiB (the download is under way)."""
    return found(root, f"data/downloads/*{SLOW_DOWNLOAD}.part", min_size=CHUNK)


def first_shard_written(root: Path) -> bool:
    """A complete tar in the work directory (.tar.tmp while being written)."""
    return found(root, "data/.shards.partial/*.tar")


def first_feature_shard_recorded(root: Path) -> bool:
    """A shard's index rows, written once its features are flushed: the shard is done."""
    return found(root, "data/.features.partial/*/*.parquet")


def mid_epoch_checkpoint(root: Path) -> bool:
    """The first resume state: after step 2 of the first epoch's 6."""
    return (root / f"checkpoints/{DECODER}/last.pt").is_file()


def metrics_written(root: Path) -> bool:
    """Decoding and scoring are done and the first report file is out; the gallery and the
    attention figures are still to come."""
    return (root / REPORTS / "metrics.json").is_file()


def model_versions(root: Path) -> list[tuple[str, str]]:
    """(name, version) of the registered model versions, read from the MLflow db read-only."""
    db = root / "mlflow.db"
    if not db.is_file():
        return []
    try:
        with sqlite3.connect(f"file:{db}?mode=ro", uri=True, timeout=0.1) as connection:
            rows = connection.execute("SELECT name, version FROM model_versions").fetchall()
    except sqlite3.OperationalError:  # tables not made yet, or the writer holds a lock
        return []
    return [(name, str(version)) for name, version in rows]


def model_aliases(root: Path) -> dict[str, str]:
    db = root / "mlflow.db"
    with sqlite3.connect(f"file:{db}?mode=ro", uri=True) as connection:
        rows = connection.execute(
            "SELECT name, alias, version FROM registered_model_aliases"
        ).fetchall()
    return {f"{name}@{alias}": str(version) for name, alias, version in rows}


def version_registered(root: Path) -> bool:
    """The model version exists; registration.json is not written yet."""
    return bool(model_versions(root)) and not (root / REPORTS / "registration.json").exists()


@dataclass(frozen=True)
class Case:
    stage: str
    ready: Callable[[Path], bool]
    resumed: str | None  # what the re-run logs when it continues the killed run's work

    def __str__(self) -> str:
        return self.stage


CASES = [
    Case("fetch", download_past_first_chunk, r"val2017\.zip: resuming at byte [1-9]"),
    Case("shard", first_shard_written, r"resumed: [1-9]\d* of \d+ shards were already complete"),
    Case("features", first_feature_shard_recorded, r"features: resuming .*, [1-9]\d* of \d+"),
    Case(
        "train",
        mid_epoch_checkpoint,
        r"resuming from .*: epoch \d, step \d+ \([1-9]\d* batches into",
    ),
    Case("evaluate", metrics_written, None),
    Case("register", version_registered, r"reusing version 1 of captioner-coco2017"),
]


@pytest.mark.parametrize("case", CASES, ids=str)
def test_killed_stage_resumes_to_the_uninterrupted_outputs(case: Case, reference, tmp_path):
    step = stage(case.stage)
    root = tmp_path / "repo"
    env = make_repo(root, reference.params)
    copy_inputs(reference.root, root, step)
    if case.stage == "fetch":
        reference.server.bytes_per_second[SLOW_DOWNLOAD] = 1 << 20
    try:
        killed = run_and_kill(step, root, env, case.ready)
    finally:
        reference.server.bytes_per_second.clear()
    left = stragglers(killed)  # asserted at the end: the re-run's outputs count too
    rerun = run_to_end(step, root, env)

    if case.resumed is not None:
        assert re.search(case.resumed, rerun.stderr), (
            f"the re-run did not resume ({case.resumed!r}):\n{rerun.stderr[-6000:]}\n"
            f"killed run:\n{killed.log[-3000:]}"
        )
    assert output_digests(root, step) == output_digests(reference.root, step)
    if case.stage == "register":
        # register.model_name "": the fetch.source decides the name
        assert model_versions(root) == [("captioner-coco2017", "1")]
        assert model_aliases(root) == model_aliases(reference.root)
    assert not left, f"{case.stage}: processes of the killed stage still running: {left}"
