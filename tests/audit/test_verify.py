"""Verification catches every kind of tampering by someone who can write to the database."""

from __future__ import annotations

import datetime as dt
import json
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from sqlalchemy import event as sa_event
from sqlalchemy import insert, select, text

from clinic.audit import verify
from clinic.audit.chain import AuditKey
from clinic.audit.verify import (
    Checkpoint,
    VerifyResult,
    load_checkpoints,
    make_checkpoint,
    save_checkpoint,
    verify_chain,
)
from clinic.settings import Settings
from clinic.store.db import upgrade_schema
from clinic.store.models import AuditChainHead, AuditEvent
from clinic.store.store import Store
from tests.audit.helpers import (
    append_events,
    content,
    delete_events,
    disable_append_only,
    edit,
    head,
    insert_forged,
    insert_unsigned,
    set_head,
    swap,
)

KEY = AuditKey(b"test-audit-key-0123456789")


@pytest.fixture
def ids(store: Store) -> list[int]:
    """Six chained events, three per transaction."""
    return append_events(store, KEY, 6, per_transaction=3)


def check(
    store: Store, checkpoints: list[Checkpoint] | None = None, key: AuditKey = KEY
) -> VerifyResult:
    with store.session() as session:
        return verify_chain(session, key, checkpoints or [])


def checkpoint(store: Store) -> Checkpoint:
    with store.session() as session:
        return make_checkpoint(session, KEY)


def test_an_intact_chain_verifies(store: Store, ids: list[int]) -> None:
    made = checkpoint(store)
    result = check(store, [made])
    assert result.to_json() == {
        "ok": True,
        "events": 6,
        "first_bad": None,
        "problem": None,
        "legacy": 0,
        "checkpoints": 1,
    }


EDITS: dict[str, Any] = {
    "details": {"n": 2, "score": 1.0},
    "occurred_at": dt.datetime(2020, 1, 1, tzinfo=dt.UTC),
    "outcome": "failure",
    "actor": "someone-else",
    "resource_id": None,
}


@pytest.mark.parametrize("field", sorted(EDITS))
def test_an_edited_event_is_named(store: Store, ids: list[int], field: str) -> None:
    edit(store, ids[2], **{field: EDITS[field]})
    result = check(store)
    assert not result.ok and result.first_bad == ids[2], result
    assert "edited" in (result.problem or "") and result.events == 2


@pytest.mark.parametrize(
    ("column", "value"),
    [
        ("occurred_at", "not a time"),
        ("details", "{not json"),
        ("details", '{"n": NaN}'),
        ("sequence", "three"),
    ],
)
def test_values_a_column_cannot_hold_are_reported_not_crashed_on(
    store: Store, ids: list[int], column: str, value: str
) -> None:
    if store.engine.dialect.name != "sqlite":
        pytest.skip("PostgreSQL's column types refuse such values on write")
    disable_append_only(store)
    with store.engine.begin() as connection:
        connection.execute(
            text(f"UPDATE audit_events SET {column} = :value WHERE id = :id"),
            {"value": value, "id": ids[3]},
        )
    result = check(store)
    assert (result.ok, result.first_bad, result.events) == (False, ids[3], 3), result
    assert "edited" in (result.problem or "")


def test_a_deleted_event_leaves_a_gap(store: Store, ids: list[int]) -> None:
    delete_events(store, ids[3])
    result = check(store)
    assert (result.ok, result.first_bad) == (False, ids[4]), result
    assert "gap" in (result.problem or "") and "deleted" in (result.problem or "")


def test_a_forged_event_is_named(store: Store, ids: list[int]) -> None:
    forged = insert_forged(store, KEY)
    result = check(store)
    assert (result.ok, result.first_bad) == (False, forged), result
    assert "forged" in (result.problem or "")


def test_an_event_repeating_a_sequence_is_named(store: Store, ids: list[int]) -> None:
    forged = insert_forged(store, KEY, sequence=None)  # no unique clash; then give it a sequence
    edit(store, forged, sequence=-1)
    result = check(store)
    assert (result.ok, result.first_bad) == (False, forged), result
    assert "inserted or reordered" in (result.problem or "")


def test_an_unsigned_event_after_the_chain_began_is_named(store: Store, ids: list[int]) -> None:
    unsigned = insert_unsigned(store)
    result = check(store)
    assert (result.ok, result.first_bad) == (False, unsigned), result
    assert "not signed" in (result.problem or "")


def test_reordered_events_are_named(store: Store, ids: list[int]) -> None:
    swap(store, ids[1], ids[3])
    result = check(store)
    assert (result.ok, result.first_bad) == (False, ids[1]), result
    assert "reordered" in (result.problem or "")


def test_a_truncated_tail_is_caught_by_the_head(store: Store, ids: list[int]) -> None:
    delete_events(store, ids[4], ids[5])
    result = check(store)
    assert not result.ok and result.first_bad is None and result.events == 4, result
    assert "tail" in (result.problem or "")


