"""Exporting audit events: CSV, JSON and FHIR, filtered, streamed."""

from __future__ import annotations

import csv
import datetime as dt
import io
import json
from typing import Any

import pytest

from clinic.audit import export
from clinic.audit.chain import AuditKey, record
from clinic.audit.export import export_events
from clinic.auth.roles import Principal, Role
from clinic.store.store import Store
from tests.audit.helpers import append_events

KEY = AuditKey(b"test-audit-key-0123456789")


@pytest.fixture
def filled(store: Store) -> Store:
    """Five case views and one export, the export with details worth checking."""
    append_events(store, KEY, 5)
    with store.session() as session, session.begin():
        record(
            session,
            KEY,
            Principal("ann", Role.ADMIN),
            "audit.export",
            "audit_chain",
            details={"format": "csv", "note": 'quote " and, comma'},
        )
    return store


def run(store: Store, fmt: Any, **filters: Any) -> tuple[int, str]:
    out = io.StringIO()
    with store.session() as session:
        count = export_events(session, out, fmt, **filters)
    return count, out.getvalue()


def test_csv_has_a_header_and_one_row_per_event(filled: Store) -> None:
    count, text = run(filled, "csv")
    rows = list(csv.DictReader(io.StringIO(text)))
    assert count == len(rows) == 6
    assert list(rows[0]) == list(export.FIELDS)
    assert [int(r["sequence"]) for r in rows] == list(range(1, 7))
    assert json.loads(rows[-1]["details"]) == {"format": "csv", "note": 'quote " and, comma'}
    assert rows[0]["occurred_at"].endswith("+00:00") and len(rows[0]["chain_hash"]) == 64


def test_json_is_one_array_of_events(filled: Store) -> None:
    count, text = run(filled, "json", action="audit.export")
    events = json.loads(text)
    assert count == len(events) == 1
    assert events[0]["actor"] == "ann" and events[0]["details"]["format"] == "csv"
    assert set(events[0]) == set(export.FIELDS)


def test_an_empty_selection_is_still_valid_json(filled: Store) -> None:
    count, text = run(filled, "json", action="nothing.like.this")
    assert (count, json.loads(text)) == (0, [])


def test_time_filters_accept_naive_utc_and_other_offsets(filled: Store) -> None:
    now = dt.datetime.now(dt.UTC)
    assert run(filled, "json", since=now + dt.timedelta(minutes=5))[0] == 0
    assert run(filled, "json", until=now - dt.timedelta(minutes=5))[0] == 0
    naive_before = (now - dt.timedelta(minutes=5)).replace(tzinfo=None)
    assert run(filled, "json", since=naive_before)[0] == 6
    plus_two = dt.timezone(dt.timedelta(hours=2))
    assert run(filled, "json", until=(now + dt.timedelta(minutes=5)).astimezone(plus_two))[0] == 6
    # one hour ahead written with a +02:00 offset is still in the future
    assert run(filled, "json", since=(now + dt.timedelta(hours=1)).astimezone(plus_two))[0] == 0


def test_fhir_is_a_bundle_of_audit_events_carrying_the_chain_hash(filled: Store) -> None:
    count, text = run(filled, "fhir")
    bundle = json.loads(text)
    assert bundle["resourceType"] == "Bundle" and count == len(bundle["entry"]) == 6
    resource = bundle["entry"][-1]["resource"]
    assert resource["resourceType"] == "AuditEvent"
    assert resource["agent"][0]["who"]["identifier"]["value"] == "ann"
    _, plain = run(filled, "json")
    assert resource["extension"][0]["valueString"] == json.loads(plain)[-1]["chain_hash"]


def test_the_export_is_read_in_chunks(filled: Store, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(export, "CHUNK", 3)
    count, text = run(filled, "json")
    assert count == 6 and [e["sequence"] for e in json.loads(text)] == list(range(1, 7))


def test_an_unknown_format_is_refused(filled: Store) -> None:
    with pytest.raises(ValueError, match="unknown export format"):
        run(filled, "xml")
