"""Appending to the audit chain, on SQLite and on PostgreSQL."""

from __future__ import annotations

import datetime as dt
import threading
from pathlib import Path
from typing import Any

import pytest
from sqlalchemy import delete, func, select, text, update
from sqlalchemy.exc import DBAPIError
from sqlalchemy.sql import Executable

from clinic.audit.chain import (
    GENESIS_HASH,
    AuditKey,
    append_event,
    authorize,
    canonical_time,
    payload_of,
    record,
)
from clinic.audit.verify import verify_chain
from clinic.auth.roles import AccessDenied, Permission, Principal, Role
from clinic.ingest.writer import ingest_audit_event
from clinic.store.models import AuditEvent
from clinic.store.store import Store
from tests.audit.helpers import append_events, head

KEY = AuditKey(b"test-audit-key-0123456789")


def events(store: Store) -> list[AuditEvent]:
    with store.session() as session:
        return list(session.scalars(select(AuditEvent).order_by(AuditEvent.id)))


def test_events_appended_across_transactions_form_one_verified_chain(store: Store) -> None:
    ids = append_events(store, KEY, 12, per_transaction=4)
    stored = events(store)
    assert [e.id for e in stored] == ids
    assert [e.sequence for e in stored] == list(range(1, 13))
    assert [e.prev_hash for e in stored] == [GENESIS_HASH] + [e.chain_hash for e in stored[:-1]]
    assert head(store) == (12, stored[-1].chain_hash)
    with store.session() as session:
        result = verify_chain(session, KEY)
    assert result.ok and result.events == 12 and result.first_bad is None, result


def test_a_rolled_back_transaction_leaves_no_event_and_no_head_change(store: Store) -> None:
    append_events(store, KEY, 2)
    before = head(store)
    with store.session() as session:
        event = append_event(session, KEY, actor="a", role="admin", action="x", resource_type="y")
        assert event.id is not None and event.sequence == 3  # flushed, visible in the transaction
        session.rollback()
    assert head(store) == before
    assert len(events(store)) == 2
    append_events(store, KEY, 1)  # the chain continues where the committed head was
    with store.session() as session:
        assert verify_chain(session, KEY).ok


def test_the_hash_survives_a_round_trip_through_the_database(store: Store, tmp_path: Path) -> None:
    details: dict[Any, Any] = {
        "score": 0.1 + 0.2,
        "name": "Zoë ✓",
        7: [1, 2.5, None, True],
        "nested": {"b": 1, "a": [{"x": -0.0}]},
        "path": tmp_path,
        "big": 2**62,
    }
    with store.session() as session, session.begin():
        written = append_event(
            session,
            KEY,
            actor="ann",
            role="clinician",
            action="case.view",
            resource_type="case",
            resource_id="c1",
            details=details,
        )
        hash_written = written.chain_hash
    store.engine.dispose()  # a fresh connection: nothing cached
    with store.session() as session:
        read = session.get(AuditEvent, written.id)
        assert read is not None
        assert read.details["7"] == [1, 2.5, None, True] and read.details["path"] == str(tmp_path)
        assert read.details["score"] == 0.1 + 0.2 and read.details["name"] == "Zoë ✓"
        assert canonical_time(read.occurred_at) == canonical_time(written.occurred_at)
        assert KEY.mac(payload_of(read)) == hash_written == read.chain_hash


def test_timestamps_are_canonical_utc_with_microseconds() -> None:
    aware = dt.datetime(2026, 1, 2, 3, 4, 5, 60, tzinfo=dt.timezone(dt.timedelta(hours=2)))
    naive_utc = dt.datetime(2026, 1, 2, 1, 4, 5, 60)
    assert canonical_time(aware) == canonical_time(naive_utc) == "2026-01-02T01:04:05.000060+00:00"


def test_concurrent_appenders_produce_one_linear_chain(store: Store) -> None:
    """Two writers race on every append; the head lock makes them queue instead of forking."""
    start = threading.Barrier(2)
    errors: list[BaseException] = []

    def writer() -> None:
        try:
            start.wait()
            append_events(store, KEY, 15)
        except BaseException as error:  # surfaced by the assertion below
            errors.append(error)

    threads = [threading.Thread(target=writer) for _ in range(2)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(timeout=60)
    assert errors == []
    stored = events(store)
    assert sorted(e.sequence or 0 for e in stored) == list(range(1, 31))
    assert len({e.prev_hash for e in stored}) == 30  # no two events share a predecessor
    with store.session() as session:
        result = verify_chain(session, KEY)
    assert result.ok and result.events == 30, result


def test_audit_rows_are_append_only(store: Store) -> None:
    (event_id,) = append_events(store, KEY, 1)
    statements: list[Executable] = [
        update(AuditEvent).where(AuditEvent.id == event_id).values(outcome="failure"),
        delete(AuditEvent),
    ]
    if store.engine.dialect.name == "postgresql":
        statements.append(text("TRUNCATE audit_events"))
    for statement in statements:
        with pytest.raises(DBAPIError, match="append-only"), store.engine.begin() as connection:
            connection.execute(statement)
    assert len(events(store)) == 1


def test_record_acts_for_the_principal(store: Store) -> None:
    with store.session() as session, session.begin():
        event = record(
            session,
            KEY,
            Principal("ann", Role.CLINICIAN, 3),
            "case.view",
            "case",
            "c1",
            details={"fields": ["age"]},
        )
    assert (event.actor, event.role, event.outcome) == ("ann", "clinician", "success")
    assert event.key_id == KEY.key_id


def test_authorize_records_a_denial_and_raises(store: Store) -> None:
    researcher = Principal("rita", Role.RESEARCHER)
    with store.session() as session:
        with pytest.raises(AccessDenied, match=r"rita.*researcher.*case\.view"):
            authorize(session, KEY, researcher, Permission.CASE_VIEW, "case.view", "case", "c9")
        authorize(
            session,
            KEY,
            Principal("ann", Role.CLINICIAN),
            Permission.CASE_VIEW,
            "case.view",
            "case",
            "c9",
        )
        session.commit()
    (denied,) = events(store)
    assert (denied.actor, denied.outcome, denied.resource_id) == ("rita", "denied", "c9")
    assert denied.details == {"permission": "case.view"}


def test_ingest_events_are_chained(store: Store) -> None:
    with store.session() as session, session.begin():
        ingest_audit_event(session, KEY, "ingest.run", 7, "success", {"seen": 3})
    (event,) = events(store)
    assert (event.role, event.resource_id, event.sequence) == ("system", "7", 1)
    with store.session() as session:
        assert verify_chain(session, KEY).ok


def test_overlong_fields_are_refused_before_anything_is_written(store: Store) -> None:
    with store.session() as session, pytest.raises(ValueError, match="resource_id"):
        append_event(
            session,
            KEY,
            actor="a",
            role="admin",
            action="x",
            resource_type="y",
            resource_id="r" * 129,
        )
    with store.session() as session:
        assert session.scalar(select(func.count()).select_from(AuditEvent)) == 0


def test_the_key_id_names_the_key_without_revealing_it() -> None:
    other = AuditKey(b"another-key-0123456789")
    assert len(KEY.key_id) == 16 and int(KEY.key_id, 16) >= 0
    assert KEY.key_id != other.key_id
    assert KEY.key_id == AuditKey(b"test-audit-key-0123456789").key_id
    assert "test-audit-key" not in repr(KEY)
    with pytest.raises(ValueError, match="empty"):
        AuditKey(b"")
