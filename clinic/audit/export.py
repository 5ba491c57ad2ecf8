"""Export audit events as CSV, JSON or FHIR R4 AuditEvent resources, streamed in id order.

Rows are written as they are read (chunks of :data:`CHUNK`), so exporting years of events needs
no more memory than one chunk. Every format carries the chain fields, so an export can be checked
against the database or a checkpoint later.
"""

from __future__ import annotations

import csv
import datetime as dt
import json
from collections.abc import Callable, Iterator
from typing import Any, Literal, TextIO

from sqlalchemy import Select, select
from sqlalchemy.orm import Session

from clinic.audit.chain import canonical_time
from clinic.reports.fhir import audit_event_resource
from clinic.store.models import AuditEvent

CHUNK = 5000
FIELDS = (
    "id",
    "sequence",
    "occurred_at",
    "actor",
    "role",
    "action",
    "resource_type",
    "resource_id",
    "outcome",
    "details",
    "prev_hash",
    "chain_hash",
    "key_id",
)
ExportFormat = Literal["csv", "json", "fhir"]


def export_events(
    session: Session,
    out: TextIO,
    fmt: ExportFormat,
    *,
    since: dt.datetime | None = None,
    until: dt.datetime | None = None,
    action: str | None = None,
) -> int:
    """Write the events in ``[since, until)`` (optionally one action) to ``out``; return the count.

    Naive ``since``/``until`` are taken as UTC, like the stored timestamps.
    """
    events = _events(session, since, until, action)
    if fmt == "csv":
        return _write_csv(out, events)
    if fmt == "json":
        return _write_json_array(out, events, lambda event: event)
    if fmt == "fhir":
        return _write_fhir_bundle(out, events)
    raise ValueError(f"unknown export format {fmt!r}: csv, json or fhir")


def event_mapping(row: Any) -> dict[str, Any]:
    """One event as plain JSON values (UTC ISO-8601 time), the shape every format starts from."""
    event = {name: getattr(row, name) for name in FIELDS}
    event["occurred_at"] = canonical_time(row.occurred_at)
    return event


def _as_utc(value: dt.datetime) -> dt.datetime:
    return value.replace(tzinfo=dt.UTC) if value.tzinfo is None else value.astimezone(dt.UTC)


def _filtered(
    since: dt.datetime | None, until: dt.datetime | None, action: str | None
) -> Select[Any]:
    statement = select(*(getattr(AuditEvent, name) for name in FIELDS))
    if since is not None:
        statement = statement.where(AuditEvent.occurred_at >= _as_utc(since))
    if until is not None:
        statement = statement.where(AuditEvent.occurred_at < _as_utc(until))
    if action is not None:
        statement = statement.where(AuditEvent.action == action)
    return statement


def _events(
    session: Session, since: dt.datetime | None, until: dt.datetime | None, action: str | None
) -> Iterator[dict[str, Any]]:
    """Matching events in id order, read CHUNK at a time (keyset pagination)."""
    statement = _filtered(since, until, action)
    last_id = 0
    while True:
        chunk = session.execute(
            statement.where(AuditEvent.id > last_id).order_by(AuditEvent.id).limit(CHUNK)
        ).all()
        yield from (event_mapping(row) for row in chunk)
        if len(chunk) < CHUNK:
            return
        last_id = chunk[-1].id
        del chunk  # not held while the next chunk is read: one chunk in memory at a time


def _write_csv(out: TextIO, events: Iterator[dict[str, Any]]) -> int:
    writer = csv.DictWriter(out, fieldnames=FIELDS, lineterminator="\n")
    writer.writeheader()
    count = 0
    for event in events:
        details = json.dumps(event["details"], sort_keys=True, ensure_ascii=False)
        writer.writerow({**event, "details": details})
        count += 1
    return count


def _write_json_array(
    out: TextIO,
    items: Iterator[dict[str, Any]],
    convert: Callable[[dict[str, Any]], dict[str, Any]],
    *,
    opening: str = "[",
    closing: str = "]",
) -> int:
    """A JSON array written item by item (valid JSON, never held in memory whole)."""
    out.write(opening)
    count = 0
    for item in items:
        out.write(("," if count else "") + "\n  " + json.dumps(convert(item), ensure_ascii=False))
        count += 1
    out.write(("\n" if count else "") + closing + "\n")
    return count


def _fhir_entry(event: dict[str, Any]) -> dict[str, Any]:
    """A Bundle entry; the chain hash rides along so the FHIR copy can be checked later."""
    return {"resource": audit_event_resource({**event, "hash": event["chain_hash"]})}


def _write_fhir_bundle(out: TextIO, events: Iterator[dict[str, Any]]) -> int:
    """A FHIR R4 ``Bundle`` (type collection) of AuditEvent resources."""
    header = json.dumps({"resourceType": "Bundle", "type": "collection"})[:-1]
    return _write_json_array(
        out,
        events,
        _fhir_entry,
        opening=header + ', "entry": [',
        closing="]}",
    )
