"""Helpers of the tests that run a DAG on a tiny config in a temporary repository."""

from __future__ import annotations

import subprocess
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
