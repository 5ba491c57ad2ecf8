"""The ingestion engine: items in, rows and blobs out, in parallel, idempotent and resumable.

The main process hashes each item (its idempotency key) and skips what the store already holds;
worker processes decode, validate, de-identify and write blobs; the main process writes the rows
of each batch in one transaction. A kill at any moment loses at most the uncommitted batch, whose
items are simply done again by the next run.
"""

from __future__ import annotations

import datetime as dt
import importlib
import time
from collections.abc import Callable, Iterable, Iterator
from dataclasses import dataclass, field, replace
from typing import Any

from sqlalchemy import select
from sqlalchemy.orm import Session

from clinic import __version__
from clinic.audit.chain import AuditKey
from clinic.engines.options import Engine, EngineOptions
from clinic.ingest.errors import ReasonCode
from clinic.ingest.prepare import (
    Outcome,
    PrepareContext,
    Prepared,
    Refused,
    content_sha256,
    prepare_item,
)
from clinic.ingest.pseudonym import Pseudonymizer
from clinic.ingest.supervisor import TIMED_OUT, InflightJournal, Supervised, run_supervised
from clinic.ingest.types import IngestItem, ItemKind
from clinic.ingest.writer import BatchResult, add_to_cohort, ingest_audit_event, write_batch
from clinic.store.models import Cohort, IngestRun, QuarantineItem, SourceItem
from clinic.store.store import Store

BATCH_SIZE = 64
# Workers fork from this process, so the readers (scipy, pydicom's decoders, wfdb: seconds to
# import) are imported here once rather than in every worker.
WORKER_PRELOAD = (
    "clinic.ingest.prepare",
    "clinic.ingest.ecg",
    "clinic.ingest.xray",
    "clinic.ingest.dicom_deid",
    "clinic.ingest.dicom_io",
    "clinic.ingest.records",
    "clinic.ingest.reports",
)
BATCH_SECONDS = 1.0

ProgressCallback = Callable[[int, int], None]


@dataclass
class IngestSummary:
    """What one run did. ``as_json`` is the shape scripts rely on."""

    run_id: int
    seen: int = 0
    ingested: int = 0
    already_stored: int = 0
    quarantined: int = 0
    quarantined_by_reason: dict[str, int] = field(default_factory=dict)

    def as_json(self) -> dict[str, int]:
        return {
            "seen": self.seen,
            "ingested": self.ingested,
            "already_stored": self.already_stored,
            "quarantined": self.quarantined,
        }

    def add_quarantined(self, reason: str, count: int = 1) -> None:
        self.quarantined += count
        self.quarantined_by_reason[reason] = self.quarantined_by_reason.get(reason, 0) + count

    def add_batch(self, result: BatchResult) -> None:
        self.ingested += result.ingested
        self.already_stored += result.already_stored
        for reason, count in result.quarantined.items():
            self.add_quarantined(reason, count)


@dataclass(frozen=True)
class IngestOptions:
    workers: int = 1  # decoding processes; 0 decodes in this process (profiling only)
    cohort: str | None = None
    command: str = "ingest"
    sources: tuple[str, ...] = ()
    retry_quarantined: bool = False
    batch_size: int = BATCH_SIZE
    engine: Engine = Engine.LOCAL  # ray: decoding runs as Ray Data tasks (clinic.engines)
    address: str | None = None  # an existing Ray cluster; None starts a private local Ray

    @property
    def engine_options(self) -> EngineOptions:
        return EngineOptions(self.engine, self.address, max(self.workers, 1))


def prepare_context(store: Store) -> PrepareContext:
    settings = store.settings
    return PrepareContext(
        pseudonymizer=Pseudonymizer(settings.pseudonym_key),
        blobs=store.blobs,
        ecg_sampling_rate=settings.ecg_sampling_rate,
        ecg_duration_s=settings.ecg_duration_s,
    )


def ingest(
    store: Store,
    items: Iterable[IngestItem],
    options: IngestOptions = IngestOptions(),
    progress: ProgressCallback | None = None,
) -> IngestSummary:
    """Ingest ``items`` into ``store``; see the module docstring for the guarantees."""
    store.blobs.remove_stale_temporaries()
    run_id, cohort_id = _start_run(store, options)
    summary = IngestSummary(run_id=run_id)
    status = "failed"
    try:
        pending = _triage(store, list(items), summary, cohort_id, options)
        _process(store, pending, summary, run_id, cohort_id, options, progress)
        status = "finished"
    except KeyboardInterrupt:
        status = "interrupted"
        raise
    finally:
        _finish_run(store, run_id, summary, status)
    return summary


def _start_run(store: Store, options: IngestOptions) -> tuple[int, int | None]:
    with store.session() as session, session.begin():
        run = IngestRun(
            command=options.command,
            sources=list(options.sources),
            counts={},
            code_version=__version__,
        )
        session.add(run)
        cohort_id = ensure_cohort(session, options.cohort) if options.cohort else None
        session.flush()
        return run.id, cohort_id


def ensure_cohort(session: Session, name: str) -> int:
    cohort_id = session.scalar(select(Cohort.id).where(Cohort.name == name))
    if cohort_id is None:
        cohort = Cohort(name=name)
        session.add(cohort)
        session.flush()
        return cohort.id
    return cohort_id


