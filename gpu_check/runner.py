"""Steps run one after another, each a subprocess in its own time box, into one report file.

A step passes when its command exits 0, is skipped when it exits ``SKIPPED`` (its last output
line says why), fails on any other exit status, and is killed, with its whole process group
(torchrun's ranks, DataLoader workers, a DVC stage), when it outlives its time box. The steps
share one budget: each runs for at most what is left of it, and a step with no time left is
reported as not run. The check fails when a step failed, timed out or was not run.
"""

from __future__ import annotations

import contextlib
import os
import signal
import subprocess
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path

SKIPPED = 77  # the exit status a step uses to say it was skipped (automake's convention)
# What of a step's output the report keeps: the tail holds the results, the head how it began.
HEAD_LINES, TAIL_LINES = 15, 60
# The least a step is started with; less is "not run".
MIN_SECONDS = 5.0
# How long a step past its box has to stop after SIGTERM, then after SIGKILL.
GRACE_S = 10.0


@dataclass(frozen=True)
class Step:
    name: str  # one short line: what it checks
    command: Sequence[str]
    timeout_s: float  # its own time box (the budget left may cut it shorter)
    skip_reason: str | None = None  # known before running: reported as skipped, not run
    env: dict[str, str] = field(default_factory=dict)  # on top of the runner's environment


@dataclass(frozen=True)
class Outcome:
    step: Step
    status: str  # passed | failed | skipped | timed out | not run
    seconds: float
    summary: str  # one line: the step's last output line, the skip reason, the box
    output: str

    @property
    def bad(self) -> bool:
        return self.status in ("failed", "timed out", "not run")


def run_step(step: Step, timeout_s: float, cwd: Path, env: dict[str, str]) -> Outcome:
    """Run ``step`` for at most ``timeout_s`` seconds; its stdout and stderr together."""
    if step.skip_reason is not None:
        return Outcome(step, "skipped", 0.0, step.skip_reason, "")
    if timeout_s < MIN_SECONDS:
        return Outcome(step, "not run", 0.0, "the check's time budget was spent", "")
    started = time.monotonic()
    process = subprocess.Popen(
        list(step.command),
        cwd=cwd,
        env={**env, **step.env},
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        text=True,
        errors="replace",
        start_new_session=True,  # its own process group: a kill reaches its children too
    )
    try:
        output, _ = process.communicate(timeout=timeout_s)
    except subprocess.TimeoutExpired:
        output = _stop(process)
        seconds = time.monotonic() - started
        return Outcome(step, "timed out", seconds, f"killed after {timeout_s:.0f} s", output)
    seconds = time.monotonic() - started
    last = _last_line(output)
    if process.returncode == 0:
        return Outcome(step, "passed", seconds, last, output)
    if process.returncode == SKIPPED:
        return Outcome(step, "skipped", seconds, last, output)
    return Outcome(step, "failed", seconds, f"exit {process.returncode}: {last}", output)


def _stop(process: subprocess.Popen) -> str:
    """End a step that outlived its box, and return its output. SIGTERM first, to its process
    group: torchrun then stops its ranks, which it starts in sessions of their own (a kill of
    the group would leave them running, holding the GPU and the output pipe); SIGKILL after
    ``GRACE_S``. Output still held open by a survivor after that is left unread."""
    for signal_number, wait_s in ((signal.SIGTERM, GRACE_S), (signal.SIGKILL, GRACE_S)):
        with contextlib.suppress(ProcessLookupError):  # the group has already gone
            os.killpg(process.pid, signal_number)
        try:
            return process.communicate(timeout=wait_s)[0]
        except subprocess.TimeoutExpired as exc:
            partial = exc.output
    process.kill()
    text = partial.decode(errors="replace") if isinstance(partial, bytes) else partial or ""
    return text + "\n[a process of the step kept its output open after the kill: not waited for]"


def _last_line(output: str) -> str:
    lines = [line.strip() for line in output.splitlines() if line.strip()]
    return lines[-1] if lines else "(no output)"


def run_steps(
    steps: Sequence[Step],
    budget_s: float,
    cwd: Path,
    env: dict[str, str],
    on_outcome: Callable[[Outcome], None] | None = None,
) -> list[Outcome]:
    """Every step in order, each cut to what is left of ``budget_s``."""
    deadline = time.monotonic() + budget_s
    outcomes = []
    for step in steps:
        left = deadline - time.monotonic()
        outcome = run_step(step, min(step.timeout_s, left), cwd, env)
        outcomes.append(outcome)
        if on_outcome is not None:
            on_outcome(outcome)
    return outcomes


def exit_status(outcomes: Sequence[Outcome]) -> int:
    """1 if a step failed, timed out or was not run; 0 otherwise (skipped steps included)."""
    return 1 if any(o.bad for o in outcomes) else 0


def trimmed(output: str) -> str:
    """The output's first and last lines, the middle left out (said so)."""
    lines = output.rstrip().splitlines()
    if len(lines) <= HEAD_LINES + TAIL_LINES:
        return "\n".join(lines)
    left_out = len(lines) - HEAD_LINES - TAIL_LINES
    return "\n".join(
        [*lines[:HEAD_LINES], f"[... {left_out} lines left out ...]", *lines[-TAIL_LINES:]]
    )


def write_report(path: Path, header: Sequence[str], outcomes: Sequence[Outcome]) -> None:
    """The report: the machine, a table of the steps, then each step's output."""
    rows = [
        f"| {o.step.name} | {o.status} | {o.seconds:.0f} | {o.summary.replace('|', '/')} |"
        for o in outcomes
    ]
    failed = sum(o.bad for o in outcomes)
    verdict = f"**{failed} of {len(outcomes)} steps failed**" if failed else "**all steps passed**"
    parts = [
        "# GPU check",
        "",
        *header,
        "",
        f"{verdict} (skipped steps say why).",
        "",
        "| step | status | seconds | result |",
        "|---|---|---|---|",
        *rows,
    ]
    for o in outcomes:
        parts += ["", f"## {o.step.name}: {o.status}", ""]
        if o.step.skip_reason is None and o.status != "not run":
            parts += [f"`{' '.join(o.step.command)}`", ""]
        parts += ["```", trimmed(o.output) or o.summary, "```"]
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text("\n".join(parts) + "\n", encoding="utf-8")
