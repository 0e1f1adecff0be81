"""Helpers of the reliability suite: hostile input through the real stage CLIs.

Each case runs a documented entry point (a stage script with the arguments dvc.yaml gives it,
or ``captioning predict``) as a subprocess and checks what a user would see: the exit code,
the one-line error, the counts in the manifest, and that nothing was written outside the
stage's outputs. docs/reliability.md lists the cases and the test of each.
"""

from __future__ import annotations

import hashlib
import os
import subprocess
import sys
from pathlib import Path

REPO = Path(__file__).resolve().parents[2]


def run_stage(script: str, *args: str, cwd: Path | None = None, timeout: float = 300):
    """``python stages/<script> <args>`` as dvc.yaml runs it; its output captured."""
    return subprocess.run(
        [sys.executable, str(REPO / "stages" / script), *args],
        capture_output=True,
        text=True,
        cwd=cwd or REPO,
        timeout=timeout,
        env={**os.environ, "PYTHONUNBUFFERED": "1"},
    )


def run_fetch(root: Path, params: Path):
    """The fetch stage as dvc.yaml runs it, in ``root``: data/raw, data/downloads."""
    raw, downloads = root / "data" / "raw", root / "data" / "downloads"
    args = ("--params", str(params), "--out", str(raw), "--downloads", str(downloads))
    return run_stage("fetch.py", *args, cwd=root)


def run_shard(params: Path, raw: Path, out: Path, *, cwd: Path | None = None):
    """The shard stage as dvc.yaml runs it."""
    return run_stage(
        "shard.py", "--params", str(params), "--raw", str(raw), "--out", str(out), cwd=cwd
    )


def run_cli(*args: str, cwd: Path | None = None, timeout: float = 300, env: dict | None = None):
    """The ``captioning`` console script (``python -m captioning.cli``)."""
    return subprocess.run(
        [sys.executable, "-m", "captioning.cli", *args],
        capture_output=True,
        text=True,
        cwd=cwd or REPO,
        timeout=timeout,
        env={**os.environ, "PYTHONUNBUFFERED": "1", **(env or {})},
    )


def error_lines(result: subprocess.CompletedProcess) -> list[str]:
    """The ERROR lines a run logged (runtime.setup's format: ``HH:MM:SS ERROR name: msg``)."""
    return [line for line in result.stderr.splitlines() if " ERROR " in line]


def assert_one_line_error(result: subprocess.CompletedProcess, *fragments: str) -> str:
    """Exit 2, no traceback, exactly one ERROR line, holding every fragment; returns it."""
    output = f"stdout:\n{result.stdout}\nstderr:\n{result.stderr}"
    assert result.returncode == 2, f"expected exit 2, got {result.returncode}\n{output}"
    assert "Traceback" not in result.stderr, output
    lines = error_lines(result)
    assert len(lines) == 1, f"expected one ERROR line, got {len(lines)}\n{output}"
    for fragment in fragments:
        assert fragment in lines[0], f"{fragment!r} not in the error line\n{output}"
    return lines[0]


def tree_digest(root: Path, *, exclude: tuple[Path, ...] = ()) -> dict[str, str]:
    """Relative path -> sha256 of every file under ``root`` (links as their target text),
    leaving out the trees in ``exclude``: the stage's own outputs."""
    excluded = [p.resolve() for p in exclude]
    out: dict[str, str] = {}
    for dirpath, dirnames, filenames in os.walk(root):
        here = Path(dirpath)
        dirnames[:] = [d for d in dirnames if (here / d).resolve() not in excluded]
        for name in filenames:
            path = here / name
            if path.resolve() in excluded:
                continue
            if path.is_symlink():
                out[str(path.relative_to(root))] = "link:" + os.readlink(path)
            else:
                out[str(path.relative_to(root))] = hashlib.sha256(path.read_bytes()).hexdigest()
    return out
