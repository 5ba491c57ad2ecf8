"""What an attacker with write access to the database (but not the audit key) can do, and helpers.

The triggers that make ``audit_events`` append-only are removed the way such an attacker would:
``DROP TRIGGER`` on SQLite, ``ALTER TABLE … DISABLE TRIGGER USER`` as the owner on PostgreSQL.
"""

from __future__ import annotations

import datetime as dt
from typing import Any

from argon2 import PasswordHasher
from sqlalchemy import delete, insert, select, text, update

from clinic.audit.chain import AuditKey, append_event, event_payload
from clinic.store.models import AuditChainHead, AuditEvent
from clinic.store.store import Store

CONTENT = (
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


def cheap_hasher() -> PasswordHasher:
    """argon2id with tiny costs: the same code paths, milliseconds instead of half a second."""
    return PasswordHasher(time_cost=1, memory_cost=1024, parallelism=1)


def append_events(
    store: Store, key: AuditKey, count: int, *, per_transaction: int = 1
) -> list[int]:
    """Append ``count`` events, ``per_transaction`` per commit; returns their ids in order."""
    ids: list[int] = []
    while len(ids) < count:
        with store.session() as session, session.begin():
            for _ in range(min(per_transaction, count - len(ids))):
                n = len(ids)
                event = append_event(
                    session,
                    key,
                    actor=f"user{n % 3}",
                    role="clinician",
                    action="case.view",
                    resource_type="case",
                    resource_id=f"case-{n}",
                    details={"n": n, "score": n / 7},
                )
                ids.append(event.id)
    return ids


def disable_append_only(store: Store) -> None:
    with store.engine.begin() as connection:
        if store.engine.dialect.name == "sqlite":
            connection.execute(text("DROP TRIGGER audit_events_no_update"))
            connection.execute(text("DROP TRIGGER audit_events_no_delete"))
        else:
            connection.execute(text("ALTER TABLE audit_events DISABLE TRIGGER USER"))


def edit(store: Store, event_id: int, **values: Any) -> None:
    disable_append_only(store)
    with store.engine.begin() as connection:
        connection.execute(update(AuditEvent).where(AuditEvent.id == event_id).values(**values))


def delete_events(store: Store, *event_ids: int) -> None:
    disable_append_only(store)
    with store.engine.begin() as connection:
        connection.execute(delete(AuditEvent).where(AuditEvent.id.in_(event_ids)))


def content(store: Store, event_id: int) -> dict[str, Any]:
    with store.engine.connect() as connection:
        row = connection.execute(
            select(*(getattr(AuditEvent, name) for name in CONTENT)).where(
                AuditEvent.id == event_id
            )
        ).one()
    return dict(row._mapping)


def swap(store: Store, first: int, second: int) -> None:
    """Swap two rows' content (all but the id): the events change places in id order."""
    a, b = content(store, first), content(store, second)
    disable_append_only(store)
    with store.engine.begin() as connection:
        by_id = AuditEvent.id
        connection.execute(update(AuditEvent).where(by_id == first).values(sequence=None))
        connection.execute(update(AuditEvent).where(by_id == second).values(**a))
        connection.execute(update(AuditEvent).where(by_id == first).values(**b))


def head(store: Store) -> tuple[int, str]:
    with store.engine.connect() as connection:
        row = connection.execute(select(AuditChainHead.sequence, AuditChainHead.chain_hash)).one()
    return int(row.sequence), str(row.chain_hash)


def set_head(store: Store, sequence: int, chain_hash: str) -> None:
    """The attacker's fix-up of the head row after cutting off the tail."""
    with store.engine.begin() as connection:
        connection.execute(update(AuditChainHead).values(sequence=sequence, chain_hash=chain_hash))


def insert_forged(store: Store, key: AuditKey, **overrides: Any) -> int:
    """Insert an event after the last one, linked correctly but signed with the attacker's key."""
    sequence, prev_hash = head(store)
    values: dict[str, Any] = {
        "sequence": sequence + 1,
        "occurred_at": dt.datetime.now(dt.UTC),
        "actor": "mallory",
        "role": "admin",
        "action": "case.view",
        "resource_type": "case",
        "resource_id": "case-x",
        "outcome": "success",
        "details": {},
        "prev_hash": prev_hash,
        "key_id": key.key_id,
    }
    values.update(overrides)
    values["chain_hash"] = AuditKey(b"attacker's own key").mac(event_payload(**values))
    with store.engine.begin() as connection:
        result = connection.execute(insert(AuditEvent).values(**values).returning(AuditEvent.id))
        return int(result.scalar_one())


def insert_unsigned(store: Store) -> int:
    """Insert an event without chain fields, the way code unaware of the chain would."""
    values = {
        "occurred_at": dt.datetime.now(dt.UTC),
        "actor": "mallory",
        "role": "admin",
        "action": "case.view",
        "resource_type": "case",
        "outcome": "success",
        "details": {},
    }
    with store.engine.begin() as connection:
        result = connection.execute(insert(AuditEvent).values(**values).returning(AuditEvent.id))
        return int(result.scalar_one())
