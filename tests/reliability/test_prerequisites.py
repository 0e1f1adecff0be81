"""The README's test command on a machine with only what the README lists (no browser)."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

from tests.reliability.conftest import REPO

UI_TEST = "tests/integration/test_mlflow_ui.py"


def run_ui_test(tmp_path: Path, *, ci: str | None) -> subprocess.CompletedProcess:
    """The MLflow UI test with a PATH that holds no chromium (an empty folder)."""
    env = {k: v for k, v in os.environ.items() if k != "CI"}
    env["PATH"] = str(tmp_path)
    if ci is not None:
        env["CI"] = ci
    return subprocess.run(
        [sys.executable, "-m", "pytest", "-rs", "-p", "no:cacheprovider", UI_TEST],
        cwd=REPO,
        env=env,
        capture_output=True,
        text=True,
        timeout=300,
    )


def test_ui_test_skips_with_its_reason_without_chromium(tmp_path: Path):
    result = run_ui_test(tmp_path, ci=None)
    assert result.returncode == 0, result.stdout[-3000:]
    assert "1 skipped" in result.stdout
    assert "chromium is not installed" in result.stdout  # the reason, in pytest's summary


def test_ui_test_fails_in_ci_without_chromium(tmp_path: Path):
    result = run_ui_test(tmp_path, ci="true")
    assert result.returncode == 1, result.stdout[-3000:]
    assert "CI=true but chromium is not installed" in result.stdout
