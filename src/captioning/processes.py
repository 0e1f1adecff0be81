"""Worker processes that end with the stage that started them; one run per work directory.

A stage's workers (the shard stage's and the CAPTCHA source's process pools, the features
stage's DataLoader decoders) are started by multiprocessing's forkserver, so their parent is
the forkserver, not the stage. When the stage is killed (SIGKILL, the OOM killer) nothing told
them, and nothing ended them: each holds the forkserver's "alive" pipe and the resource
tracker's pipe, so those two waited for the workers; the workers waited for work on queues of
which they hold both ends, after finishing the tasks already queued (the shard stage's went on
writing shards into its work directory). torch's DataLoader watchdog only notices a change of
the worker's parent: the forkserver, which stayed. prctl(PR_SET_PDEATHSIG) has the same blind
spot (it fires when the *parent* dies) and is Linux-only.

The lifeline: the stage opens one pipe and keeps its write end to itself. Every worker runs a
``WorkerGuard`` first (a pool's ``initializer``, a DataLoader's ``worker_init_fn``): it gets the
read end and blocks a daemon thread on it. The kernel closes the write end when the stage's
process is gone, however it died; the read returns end-of-file and the thread kills its worker.
No polling and no race: a worker that starts after the stage died reads end-of-file at once.
With the workers gone, the forkserver sees end-of-file on its "alive" pipe and exits, and the
resource tracker sees it on its own pipe and exits (after freeing what the dead leaked). The
write end reaches no other process: the forkserver and the resource tracker are exec'd with
only the descriptors they need, workers are forked from the forkserver, and a child forked
from the stage itself closes its copy (``os.register_at_fork``).

A work directory (``exclusive``) is locked with flock on ``<work>.lock`` beside it, and the
guard hands a duplicate of that lock to every worker, so it is released only when the stage
*and* all its workers are gone. A second run of the stage on the same output waits for the
lock (logging that it waits) instead of failing: the usual holder is a killed run whose workers
are ending, and a resume must not start while they can still write; a concurrent run waits
for the other to finish, then does its work again.
"""

from __future__ import annotations

import contextlib
import fcntl
import logging
import multiprocessing
import os
import signal
import threading
from collections.abc import Callable, Iterator, Sequence
from concurrent.futures import FIRST_COMPLETED, Future, ProcessPoolExecutor, wait
from multiprocessing import reduction
from pathlib import Path
from typing import Any, TypeVar

logger = logging.getLogger(__name__)

_lifeline: tuple[int, int] | None = None  # (read end, write end), made on first use
_locks: list[int] = []  # the work-directory locks this process holds: its workers hold them too
_kept: list[int] = []  # in a worker: the lock duplicates it keeps open until it ends

Item = TypeVar("Item")
Result = TypeVar("Result")


class WorkerGuard:
    """Run first in each worker process (``initializer=`` / ``worker_init_fn=``): the worker
    then ends when the process that made the guard does, and holds its work-directory locks."""

    def __init__(self, fds: tuple[int, ...]) -> None:
        self.fds = fds  # the lifeline's read end, then the locks

    def __reduce__(self):
        # Pickled as the worker is started (forkserver, spawn): each descriptor is sent along
        # and arrives as the worker's own duplicate.
        return (_rebuilt_guard, tuple(reduction.DupFd(fd) for fd in self.fds))

    def __call__(self, *_worker_id: int) -> None:
        lifeline, *locks = self.fds
        _kept.extend(locks)
        threading.Thread(
            target=_die_with_stage, args=(lifeline,), name="lifeline", daemon=True
        ).start()


def worker_guard() -> WorkerGuard:
    """The guard for the workers this process is about to start."""
    return WorkerGuard((_lifeline_ends()[0], *_locks))


def run_each(
    task: Callable[..., Result], items: Sequence[Item], args: tuple[Any, ...], workers: int
) -> Iterator[tuple[Item, Result]]:
    """``(item, task(item, *args))`` for every item: in order in this process when ``workers``
    <= 1, else as they finish in a pool of ``workers`` guarded processes. Forkserver: the
    workers do not inherit this process's threads (tqdm's monitor) or locks. An error (or the
    caller stopping early) cancels the items not yet started."""
    if workers <= 1:
        for item in items:
            yield item, task(item, *args)
        return
    context = multiprocessing.get_context("forkserver")
    with ProcessPoolExecutor(workers, mp_context=context, initializer=worker_guard()) as pool:
        pending: dict[Future, Item] = {pool.submit(task, item, *args): item for item in items}
        try:
            while pending:
                finished, _ = wait(pending, return_when=FIRST_COMPLETED)
                for future in finished:
                    yield pending.pop(future), future.result()
        except BaseException:
            pool.shutdown(wait=True, cancel_futures=True)
            raise


@contextlib.contextmanager
def exclusive(work: Path) -> Iterator[None]:
    """Hold the lock of work directory ``work`` while the body runs (see the module doc)."""
    lock = work.with_name(f"{work.name}.lock")
    lock.parent.mkdir(parents=True, exist_ok=True)
    fd = _acquire(lock)
    _locks.append(fd)
    try:
        yield
    finally:
        _locks.remove(fd)
        lock.unlink(missing_ok=True)  # still held: a waiter then finds it gone and retries
        os.close(fd)


def _acquire(lock: Path) -> int:
    waited = False
    while True:
        fd = os.open(lock, os.O_RDWR | os.O_CREAT | os.O_CLOEXEC, 0o644)
        try:
            try:
                fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
            except BlockingIOError:
                if not waited:
                    logger.info(
                        "waiting for %s: another run of this stage, or the workers of a killed "
                        "one, still hold it",
                        lock,
                    )
                    waited = True
                fcntl.flock(fd, fcntl.LOCK_EX)
            # The holder unlinks the file before it lets go: a lock on that one guards nothing.
            if os.path.exists(lock) and os.path.samestat(os.fstat(fd), os.stat(lock)):
                return fd
        except BaseException:
            os.close(fd)
            raise
        os.close(fd)


def _lifeline_ends() -> tuple[int, int]:
    global _lifeline
    if _lifeline is None:
        _lifeline = os.pipe()  # not inheritable: only forks (handled below) copy it
    return _lifeline


def _forget_lifeline() -> None:
    """In a child forked from the stage: its copy of the write end would keep the pipe open
    (the read end stays, for a guard inherited by the fork; the child makes its own lifeline
    if it starts workers)."""
    global _lifeline
    if _lifeline is not None:
        os.close(_lifeline[1])
        _lifeline = None


os.register_at_fork(after_in_child=_forget_lifeline)


def _rebuilt_guard(*fds: reduction.DupFd) -> WorkerGuard:
    return WorkerGuard(tuple(fd.detach() for fd in fds))


def _die_with_stage(fd: int) -> None:
    while os.read(fd, 1):
        pass  # nothing is ever written: the read returns b"" when the stage is gone
    os.kill(os.getpid(), signal.SIGKILL)
