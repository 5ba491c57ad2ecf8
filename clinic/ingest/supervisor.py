"""Run decoders so that a crash or a hang costs one item, never the run.

Decoders are native code: a corrupt file can abort the process (python-gdcm does on a bad JPEG
2000 stream), crash it, or loop forever, and no ``try``/``except`` or Python-level alarm helps.
So decoding runs in worker processes that each hold a known list of tasks (the first in
progress, one more sent ahead so the worker never waits). When a worker dies, or its task runs
longer than ``stall_timeout_s``, the worker is killed and replaced: its task in progress becomes a
*suspect* and is decoded once more, alone, in a throw-away process with a time limit; a suspect
that crashes or times out again is refused with its own reason; its unstarted tasks go back to
the queue. Every worker also notes in a journal which item it is decoding, so an item left in
flight by a killed run (``kill -9``, or an abort in-process) is met as a suspect by the next run.
"""

from __future__ import annotations

import contextlib
import multiprocessing
import os
import signal
import time
from collections import deque
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from multiprocessing.connection import Connection
from multiprocessing.connection import wait as connection_wait
from multiprocessing.process import BaseProcess
from pathlib import Path
from typing import Any, Generic, TypeVar

from clinic.store.blobs import process_alive

Task = TypeVar("Task")
Result = TypeVar("Result")


@dataclass(frozen=True)
class InflightJournal:
    """One small file per worker process holding the key of the item it is decoding."""

    root: Path

    def _file(self, pid: int) -> Path:
        return self.root / f"{pid}.inflight"

    def mark(self, key: str) -> None:
        """Note ``key`` as this process's task in progress (run_supervised made the folder)."""
        self._file(os.getpid()).write_text(key)

    def clear(self) -> None:
        self._file(os.getpid()).unlink(missing_ok=True)

    def held_by(self, pids: set[int]) -> set[str]:
        """Keys held by these (dead) workers; their journal files are removed."""
        keys = set()
        for pid in pids:
            path = self._file(pid)
            if path.is_file():
                keys.add(path.read_text().strip())
                path.unlink(missing_ok=True)
        return keys - {""}

    def left_by_dead_processes(self) -> set[str]:
        """Keys held by processes that no longer run (a killed or crashed earlier run)."""
        if not self.root.is_dir():
            return set()
        dead = {
            int(path.stem)
            for path in self.root.glob("*.inflight")
            if path.stem.isdigit() and not process_alive(int(path.stem))
        }
        return self.held_by(dead)


@dataclass(frozen=True)
class Supervised(Generic[Task, Result]):
    """How to decode: ``work(task)`` in a worker, ``key(task)`` names it in the journal,
    ``crashed(task, reason)`` builds the refusal for a task that killed its process twice."""

    work: Callable[[Task], Result]
    key: Callable[[Task], str]
    crashed: Callable[[Task, str], Result]
    journal: InflightJournal
    initializer: Callable[..., None] | None = None
    initargs: tuple[Any, ...] = ()
    stall_timeout_s: float = 300.0
    isolated_timeout_s: float = 120.0


CRASHED = "crashed"
TIMED_OUT = "timed_out"


PREFETCH = 2  # tasks sent ahead to each worker, so it never waits for the next one


def _process_context() -> Any:
    """``fork`` where the platform has it: a worker starts in ~10 ms with the parent's imports.

    (A ``forkserver`` child took ~0.8 s to start here, ``spawn`` longer.) The caller must not
    hold other threads that a child could need; the engine runs its progress display without
    a refresh thread for that reason.
    """
    methods = multiprocessing.get_all_start_methods()
    return multiprocessing.get_context("fork" if "fork" in methods else "spawn")


def run_supervised(
    supervised: Supervised[Task, Result], tasks: list[Task], workers: int
) -> Iterator[Result]:
    """Yield one result per task, in completion order, surviving crashing and hanging decoders.

    ``workers=0`` decodes in this process (for profiling): a crash then ends the run, and the
    next run meets the culprit as a suspect.
    """
    suspects = supervised.journal.left_by_dead_processes()
    supervised.journal.root.mkdir(parents=True, exist_ok=True)  # once, not once per task
    for task in tasks:
        if supervised.key(task) in suspects:
            yield _run_isolated(supervised, task)
    remaining = [t for t in tasks if supervised.key(t) not in suspects]
    if workers <= 0:
        yield from _run_inline(supervised, remaining)
    elif remaining:
        yield from _run_pool(supervised, remaining, workers)


def _run_inline(supervised: Supervised[Task, Result], tasks: list[Task]) -> Iterator[Result]:
    if supervised.initializer is not None:
        supervised.initializer(*supervised.initargs)
    for task in tasks:
        supervised.journal.mark(supervised.key(task))
        result = supervised.work(task)
        supervised.journal.clear()
        yield result


@dataclass
class _Worker(Generic[Task]):
    """A decoding process, the tasks sent to it (the first one is in progress), and since when."""

    process: BaseProcess
    connection: Connection
    outstanding: list[Task]
    busy_since: float


