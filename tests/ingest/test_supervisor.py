"""Crashing and hanging decoders cost one item, never the run."""

from __future__ import annotations

import os
import time
from pathlib import Path

import pytest

from clinic.ingest.supervisor import (
    CRASHED,
    TIMED_OUT,
    InflightJournal,
    Supervised,
    run_supervised,
)

Task = tuple[str, str]  # (key, behaviour)


def behave(task: Task) -> str:
    key, behaviour = task
    if behaviour == "abort":
        os.abort()
    if behaviour == "hang":
        time.sleep(3600)
    return f"ok:{key}"


def task_key(task: Task) -> str:
    return task[0]


def refuse(task: Task, why: str) -> str:
    return f"{why}:{task[0]}"


def supervised(tmp_path: Path) -> Supervised[Task, str]:
    return Supervised(
        work=behave,
        key=task_key,
        crashed=refuse,
        journal=InflightJournal(tmp_path / "inflight"),
        stall_timeout_s=4.0,
        isolated_timeout_s=3.0,
    )


@pytest.mark.slow
@pytest.mark.parametrize("workers", [1, 2])
def test_aborting_and_hanging_items_are_refused_and_the_rest_finish(
    tmp_path: Path, workers: int
) -> None:
    tasks = [(f"t{i}", "ok") for i in range(8)]
    tasks[2] = ("t2", "abort")
    tasks[5] = ("t5", "hang")
    results = sorted(run_supervised(supervised(tmp_path), tasks, workers))
    expected = sorted([f"ok:t{i}" for i in range(8) if i not in (2, 5)])
    assert results == sorted([*expected, f"{CRASHED}:t2", f"{TIMED_OUT}:t5"])
    assert list((tmp_path / "inflight").glob("*.inflight")) == []


def test_a_journal_left_by_a_dead_process_makes_its_item_a_suspect(tmp_path: Path) -> None:
    journal = InflightJournal(tmp_path / "inflight")
    journal.root.mkdir(parents=True)
    (journal.root / "999999999.inflight").write_text("t1")
    (journal.root / f"{os.getpid()}.inflight").write_text("t0")  # alive: not a suspect
    assert journal.left_by_dead_processes() == {"t1"}
    results = sorted(run_supervised(supervised(tmp_path), [("t0", "ok"), ("t1", "ok")], 1))
    assert results == ["ok:t0", "ok:t1"]  # the suspect decoded fine when isolated
