"""Shared plumbing of the benchmarks: a private store, timing, and the JSON they print."""

from __future__ import annotations

import secrets
import tempfile
import time
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path

from clinic.ingest.engine import IngestOptions, IngestSummary, ingest
from clinic.ingest.types import IngestItem
from clinic.settings import RunMode, Settings
from clinic.store.store import Store


@contextmanager
def benchmark_store(home: Path | None) -> Iterator[Store]:
    """A store of its own under ``home`` (or a temporary folder removed afterwards).

    A fresh random pseudonymisation key: a benchmark never mixes its cases with a real store's.
    """
    with tempfile.TemporaryDirectory(prefix="clinic-bench-") as scratch:
        root = (home or Path(scratch)).resolve()
        root.mkdir(parents=True, exist_ok=True)
        settings = Settings(
            home=root,
            database_url=f"sqlite:///{root / 'clinic.db'}",
            raw_pseudonym_key=_key_for(root),
            mode=RunMode.TEST,
        )
        store = Store.open(settings)
        try:
            yield store
        finally:
            store.close()


def _key_for(root: Path) -> str:
    """The key kept beside a benchmark's own store, so re-running it in the same folder resumes
    with the same pseudonyms instead of duplicating every case."""
    path = root / ".benchmark-pseudonym-key"
    if not path.is_file():
        path.write_text(secrets.token_hex(32))
        path.chmod(0o600)
    return path.read_text().strip()


def ingest_items(store: Store, items: list[IngestItem], cohort: str, workers: int) -> IngestSummary:
    options = IngestOptions(workers=workers, cohort=cohort, command=f"benchmark {cohort}")
    return ingest(store, items, options)


@dataclass
class Stopwatch:
    """Wall-clock seconds per named step, reported with the results."""

    started: float = field(default_factory=time.perf_counter)
    steps: dict[str, float] = field(default_factory=dict)
    _last: float = field(default_factory=time.perf_counter)

    def lap(self, name: str) -> None:
        now = time.perf_counter()
        self.steps[name] = round(now - self._last, 1)
        self._last = now

    def report(self) -> dict[str, float]:
        return {**self.steps, "total": round(time.perf_counter() - self.started, 1)}
