"""Append audit events to a keyed hash chain, in the caller's transaction.

Each event's ``chain_hash`` is an HMAC-SHA256, under a key kept outside the database, of the
event's canonical encoding, which includes its ``sequence`` and the previous event's hash
(``prev_hash``). Someone who can write to the database but does not hold the key can therefore
neither edit, delete, insert nor reorder events without :func:`clinic.audit.verify.verify_chain`
noticing. The single ``audit_chain_head`` row is UPDATEd first by every appender: that takes a row
lock on PostgreSQL and the write lock on SQLite, so concurrent appenders queue and the chain never
forks. The event is only flushed, so a prediction and its audit event commit together or not at
all.
"""

from __future__ import annotations

import datetime as dt
import hashlib
import hmac
import json
from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any

from sqlalchemy import select, update
from sqlalchemy.orm import Session

from clinic.auth.roles import AccessDenied, Permission, Principal
from clinic.settings import Settings
from clinic.store.models import AuditChainHead, AuditEvent

HEAD_ID = 1
GENESIS_HASH = "0" * 64
EVENT_TYPE = "clinic.audit.event/1"
KEY_ID_TAG = b"clinic.audit.key-id/1\x00"
# Column widths of ``audit_events``: PostgreSQL refuses longer values, SQLite would keep them.
FIELD_LIMITS = {
    "actor": 128,
    "role": 32,
    "action": 64,
    "resource_type": 64,
    "resource_id": 128,
    "outcome": 16,
}


class ChainHeadMissingError(RuntimeError):
    """The store has no ``audit_chain_head`` row: its schema predates the audit chain."""


@dataclass(frozen=True)
class AuditKey:
    """The secret of the chain's HMAC (never stored in the database, never printed)."""

    secret: bytes = field(repr=False)

    def __post_init__(self) -> None:
        if not self.secret:
            raise ValueError("the audit key is empty")

    @property
    def key_id(self) -> str:
        """Names the key in each event so a wrong key is reported as such, not as tampering."""
        return hashlib.sha256(KEY_ID_TAG + self.secret).hexdigest()[:16]

    @classmethod
    def from_settings(cls, settings: Settings) -> AuditKey:
        return cls(settings.audit_key)

    def mac(self, payload: Mapping[str, Any]) -> str:
        """HMAC-SHA256 (hex) of the canonical encoding of ``payload``."""
        return hmac.new(self.secret, canonical_bytes(payload), hashlib.sha256).hexdigest()


def canonical_bytes(payload: Mapping[str, Any]) -> bytes:
    """Deterministic encoding: sorted keys, no whitespace, UTF-8, no NaN."""
    text = json.dumps(
        payload, sort_keys=True, separators=(",", ":"), ensure_ascii=False, allow_nan=False
    )
    return text.encode("utf-8")


def canonical_time(value: dt.datetime) -> str:
    """UTC ISO-8601 with microseconds; naive values (SQLite returns those) are taken as UTC."""
    aware = value.replace(tzinfo=dt.UTC) if value.tzinfo is None else value.astimezone(dt.UTC)
    return aware.isoformat(timespec="microseconds")


def normalise_details(details: Mapping[str, Any] | None) -> dict[str, Any]:
    """Details as they will read back from either database (JSON round trip, string keys).

    Hashing the round-tripped value is what lets an event verify after PostgreSQL or SQLite
    returned it. Values JSON cannot hold (paths, dates) are stored as their text.
    """
    if details is None:
        return {}
    encoded = json.dumps(dict(details), allow_nan=False, default=str)
    normalised: dict[str, Any] = json.loads(encoded)
    return normalised


def event_payload(
    *,
    sequence: int | None,
    occurred_at: dt.datetime,
    actor: str,
    role: str,
    action: str,
    resource_type: str,
    resource_id: str | None,
    outcome: str,
    details: Mapping[str, Any],
    prev_hash: str | None,
    key_id: str | None,
) -> dict[str, Any]:
    """Every field of an event that its ``chain_hash`` covers (all but ``id`` and the hash)."""
    return {
        "type": EVENT_TYPE,
        "sequence": sequence,
        "occurred_at": canonical_time(occurred_at),
        "actor": actor,
        "role": role,
        "action": action,
        "resource_type": resource_type,
        "resource_id": resource_id,
        "outcome": outcome,
        "details": details,
        "prev_hash": prev_hash,
        "key_id": key_id,
    }


