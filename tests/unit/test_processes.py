"""Workers that end with the process that started them; one holder per work directory."""

from __future__ import annotations

import logging
import os
import signal
import subprocess
import sys
import threading
import time
from pathlib import Path

import pytest

from captioning.processes import exclusive, run_each

# A "stage": a pool whose workers block in a task; prints their pids, then waits to be killed.
STAGE = """
import multiprocessing, sys, time
from concurrent.futures import ProcessPoolExecutor
from captioning.processes import worker_guard

def pid_then_block(_):
    import os, time
    # One write per line: with PYTHONUNBUFFERED print writes the pid and the newline apart, and
    # the two workers' lines could interleave.
    os.write(1, f"{os.getpid()}\\n".encode())
    time.sleep(600)

if __name__ == "__main__":
    context = multiprocessing.get_context(sys.argv[1])
    pool = ProcessPoolExecutor(2, mp_context=context, initializer=worker_guard())
    for i in range(2):
        pool.submit(pid_then_block, i)
    time.sleep(600)
"""


def _alive(pid: int) -> bool:
    try:
        state = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[0]
    except FileNotFoundError:
        return False
    return state not in "ZX"


@pytest.mark.skipif(not Path("/proc/self/stat").is_file(), reason="needs /proc")
@pytest.mark.parametrize("method", ["forkserver", "fork", "spawn"])
def test_workers_end_when_their_stage_is_killed(tmp_path: Path, method: str) -> None:
    script = tmp_path / "stage.py"
    script.write_text(STAGE)
    stage = subprocess.Popen(
        [sys.executable, str(script), method], stdout=subprocess.PIPE, text=True
    )
    workers: list[int] = []
    try:
        assert stage.stdout is not None
        workers = [int(stage.stdout.readline()) for _ in range(2)]
        os.kill(stage.pid, signal.SIGKILL)
        stage.wait()
        deadline = time.monotonic() + 20
        while any(_alive(pid) for pid in workers) and time.monotonic() < deadline:
            time.sleep(0.02)
        assert not any(_alive(pid) for pid in workers), f"workers {workers} outlived the stage"
    finally:
        stage.kill()
        stage.wait()
        for pid in workers:
            if _alive(pid):
                os.kill(pid, signal.SIGKILL)


def test_exclusive_waits_for_the_holder_then_cleans_up(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    work = tmp_path / ".out.partial"
    lock = tmp_path / ".out.partial.lock"
    second_has_it = threading.Event()

    def second() -> None:
        with exclusive(work):
            second_has_it.set()

    with caplog.at_level(logging.INFO, logger="captioning.processes"):
        with exclusive(work):
            assert lock.is_file()
            waiter = threading.Thread(target=second)
            waiter.start()
            deadline = time.monotonic() + 20
            while "waiting for" not in caplog.text and time.monotonic() < deadline:
                time.sleep(0.01)
            assert "waiting for" in caplog.text
            assert not second_has_it.is_set()
        waiter.join(timeout=20)
    assert second_has_it.is_set()
    assert not lock.exists()


@pytest.mark.parametrize("workers", [1, 2])
def test_run_each_pairs_every_item_with_its_result(workers: int) -> None:
    # divmod: a builtin, so the forkserver's workers need not import this test module
    results = dict(run_each(divmod, [7, 9, 10], (4,), workers))
    assert results == {7: (1, 3), 9: (2, 1), 10: (2, 2)}


@pytest.mark.parametrize("workers", [1, 2])
def test_run_each_raises_a_task_error(workers: int) -> None:
    with pytest.raises(ZeroDivisionError):
        list(run_each(divmod, [1, 2], (0,), workers))