def _run_pool(
    supervised: Supervised[Task, Result], tasks: list[Task], workers: int
) -> Iterator[Result]:
    """Decode on ``workers`` processes; a dead or stuck one is replaced, its task isolated."""
    context = _process_context()
    queue = deque(tasks)
    pool = [_start_worker(context, supervised) for _ in range(min(workers, len(tasks)))]
    try:
        for worker in pool:
            _feed(worker, queue, PREFETCH)
        while any(worker.outstanding for worker in pool):
            busy = [worker for worker in pool if worker.outstanding]
            deadline = min(w.busy_since for w in busy) + supervised.stall_timeout_s
            waitables: list[Any] = [w.connection for w in busy] + [w.process.sentinel for w in busy]
            ready = connection_wait(waitables, timeout=max(deadline - time.monotonic(), 0.0))
            for index, worker in enumerate(pool):
                if not worker.outstanding:
                    continue
                for result in _drain(worker):
                    yield result
                    _feed(worker, queue, 1)
                stuck = time.monotonic() - worker.busy_since > supervised.stall_timeout_s
                dead = worker.process.sentinel in ready or not worker.process.is_alive()
                if worker.outstanding and (dead or stuck):
                    yield _run_isolated(supervised, _retire(worker, queue, supervised.journal))
                    pool[index] = _start_worker(context, supervised)
                    _feed(pool[index], queue, PREFETCH)
    finally:
        for worker in pool:
            _stop(worker)


def _start_worker(context: Any, supervised: Supervised[Task, Result]) -> _Worker[Task]:
    parent, child = context.Pipe(duplex=True)
    process = context.Process(
        target=_worker_loop,
        args=(child, supervised.work, supervised.key, supervised.journal),
        kwargs={"initializer": supervised.initializer, "initargs": supervised.initargs},
        daemon=True,
    )
    process.start()
    child.close()
    return _Worker(process, parent, [], time.monotonic())


def _feed(worker: _Worker[Task], queue: deque[Task], count: int) -> None:
    for _ in range(count):
        if not queue:
            return
        task = queue.popleft()
        if not worker.outstanding:
            worker.busy_since = time.monotonic()
        worker.outstanding.append(task)
        worker.connection.send(task)


def _drain(worker: _Worker[Task]) -> Iterator[Any]:
    """Results the worker has sent, oldest task first; stops at a closed pipe (a dead worker)."""
    while worker.outstanding and worker.connection.poll():
        try:
            result = worker.connection.recv()
        except (EOFError, OSError):
            return
        worker.outstanding.pop(0)
        worker.busy_since = time.monotonic()
        yield result


def _retire(worker: _Worker[Task], queue: deque[Task], journal: InflightJournal) -> Task:
    """Kill a dead or stuck worker: its task in progress is returned, the rest queued again."""
    worker.process.kill()
    worker.process.join()
    if worker.process.pid is not None:
        journal.held_by({worker.process.pid})  # its entry is handled here, not by the next run
    worker.connection.close()
    suspect, *unstarted = worker.outstanding
    queue.extendleft(reversed(unstarted))
    worker.outstanding = []
    return suspect


def _stop(worker: _Worker[Task]) -> None:
    with contextlib.suppress(OSError, ValueError):
        worker.connection.send(None)
    worker.process.join(timeout=2)
    if worker.process.is_alive():
        worker.process.kill()
        worker.process.join()
    worker.connection.close()


def _leave_signals_to_the_parent() -> None:
    """Ctrl-C and SIGTERM are the parent's to handle (it stops its workers); a worker exits
    quietly on SIGTERM instead of inheriting the parent's handlers through the fork."""
    signal.signal(signal.SIGINT, signal.SIG_IGN)
    signal.signal(signal.SIGTERM, signal.SIG_DFL)


def _worker_loop(
    connection: Connection,
    work: Callable[[Task], Result],
    key: Callable[[Task], str],
    journal: InflightJournal,
    *,
    initializer: Callable[..., None] | None,
    initargs: tuple[Any, ...],
) -> None:
    """Decode tasks from the pipe until told to stop; the journal names the one in progress."""
    _leave_signals_to_the_parent()
    if initializer is not None:
        initializer(*initargs)
    while True:
        try:
            task = connection.recv()
        except EOFError:
            return
        if task is None:
            return
        journal.mark(key(task))
        connection.send(work(task))
        journal.clear()


def _run_isolated(supervised: Supervised[Task, Result], task: Task) -> Result:
    """Decode one suspect alone in a fresh process; a crash or a timeout refuses it."""
    context = _process_context()
    receiver, sender = context.Pipe(duplex=False)
    process = context.Process(
        target=_isolated_entry,
        args=(supervised.work, task, sender, supervised.initializer, supervised.initargs),
    )
    process.start()
    sender.close()
    result: Result | None = None
    if receiver.poll(supervised.isolated_timeout_s):
        try:
            result = receiver.recv()
        except EOFError:
            result = None
    process.join(timeout=5)
    if process.is_alive():
        process.kill()
        process.join()
        return supervised.crashed(task, TIMED_OUT)
    if result is None:
        return supervised.crashed(task, CRASHED)
    return result


def _isolated_entry(
    work: Callable[[Task], Result],
    task: Task,
    sender: Any,
    initializer: Callable[..., None] | None,
    initargs: tuple[Any, ...],
) -> None:
    _leave_signals_to_the_parent()
    if initializer is not None:
        initializer(*initargs)
    sender.send(work(task))
    sender.close()