def lock_head(session: Session) -> None:
    """Take the chain's lock for the rest of the caller's transaction (no-op UPDATE of the head).

    Also used to serialise other store-wide decisions, such as bootstrapping the first user.
    """
    statement = (
        update(AuditChainHead)
        .where(AuditChainHead.id == HEAD_ID)
        .values(sequence=AuditChainHead.sequence)
        .execution_options(synchronize_session=False)
    )
    if session.execute(statement).rowcount != 1:  # type: ignore[attr-defined]
        raise ChainHeadMissingError("the audit chain head is missing: run `clinic db upgrade`")


def read_head(session: Session) -> tuple[int, str]:
    """(sequence, chain_hash) of the head, read from the database (never from the session cache)."""
    row = session.execute(
        select(AuditChainHead.sequence, AuditChainHead.chain_hash).where(
            AuditChainHead.id == HEAD_ID
        )
    ).one_or_none()
    if row is None:
        raise ChainHeadMissingError("the audit chain head is missing: run `clinic db upgrade`")
    return int(row.sequence), str(row.chain_hash)


def _check_lengths(values: Mapping[str, str | None]) -> None:
    for name, value in values.items():
        if value is not None and len(value) > FIELD_LIMITS[name]:
            raise ValueError(f"audit {name} is longer than {FIELD_LIMITS[name]} characters")


def append_event(
    session: Session,
    key: AuditKey,
    *,
    actor: str,
    role: str,
    action: str,
    resource_type: str,
    resource_id: str | None = None,
    outcome: str = "success",
    details: Mapping[str, Any] | None = None,
) -> AuditEvent:
    """Add one chained event to the caller's transaction (flushed, not committed)."""
    texts = {
        "actor": actor,
        "role": role,
        "action": action,
        "resource_type": resource_type,
        "resource_id": resource_id,
        "outcome": outcome,
    }
    _check_lengths(texts)
    lock_head(session)
    head_sequence, head_hash = read_head(session)
    event = AuditEvent(
        sequence=head_sequence + 1,
        occurred_at=dt.datetime.now(dt.UTC),
        details=normalise_details(details),
        prev_hash=head_hash,
        key_id=key.key_id,
        **texts,
    )
    event.chain_hash = key.mac(payload_of(event))
    session.add(event)
    session.flush()
    session.execute(
        update(AuditChainHead)
        .where(AuditChainHead.id == HEAD_ID)
        .values(sequence=event.sequence, chain_hash=event.chain_hash)
        .execution_options(synchronize_session=False)
    )
    return event


def payload_of(event: AuditEvent) -> dict[str, Any]:
    """The hashed payload of a stored or about-to-be-stored event."""
    return event_payload(
        sequence=event.sequence,
        occurred_at=event.occurred_at,
        actor=event.actor,
        role=event.role,
        action=event.action,
        resource_type=event.resource_type,
        resource_id=event.resource_id,
        outcome=event.outcome,
        details=event.details,
        prev_hash=event.prev_hash,
        key_id=event.key_id,
    )


def record(
    session: Session,
    key: AuditKey,
    principal: Principal,
    action: str,
    resource_type: str,
    resource_id: str | None = None,
    *,
    outcome: str = "success",
    details: Mapping[str, Any] | None = None,
) -> AuditEvent:
    """:func:`append_event` on behalf of ``principal``."""
    return append_event(
        session,
        key,
        actor=principal.username,
        role=principal.role.value,
        action=action,
        resource_type=resource_type,
        resource_id=resource_id,
        outcome=outcome,
        details=details,
    )


def authorize(
    session: Session,
    key: AuditKey,
    principal: Principal,
    permission: Permission,
    action: str,
    resource_type: str,
    resource_id: str | None = None,
    *,
    details: Mapping[str, Any] | None = None,
) -> None:
    """Check ``permission``; on refusal record a ``denied`` event, then raise AccessDenied.

    The denial event is only added to the session: the caller commits it even though the
    operation failed (nothing else has been written at that point).
    """
    if principal.can(permission):
        return
    denied = {**(details or {}), "permission": permission.value}
    record(
        session,
        key,
        principal,
        action,
        resource_type,
        resource_id,
        outcome="denied",
        details=denied,
    )
    raise AccessDenied(principal.username, principal.role.value, permission)
