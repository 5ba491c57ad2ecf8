"""Console helpers: human output on stdout, or JSON on stdout with everything else on stderr."""

from __future__ import annotations

import json
from collections.abc import Iterator
from contextlib import contextmanager
from typing import Any

from rich.console import Console
from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn
from rich.table import Table

from clinic.ingest.engine import IngestSummary, ProgressCallback


def consoles(as_json: bool) -> tuple[Console, Console]:
    """(human, errors) consoles: with ``--json`` human output moves to stderr."""
    errors = Console(stderr=True)
    return (errors if as_json else Console()), errors


def print_json(data: Any) -> None:
    print(json.dumps(data, indent=2, sort_keys=False, default=str))


@contextmanager
def progress_bar(console: Console, description: str) -> Iterator[ProgressCallback]:
    """A progress bar fed by ``callback(done, total)``."""
    columns = (
        TextColumn("[bold]{task.description}"),
        BarColumn(),
        MofNCompleteColumn(),
        TimeElapsedColumn(),
    )
    # No refresh thread: ingestion forks its workers, and a fork must not copy a thread's locks.
    with Progress(*columns, console=console, transient=False, auto_refresh=False) as progress:
        task = progress.add_task(description, total=None)

        def update(done: int, total: int) -> None:
            progress.update(task, completed=done, total=total)
            progress.refresh()

        yield update


def summary_table(summary: IngestSummary) -> Table:
    table = Table(title=f"Ingest run {summary.run_id}", show_header=True)
    table.add_column("outcome")
    table.add_column("items", justify="right")
    table.add_row("seen", str(summary.seen))
    table.add_row("ingested", str(summary.ingested))
    table.add_row("already stored", str(summary.already_stored))
    table.add_row("quarantined", str(summary.quarantined))
    for reason, count in sorted(summary.quarantined_by_reason.items()):
        table.add_row(f"  {reason}", str(count))
    return table


def counts_table(title: str, counts: dict[str, int]) -> Table:
    table = Table(title=title)
    table.add_column("what")
    table.add_column("count", justify="right")
    for name, count in counts.items():
        table.add_row(name, str(count))
    return table