def _triage(
    store: Store,
    items: list[IngestItem],
    summary: IngestSummary,
    cohort_id: int | None,
    options: IngestOptions,
) -> list[tuple[IngestItem, str]]:
    """Hash every item; count what is already stored or known bad; return the rest to decode."""
    with store.session() as session:
        stored = set(session.scalars(select(SourceItem.sha256)))
        known_bad = (
            {}
            if options.retry_quarantined
            else dict(session.execute(select(QuarantineItem.sha256, QuarantineItem.reason)).all())
        )
    pending: list[tuple[IngestItem, str]] = []
    already: list[str] = []
    queued: set[str] = set()
    for item in items:
        summary.seen += 1
        sha = content_sha256(item)
        if sha in stored or sha in queued:
            already.append(sha)
        elif sha in known_bad:
            summary.add_quarantined(known_bad[sha])
        else:
            queued.add(sha)
            pending.append((item, sha))
    summary.already_stored += len(already)
    if cohort_id is not None and already:
        _add_stored_to_cohort(store, cohort_id, already)
    return pending


def _add_stored_to_cohort(store: Store, cohort_id: int, hashes: list[str]) -> None:
    with store.session() as session, session.begin():
        for start in range(0, len(hashes), 500):
            chunk = hashes[start : start + 500]
            encounter_ids = session.scalars(
                select(SourceItem.encounter_id).where(SourceItem.sha256.in_(chunk))
            )
            add_to_cohort(session, cohort_id, encounter_ids)


def _process(
    store: Store,
    pending: list[tuple[IngestItem, str]],
    summary: IngestSummary,
    run_id: int,
    cohort_id: int | None,
    options: IngestOptions,
    progress: ProgressCallback | None,
) -> None:
    done = summary.seen - len(pending)
    if progress:
        progress(done, summary.seen)
    batch: list[Outcome] = []
    last_flush = time.monotonic()
    for outcome in _outcomes(store, pending, options):
        batch.append(outcome)
        if len(batch) >= options.batch_size or time.monotonic() - last_flush > BATCH_SECONDS:
            _flush(store, batch, summary, run_id, cohort_id)
            done += len(batch)
            batch, last_flush = [], time.monotonic()
            if progress:
                progress(done, summary.seen)
    _flush(store, batch, summary, run_id, cohort_id)
    if progress:
        progress(summary.seen, summary.seen)


def _flush(
    store: Store, batch: list[Outcome], summary: IngestSummary, run_id: int, cohort_id: int | None
) -> None:
    if not batch:
        return
    prepared = [o for o in batch if isinstance(o, Prepared)]
    refused = [o for o in batch if isinstance(o, Refused)]
    with store.session() as session, session.begin():
        result = write_batch(
            session,
            prepared,
            refused,
            run_id=run_id,
            cohort_id=cohort_id,
            audit_key=AuditKey.from_settings(store.settings),
        )
    summary.add_batch(result)


_WORKER_CONTEXT: PrepareContext | None = None


def _init_worker(context: PrepareContext) -> None:
    global _WORKER_CONTEXT
    _WORKER_CONTEXT = context


def _prepare_in_worker(task: tuple[IngestItem, str]) -> Outcome:
    assert _WORKER_CONTEXT is not None, "worker started without its context"
    return prepare_item(task[0], task[1], _WORKER_CONTEXT)


def _task_key(task: tuple[IngestItem, str]) -> str:
    return task[1]


def _crashed(task: tuple[IngestItem, str], why: str) -> Outcome:
    """The refusal of an item whose decoder took its process down (or hung) twice."""
    item, sha = task
    if why == TIMED_OUT:
        reason = (
            ReasonCode.DICOM_DECODE_TIMEOUT
            if item.kind is ItemKind.XRAY
            else ReasonCode.DECODE_TIMEOUT
        )
        message = f"decoding the {item.kind.value} input did not finish in time, twice"
    else:
        reason = ReasonCode.DECODER_CRASHED
        message = f"the {item.kind.value} decoder crashed its process on this input, twice"
    return Refused(sha, item.kind, item.source, reason.value, message)


def supervised_decoding(
    context: PrepareContext, journal: InflightJournal
) -> Supervised[tuple[IngestItem, str], Outcome]:
    """How an item is decoded under supervision: the same on both engines (a Ray decode task
    supervises its own decoding process, see :mod:`clinic.engines.ray_ingest`)."""
    return Supervised(
        work=_prepare_in_worker,
        key=_task_key,
        crashed=_crashed,
        journal=journal,
        initializer=_init_worker,
        initargs=(context,),
    )


def preload_readers() -> None:
    """Import the readers once in a process that forks decoding workers."""
    for module in WORKER_PRELOAD:
        importlib.import_module(module)


def _outcomes(
    store: Store, pending: list[tuple[IngestItem, str]], options: IngestOptions
) -> Iterator[Outcome]:
    """The decode stage: supervised worker processes here, or Ray Data tasks on a cluster."""
    if options.engine is Engine.RAY:
        from clinic.engines.ray_ingest import ray_outcomes

        yield from ray_outcomes(store, pending, options.engine_options)
        return
    yield from _local_outcomes(store, pending, options.workers)


def _local_outcomes(
    store: Store, pending: list[tuple[IngestItem, str]], workers: int
) -> Iterator[Outcome]:
    """Decode in supervised worker processes (see :mod:`clinic.ingest.supervisor`)."""
    supervised = supervised_decoding(
        replace(prepare_context(store), crash_contained=workers > 0),
        InflightJournal(store.settings.home / "inflight"),
    )
    preload_readers()  # workers fork from this process: import the readers once
    yield from run_supervised(supervised, pending, workers)


def _finish_run(store: Store, run_id: int, summary: IngestSummary, status: str) -> None:
    counts: dict[str, Any] = {**summary.as_json(), "by_reason": summary.quarantined_by_reason}
    with store.session() as session, session.begin():
        run = session.get(IngestRun, run_id)
        assert run is not None
        run.status = status
        run.finished_at = dt.datetime.now(dt.UTC)
        run.counts = counts
        outcome = "success" if status == "finished" else status
        key = AuditKey.from_settings(store.settings)
        ingest_audit_event(session, key, "ingest.run", run_id, outcome, counts)
