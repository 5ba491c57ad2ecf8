"""Main-process side of ingestion: write prepared items in one transaction per batch.

Bulk Core ``insert()`` with lists of rows (the ORM unit of work is ~10x slower for this), with
``ON CONFLICT DO NOTHING`` on the natural keys so that two ingesters racing on the same store
never create duplicates: whoever inserts the ``source_items`` row first owns the item, the other
counts it as already stored. A batch commits whole or not at all, so every item is atomic.
"""

from __future__ import annotations

import datetime as dt
import getpass
from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from typing import Any

from sqlalchemy import Table, bindparam, insert, select
from sqlalchemy.dialects import postgresql, sqlite
from sqlalchemy.orm import Session
from sqlalchemy.sql.dml import Insert

from clinic.audit.chain import AuditKey, append_event
from clinic.ingest.prepare import Prepared, Refused
from clinic.store.models import (
    AuditEvent,
    Base,
    CohortMember,
    Encounter,
    Label,
    Patient,
    QuarantineItem,
    SourceItem,
)


@dataclass(frozen=True)
class BatchResult:
    ingested: int
    already_stored: int
    quarantined: dict[str, int]


def insert_ignoring_conflicts(session: Session, table: Table) -> Insert:
    """``INSERT … ON CONFLICT DO NOTHING`` for the session's dialect."""
    dialect = session.get_bind().dialect.name
    if dialect == "postgresql":
        return postgresql.insert(table).on_conflict_do_nothing()
    if dialect == "sqlite":
        return sqlite.insert(table).on_conflict_do_nothing()
    raise NotImplementedError(f"database dialect {dialect!r} is not supported")


def write_batch(
    session: Session,
    prepared: Sequence[Prepared],
    refused: Sequence[Refused],
    *,
    run_id: int,
    cohort_id: int | None,
    audit_key: AuditKey,
) -> BatchResult:
    """Write one batch; the caller commits. Returns what was new, already there, or refused."""
    encounter_ids = _ensure_encounters(session, prepared)
    owned = _claim_source_items(session, prepared, encounter_ids, run_id)
    new_items = [item for item in prepared if item.item_sha256 in owned]
    _insert_modality_rows(session, new_items, encounter_ids)
    _insert_labels(session, new_items, encounter_ids)
    if cohort_id is not None:
        add_to_cohort(session, cohort_id, {encounter_ids[p.encounter] for p in prepared})
    quarantined = _quarantine(session, refused, run_id)
    _audit_batch(session, audit_key, run_id, len(new_items), quarantined)
    return BatchResult(len(new_items), len(prepared) - len(new_items), quarantined)


def _ensure_encounters(session: Session, prepared: Sequence[Prepared]) -> dict[str, int]:
    """Get-or-create patients and encounters by pseudonym; returns encounter pseudonym → id."""
    if not prepared:
        return {}
    patients = sorted({p.patient for p in prepared})
    session.execute(
        insert_ignoring_conflicts(session, Patient.__table__),  # type: ignore[arg-type]
        [{"pseudonym": pseudonym} for pseudonym in patients],
    )
    patient_ids = dict(
        session.execute(
            select(Patient.pseudonym, Patient.id).where(Patient.pseudonym.in_(patients))
        ).all()
    )
    encounters = {p.encounter: p for p in prepared}
    session.execute(
        insert_ignoring_conflicts(session, Encounter.__table__),  # type: ignore[arg-type]
        [
            {
                "pseudonym": e.encounter,
                "patient_id": patient_ids[e.patient],
                "split": e.split,
                "study_date_shifted": e.study_date_shifted,
            }
            for e in encounters.values()
        ],
    )
    _fill_encounter_details(session, prepared)  # every item: any one may carry the details
    return dict(
        session.execute(
            select(Encounter.pseudonym, Encounter.id).where(
                Encounter.pseudonym.in_(list(encounters))
            )
        ).all()
    )


