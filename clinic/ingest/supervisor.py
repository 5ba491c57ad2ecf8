"""Run decoders so that a crash or a hang costs one item, never the run.

Decoders are native code: a corrupt file can abort the process (python-gdcm does on a bad JPEG
2000 stream), crash it, or loop forever, and no ``try``/``except`` or Python-level alarm helps.
So every worker notes in a journal which item it is decoding. When a worker dies, or nothing
completes for ``stall_timeout_s``, the pool is torn down; the items the dead workers were holding
become *suspects* and are decoded once more, alone, in a throw-away process with a time limit. A
suspect that crashes or times out again is refused with its own reason; the other items go on in
a fresh pool. A journal left by a killed run (``kill -9``, or an abort with one worker) is read at
the start of the next one, so a file that takes the whole process down is met as a suspect there.
"""

from __future__ import annotations

import multiprocessing
import os
from collections.abc import Callable, Iterator
from concurrent.futures import FIRST_COMPLETED, Future, ProcessPoolExecutor, wait
from concurrent.futures.process import BrokenProcessPool
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Generic, TypeVar

from clinic.store.blobs import _process_alive

Task = TypeVar("Task")
Result = TypeVar("Result")


@dataclass(frozen=True)
class InflightJournal:
    """One small file per worker process holding the key of the item it is decoding."""

    root: Path

    def _file(self, pid: int) -> Path:
        return self.root / f"{pid}.inflight"

    def mark(self, key: str) -> None:
        self.root.mkdir(parents=True, exist_ok=True)
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
            if path.stem.isdigit() and not _process_alive(int(path.stem))
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


def run_supervised(
    supervised: Supervised[Task, Result], tasks: list[Task], workers: int
) -> Iterator[Result]:
    """Yield one result per task, in completion order, surviving crashing and hanging decoders.

    ``workers=0`` decodes in this process (for profiling): a crash then ends the run, and the
    next run meets the culprit as a suspect.
    """
    suspects = supervised.journal.left_by_dead_processes()
    if workers <= 0:
        yield from _run_inline(supervised, tasks, suspects)
        return
    remaining = list(tasks)
    while remaining:
        isolated = [t for t in remaining if supervised.key(t) in suspects]
        for task in isolated:
            yield _run_isolated(supervised, task)
        remaining = [t for t in remaining if supervised.key(t) not in suspects]
        if not remaining:
            return
        done_keys: set[str] = set()
        new_suspects: set[str] = set()
        for result, key in _run_pool(supervised, remaining, workers, new_suspects):
            done_keys.add(key)
            yield result
        remaining = [t for t in remaining if supervised.key(t) not in done_keys]
        suspects = new_suspects
        if remaining and not suspects:  # the pool broke without a journal entry: isolate all
            suspects = {supervised.key(t) for t in remaining}


def _run_inline(
    supervised: Supervised[Task, Result], tasks: list[Task], suspects: set[str]
) -> Iterator[Result]:
    global _JOURNAL
    if supervised.initializer is not None:
        supervised.initializer(*supervised.initargs)
    _JOURNAL = supervised.journal
    for task in tasks:
        if supervised.key(task) in suspects:
            yield _run_isolated(supervised, task)
        else:
            yield _journaled(supervised.work, supervised.key(task), task)


def _run_pool(
    supervised: Supervised[Task, Result],
    tasks: list[Task],
    workers: int,
    suspects: set[str],
) -> Iterator[tuple[Result, str]]:
    """Run ``tasks`` on a pool until done or broken; on a break, fill ``suspects`` and stop."""
    context = multiprocessing.get_context("forkserver")
    executor = ProcessPoolExecutor(
        max_workers=max(1, workers),
        mp_context=context,
        initializer=_journaled_initializer,
        initargs=(supervised.journal, supervised.initializer, supervised.initargs),
    )
    pending: dict[Future[Result], str] = {}
    queue = iter(tasks)
    try:
        _fill(executor, supervised, queue, pending, limit=workers * 8)
        while pending:
            done, _ = wait(pending, timeout=supervised.stall_timeout_s, return_when=FIRST_COMPLETED)
            if not done:  # nothing finished for a long time: some decoder hangs
                raise _StalledError
            for future in done:
                key = pending.pop(future)
                yield future.result(), key
            _fill(executor, supervised, queue, pending, limit=workers * 8)
    except (BrokenProcessPool, _StalledError):
        worker_pids = set(executor._processes or {})  # no public accessor
        _kill(worker_pids)
        suspects.update(supervised.journal.held_by(worker_pids))
    finally:
        executor.shutdown(wait=False, cancel_futures=True)


class _StalledError(Exception):
    """No task completed within the stall timeout."""


def _fill(
    executor: ProcessPoolExecutor,
    supervised: Supervised[Task, Result],
    queue: Iterator[Task],
    pending: dict[Future[Result], str],
    limit: int,
) -> None:
    """Keep a bounded number of tasks in flight, so a broken pool loses few submissions."""
    while len(pending) < limit:
        task = next(queue, None)
        if task is None:
            return
        pending[executor.submit(_journaled, supervised.work, supervised.key(task), task)] = (
            supervised.key(task)
        )


def _kill(pids: set[int]) -> None:
    for pid in pids:
        try:
            os.kill(pid, 9)
        except ProcessLookupError:
            continue


_JOURNAL: InflightJournal | None = None


def _journaled_initializer(
    journal: InflightJournal, initializer: Callable[..., None] | None, initargs: tuple[Any, ...]
) -> None:
    global _JOURNAL
    _JOURNAL = journal
    if initializer is not None:
        initializer(*initargs)


def _journaled(work: Callable[[Task], Result], key: str, task: Task) -> Result:
    assert _JOURNAL is not None
    _JOURNAL.mark(key)
    result = work(task)
    _JOURNAL.clear()
    return result


def _run_isolated(supervised: Supervised[Task, Result], task: Task) -> Result:
    """Decode one suspect alone in a fresh process; a crash or a timeout refuses it."""
    context = multiprocessing.get_context("forkserver")
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
    if initializer is not None:
        initializer(*initargs)
    sender.send(work(task))
    sender.close()