def test_a_truncated_tail_with_a_fixed_head_is_caught_by_a_checkpoint(
    store: Store, ids: list[int]
) -> None:
    made = checkpoint(store)
    delete_events(store, ids[4], ids[5])
    set_head(store, 4, content(store, ids[3])["chain_hash"])
    assert check(store).ok  # without the checkpoint the cut cannot be seen
    result = check(store, [made])
    assert not result.ok and "checkpoint" in (result.problem or ""), result
    assert "tail" in (result.problem or "")


def test_a_tail_cut_then_written_again_differs_from_the_checkpoint(
    store: Store, ids: list[int]
) -> None:
    """The attacker cut two events and let the application append two new ones in their place."""
    made = checkpoint(store)
    delete_events(store, ids[4], ids[5])
    set_head(store, 4, content(store, ids[3])["chain_hash"])
    new = append_events(store, KEY, 2)
    assert check(store).ok
    result = check(store, [made])
    assert (result.ok, result.first_bad) == (False, new[1]), result
    assert "rewritten" in (result.problem or "")


def test_a_head_row_that_disagrees_with_the_chain_is_reported(store: Store, ids: list[int]) -> None:
    set_head(store, 6, "f" * 64)
    result = check(store)
    assert not result.ok and "head" in (result.problem or ""), result


def test_a_forged_checkpoint_is_reported(store: Store, ids: list[int]) -> None:
    made = checkpoint(store)
    forged = Checkpoint(made.sequence + 10, made.chain_hash, made.made_at, made.mac)
    result = check(store, [made, forged])
    assert not result.ok and "bad MAC" in (result.problem or ""), result


def test_a_wrong_key_is_reported_as_such(store: Store, ids: list[int]) -> None:
    result = check(store, key=AuditKey(b"not-the-right-key-012345"))
    assert (result.ok, result.first_bad) == (False, ids[0]), result
    assert "wrong CLINIC_AUDIT_KEY" in (result.problem or "")


@pytest.fixture
def small_chunks(monkeypatch: pytest.MonkeyPatch) -> Iterator[None]:
    monkeypatch.setattr(verify, "CHUNK", 2)
    yield


def test_events_are_streamed_in_chunks(store: Store, ids: list[int], small_chunks: None) -> None:
    queries: list[str] = []

    def count(*args: Any) -> None:
        if "FROM audit_events" in str(args[2]) and "LIMIT" in str(args[2]).upper():
            queries.append(args[2])

    sa_event.listen(store.engine, "before_cursor_execute", count)
    assert check(store).ok
    sa_event.remove(store.engine, "before_cursor_execute", count)
    assert len(queries) == 4  # 6 events, 2 per chunk, and the empty read that ends the walk
    edit(store, ids[5], outcome="failure")
    assert check(store).first_bad == ids[5]


def test_checkpoints_are_saved_and_loaded(tmp_path: Path, store: Store, ids: list[int]) -> None:
    first = checkpoint(store)
    append_events(store, KEY, 1)
    second = checkpoint(store)
    path = save_checkpoint(tmp_path / "audit", first)
    assert save_checkpoint(tmp_path / "audit", second) == path
    assert load_checkpoints(tmp_path / "audit") == load_checkpoints(path) == [first, second]
    assert load_checkpoints(tmp_path) == []
    assert [c.sequence for c in (first, second)] == [6, 7]
    assert check(store, [first, second]).checkpoints == 2


def test_a_damaged_checkpoint_file_names_the_line(tmp_path: Path) -> None:
    good = {"sequence": 1, "chain_hash": "a" * 64, "made_at": "2026-01-01T00:00:00", "mac": "b"}
    path = tmp_path / "checkpoints.jsonl"
    path.write_text(json.dumps(good) + "\n" + json.dumps({**good, "sequence": "1"}) + "\n")
    with pytest.raises(ValueError, match=r"checkpoints.jsonl:2"):
        load_checkpoints(path)
    assert Checkpoint.from_json(good).to_json() == good


def test_events_from_before_the_chain_are_counted_as_legacy(settings: Settings) -> None:
    upgrade_schema(settings.database_url, "0001")
    store = Store.open(settings, migrate=False)
    legacy = {
        "occurred_at": dt.datetime.now(dt.UTC),
        "actor": "old",
        "role": "system",
        "action": "ingest.batch",
        "resource_type": "ingest_run",
        "outcome": "success",
        "details": {},
    }
    with store.engine.begin() as connection:
        connection.execute(insert(AuditEvent), [legacy, legacy, legacy])
    store.close()
    store = Store.open(settings)
    try:
        with store.session() as session:
            assert session.scalar(select(AuditChainHead.legacy_max_id)) == 3
        append_events(store, KEY, 2)
        result = check(store)
        assert (result.ok, result.legacy, result.events) == (True, 3, 2), result
        assert head(store)[0] == 2
        unsigned = insert_unsigned(store)
        assert check(store).first_bad == unsigned
    finally:
        store.close()
