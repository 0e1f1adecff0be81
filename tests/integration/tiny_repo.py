"""Helpers of the tests that run a DAG on a tiny config in a temporary repository."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest


def merge(base: dict, override: dict) -> dict:
    """``base`` with the (nested) keys of ``override`` replaced."""
    out = dict(base)
    for key, value in override.items():
        out[key] = merge(base[key], value) if isinstance(value, dict) else value
    return out


def run(cmd: list[str], cwd: Path, env: dict[str, str]) -> subprocess.CompletedProcess:
    """Run ``cmd``; fail the test with its output if it exits non-zero."""
    result = subprocess.run(cmd, cwd=cwd, env=env, capture_output=True, text=True)
    if result.returncode != 0:
        pytest.fail(
            f"{' '.join(cmd)} failed ({result.returncode}):\n{result.stdout}\n{result.stderr}"
        )
    return result


def repo_env(root: Path) -> dict[str, str]:
    """The environment of the commands run in a temporary copy at ``root``: this Python's
    scripts first, the copy's ``src/``, the project's own MLflow store (``<root>/mlflow.db``),
    no analytics, a git identity."""
    env = {
        **os.environ,
        "PATH": f"{Path(sys.executable).parent}{os.pathsep}{os.environ['PATH']}",
        "PYTHONPATH": str(root / "src"),
        "DVC_NO_ANALYTICS": "1",
        "MLFLOW_DISABLE_TELEMETRY": "true",
    }
    env.update({f"GIT_{who}_NAME": "t" for who in ("AUTHOR", "COMMITTER")})
    env.update({f"GIT_{who}_EMAIL": "t@t" for who in ("AUTHOR", "COMMITTER")})
    env.pop("MLFLOW_TRACKING_URI", None)
    return env


def init_repo(root: Path, env: dict[str, str], message: str) -> None:
    """``root`` as a git and DVC repository with everything in it committed."""
    run(["git", "init", "-q"], root, env)
    run([sys.executable, "-m", "dvc", "init", "-q"], root, env)
    run(["git", "add", "-A"], root, env)
    run(["git", "commit", "-qm", message], root, env)