def _fill_encounter_details(session: Session, prepared: Iterable[Prepared]) -> None:
    """An encounter created by one item may learn its split or study date from a later item.

    One UPDATE per detail, executed for the batch's encounters at once (executemany); only
    columns still empty are filled.
    """
    splits: dict[str, str] = {}
    dates: dict[str, dt.date] = {}
    for item in prepared:
        if item.split is not None:
            splits.setdefault(item.encounter, item.split)
        if item.study_date_shifted is not None:
            dates.setdefault(item.encounter, item.study_date_shifted)
    table = Encounter.__table__
    for column, values in (("split", splits), ("study_date_shifted", dates)):
        if values:
            statement = (
                table.update()  # type: ignore[attr-defined]
                .where(table.c.pseudonym == bindparam("key"), table.c[column].is_(None))
                .values({column: bindparam("value")})
            )
            session.execute(statement, [{"key": k, "value": v} for k, v in values.items()])


def _claim_source_items(
    session: Session, prepared: Sequence[Prepared], encounter_ids: dict[str, int], run_id: int
) -> set[str]:
    """Insert ``source_items`` rows; the hashes actually inserted are the items this batch owns."""
    if not prepared:
        return set()
    statement = insert_ignoring_conflicts(session, SourceItem.__table__).returning(  # type: ignore[arg-type]
        SourceItem.sha256
    )
    rows = [
        {
            "sha256": p.item_sha256,
            "kind": p.kind.value,
            "encounter_id": encounter_ids[p.encounter],
            "ingest_run_id": run_id,
        }
        for p in _unique_by_sha(prepared)
    ]
    return set(session.execute(statement, rows).scalars())


def _unique_by_sha(prepared: Sequence[Prepared]) -> list[Prepared]:
    seen: dict[str, Prepared] = {}
    for item in prepared:
        seen.setdefault(item.item_sha256, item)
    return list(seen.values())


def _insert_modality_rows(
    session: Session, prepared: Sequence[Prepared], encounter_ids: dict[str, int]
) -> None:
    by_table: dict[str, list[dict[str, Any]]] = {}
    for item in _unique_by_sha(prepared):
        if item.table is not None:
            row = {**item.row, "encounter_id": encounter_ids[item.encounter]}
            by_table.setdefault(item.table, []).append(row)
    for table_name, rows in by_table.items():
        session.execute(Base.metadata.tables[table_name].insert(), rows)


def _insert_labels(
    session: Session, prepared: Sequence[Prepared], encounter_ids: dict[str, int]
) -> None:
    rows = [
        {**label, "encounter_id": encounter_ids[item.encounter]}
        for item in _unique_by_sha(prepared)
        for label in item.labels
    ]
    if rows:
        session.execute(insert(Label), rows)


def add_to_cohort(session: Session, cohort_id: int, encounter_ids: Iterable[int]) -> None:
    rows = [{"cohort_id": cohort_id, "encounter_id": e} for e in sorted(set(encounter_ids))]
    if rows:
        session.execute(
            insert_ignoring_conflicts(session, CohortMember.__table__),  # type: ignore[arg-type]
            rows,
        )


def _quarantine(session: Session, refused: Sequence[Refused], run_id: int) -> dict[str, int]:
    counts: dict[str, int] = {}
    for item in refused:
        counts[item.reason] = counts.get(item.reason, 0) + 1
    if refused:
        session.execute(
            insert_ignoring_conflicts(session, QuarantineItem.__table__),  # type: ignore[arg-type]
            [
                {
                    "ingest_run_id": run_id,
                    "path": item.source,
                    "sha256": item.item_sha256,
                    "kind": item.kind.value,
                    "reason": item.reason,
                    "message": item.message,
                }
                for item in refused
            ],
        )
    return counts


def _audit_batch(
    session: Session, key: AuditKey, run_id: int, ingested: int, quarantined: dict[str, int]
) -> None:
    """One audit event per committed batch, in the same transaction as the rows it describes."""
    if not ingested and not quarantined:
        return
    details = {"ingested": ingested, "quarantined": quarantined}
    ingest_audit_event(session, key, "ingest.batch", run_id, "success", details)


def ingest_audit_event(
    session: Session,
    key: AuditKey,
    action: str,
    run_id: int,
    outcome: str,
    details: dict[str, Any],
) -> AuditEvent:
    """Chain an audit event of the ingestion system about one run into the caller's transaction.

    Appended last in the batch's transaction, so the chain's lock is held only until the commit.
    """
    return append_event(
        session,
        key,
        actor=current_actor(),
        role="system",
        action=action,
        resource_type="ingest_run",
        resource_id=str(run_id),
        outcome=outcome,
        details=details,
    )


def current_actor() -> str:
    try:
        return getpass.getuser()
    except (KeyError, OSError):
        return "unknown"
