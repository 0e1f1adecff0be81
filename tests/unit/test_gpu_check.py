"""``make gpu-check`` (gpu_check/): without CUDA it says so in one line and exits 0; its step
runner reports a failed, a skipped and an over-long step as such (the last killed with its
children) and fails the check; wheels are unpacked only for what this Python lacks."""

from __future__ import annotations

import os
import subprocess
import sys
import time
import zipfile
from pathlib import Path

import pytest
from gpu_check import runner
from gpu_check.runner import Step, exit_status, run_steps, write_report
from gpu_check.wheels import missing_wheels, unpack

REPO = Path(__file__).resolve().parents[2]
PY = sys.executable


def test_without_cuda_it_checks_nothing_says_so_in_one_line_and_exits_0(tmp_path):
    env = {
        **os.environ,
        "CUDA_VISIBLE_DEVICES": "",  # no GPU, whatever the machine has
        "PYTHONPATH": os.pathsep.join([str(REPO / "src"), str(REPO)]),
    }
    report = tmp_path / "report.md"
    result = subprocess.run(
        [PY, "-m", "gpu_check", "--report", str(report)],
        cwd=REPO,
        env=env,
        capture_output=True,
        text=True,
        timeout=120,
    )
    lines = (result.stdout + result.stderr).splitlines()
    assert result.returncode == 0
    assert len(lines) == 1, lines
    assert "CUDA is not available" in lines[0] and "checked nothing" in lines[0]
    assert not report.exists()


def python_step(name: str, code: str, timeout_s: float = 30) -> Step:
    return Step(name, [PY, "-c", code], timeout_s)


@pytest.fixture
def short_boxes(monkeypatch):
    """Steps may start with 1 s left (the check's floor is more), so that the tests wait less."""
    monkeypatch.setattr(runner, "MIN_SECONDS", 1.0)


def test_steps_are_reported_as_they_ended_and_a_bad_one_fails_the_check(tmp_path, short_boxes):
    child = tmp_path / "child.pid"
    steps = [
        python_step("fine", "print('all good')"),
        python_step("broken", "print('went wrong'); raise SystemExit(3)"),
        python_step("not here", "print('no such thing here'); raise SystemExit(77)"),
        Step("known skip", [PY, "-c", "raise SystemExit(1)"], 30, skip_reason="no tool"),
        # A child of its own, as torchrun's ranks: the kill must reach it too.
        python_step(
            "too slow",
            "import subprocess, sys, time\n"
            f"p = subprocess.Popen([sys.executable, '-c', 'import time; time.sleep(60)'])\n"
            f"open({str(child)!r}, 'w').write(str(p.pid))\n"
            "print('started', flush=True)\n"
            "time.sleep(60)",
            timeout_s=4,
        ),
    ]
    started = time.monotonic()
    outcomes = run_steps(steps, 120, tmp_path, dict(os.environ))
    assert time.monotonic() - started < 30
    status = {o.step.name: (o.status, o.summary) for o in outcomes}
    assert status["fine"] == ("passed", "all good")
    assert status["broken"] == ("failed", "exit 3: went wrong")
    assert status["not here"] == ("skipped", "no such thing here")
    assert status["known skip"] == ("skipped", "no tool")
    assert status["too slow"] == ("timed out", "killed after 4 s")
    assert "started" in outcomes[-1].output
    pid = int(child.read_text())
    time.sleep(0.5)
    assert not Path(f"/proc/{pid}").exists() or "Z" in _state(pid), "the child outlived the kill"
    assert exit_status(outcomes) == 1
    assert exit_status(outcomes[2:4]) == 0  # skipped steps do not fail the check

    report = tmp_path / "report.md"
    write_report(report, ["- a machine"], outcomes)
    text = report.read_text()
    assert "**2 of 5 steps failed**" in text
    assert "| broken | failed |" in text and "| too slow | timed out |" in text
    assert "## not here: skipped" in text and "went wrong" in text


def _state(pid: int) -> str:
    try:
        return Path(f"/proc/{pid}/stat").read_text().split(")")[1].split()[0]
    except OSError:
        return "Z"


def test_a_step_left_without_time_is_not_run_and_fails_the_check(tmp_path, short_boxes):
    steps = [python_step("slow", "import time; time.sleep(60)", 30), python_step("next", "")]
    outcomes = run_steps(steps, 2, tmp_path, dict(os.environ))
    assert [o.status for o in outcomes] == ["timed out", "not run"]
    assert exit_status(outcomes) == 1


def wheel(folder: Path, distribution: str, module: str, code: str) -> Path:
    path = folder / f"{distribution}-1.0-py3-none-any.whl"
    with zipfile.ZipFile(path, "w") as archive:
        archive.writestr(f"{module}/__init__.py", code)
        archive.writestr(f"{distribution}-1.0.dist-info/METADATA", f"Name: {distribution}\n")
    return path


def test_only_the_wheels_of_missing_distributions_are_unpacked_and_import(tmp_path):
    folder = tmp_path / "wheels"
    folder.mkdir()
    wheel(folder, "pytest", "pytest", "")  # installed here: this Python's is used
    absent = wheel(folder, "gpu_check_absent_pkg", "gpu_check_absent_pkg", "VALUE = 42\n")
    assert missing_wheels(folder) == [absent]
    unpack([absent], tmp_path / "site")
    result = subprocess.run(
        [PY, "-c", "import gpu_check_absent_pkg as m; print(m.VALUE)"],
        env={**os.environ, "PYTHONPATH": str(tmp_path / "site")},
        capture_output=True,
        text=True,
    )
    assert result.stdout.strip() == "42", result.stderr


def test_the_committed_wheels_are_pure_python_and_few_megabytes():
    wheels = sorted((REPO / "gpu_check" / "wheels").glob("*.whl"))
    assert wheels and all(w.name.endswith("-none-any.whl") for w in wheels)
    assert sum(w.stat().st_size for w in wheels) < 4 * 2**20


def test_a_process_outside_the_steps_group_does_not_hold_the_check(tmp_path, monkeypatch):
    """torchrun starts its ranks in sessions of their own: a rank that survives the step's kill
    must not keep the check waiting for the end of its output."""
    monkeypatch.setattr(runner, "MIN_SECONDS", 1.0)
    monkeypatch.setattr(runner, "GRACE_S", 1.0)
    survivor = tmp_path / "survivor.pid"
    step = python_step(
        "rank left behind",
        "import subprocess, sys, time\n"
        "p = subprocess.Popen([sys.executable, '-c', 'import time; time.sleep(60)'],"
        " start_new_session=True)\n"
        f"open({str(survivor)!r}, 'w').write(str(p.pid))\n"
        "print('started', flush=True)\n"
        "time.sleep(60)",
        timeout_s=4,
    )
    started = time.monotonic()
    try:
        (outcome,) = run_steps([step], 60, tmp_path, dict(os.environ))
    finally:
        if survivor.exists():
            os.kill(int(survivor.read_text()), 9)  # the process this test started
    assert time.monotonic() - started < 15
    assert outcome.status == "timed out"
    assert "started" in outcome.output and "not waited for" in outcome.output
