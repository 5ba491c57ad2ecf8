"""Check the audit chain end to end, and keep signed checkpoints of its head outside the database.

The chain alone proves that no event was edited, inserted or reordered, and that none is missing
*between* two events. It cannot prove that the newest events were not cut off by someone who also
"fixed" the head row. A checkpoint (sequence and hash of the head, signed with the audit key and
kept in ``CLINIC_HOME/audit``, outside the database) closes that gap: a chain that no longer
reaches a checkpoint's sequence, or holds another hash there, has lost its tail.

Events are read in id order, in chunks, so a million events never sit in memory at once.
"""

from __future__ import annotations

import datetime as dt
import hmac
import json
import os
from collections.abc import Generator, Iterator, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from sqlalchemy import Row, func, select
from sqlalchemy.orm import Session

from clinic.audit.chain import GENESIS_HASH, HEAD_ID, AuditKey, event_payload, read_head
from clinic.store.models import AuditChainHead, AuditEvent

CHECKPOINT_TYPE = "clinic.audit.checkpoint/1"
CHECKPOINT_FILE = "checkpoints.jsonl"
CHUNK = 5000
_COLUMNS = (
    AuditEvent.id,
    AuditEvent.sequence,
    AuditEvent.occurred_at,
    AuditEvent.actor,
    AuditEvent.role,
    AuditEvent.action,
    AuditEvent.resource_type,
    AuditEvent.resource_id,
    AuditEvent.outcome,
    AuditEvent.details,
    AuditEvent.prev_hash,
    AuditEvent.chain_hash,
    AuditEvent.key_id,
)


@dataclass(frozen=True)
class Checkpoint:
    """The chain head at one moment, signed: ``mac`` covers the other three fields."""

    sequence: int
    chain_hash: str
    made_at: str
    mac: str

    def to_json(self) -> dict[str, Any]:
        return {
            "sequence": self.sequence,
            "chain_hash": self.chain_hash,
            "made_at": self.made_at,
            "mac": self.mac,
        }

    @classmethod
    def from_json(cls, data: Any) -> Checkpoint:
        """Parse one checkpoint; ValueError when a field is missing or of the wrong type."""
        if not isinstance(data, dict):
            raise ValueError("a checkpoint must be a JSON object")
        sequence = data.get("sequence")
        texts = [data.get(name) for name in ("chain_hash", "made_at", "mac")]
        if not isinstance(sequence, int) or isinstance(sequence, bool) or sequence < 0:
            raise ValueError("checkpoint sequence must be a non-negative integer")
        if not all(isinstance(text, str) for text in texts):
            raise ValueError("checkpoint chain_hash, made_at and mac must be strings")
        return cls(sequence, str(texts[0]), str(texts[1]), str(texts[2]))

    def is_signed_by(self, key: AuditKey) -> bool:
        return hmac.compare_digest(self.mac, _checkpoint_mac(key, self))


def _checkpoint_mac(key: AuditKey, checkpoint: Checkpoint) -> str:
    return key.mac(
        {
            "type": CHECKPOINT_TYPE,
            "sequence": checkpoint.sequence,
            "chain_hash": checkpoint.chain_hash,
            "made_at": checkpoint.made_at,
        }
    )


@dataclass(frozen=True)
class VerifyResult:
    """``events``: chained events verified; ``legacy``: pre-chain events; ``first_bad``: an id."""

    ok: bool
    events: int
    first_bad: int | None
    problem: str | None
    legacy: int
    checkpoints: int

    def to_json(self) -> dict[str, Any]:
        return {
            "ok": self.ok,
            "events": self.events,
            "first_bad": self.first_bad,
            "problem": self.problem,
            "legacy": self.legacy,
            "checkpoints": self.checkpoints,
        }


class _BrokenChainError(Exception):
    """The first problem found; stops the walk."""

    def __init__(self, problem: str, first_bad: int | None = None) -> None:
        super().__init__(problem)
        self.problem, self.first_bad = problem, first_bad


@dataclass
class _Walk:
    """State carried from one event to the next while walking the chain in id order."""

    key: AuditKey
    legacy_max_id: int
    checkpoints: dict[int, list[Checkpoint]]
    expected: int = 1
    prev_hash: str = GENESIS_HASH
    events: int = 0
    legacy: int = 0
    matched: int = 0
    hashes_at: dict[int, str] = field(default_factory=dict)


def verify_chain(
    session: Session, key: AuditKey, checkpoints: Sequence[Checkpoint] = ()
) -> VerifyResult:
    """Walk every event in id order; report the first problem with the id of the event at fault."""
    head_sequence, head_hash = read_head(session)
    legacy = select(AuditChainHead.legacy_max_id).where(AuditChainHead.id == HEAD_ID)
    legacy_max_id = int(session.scalar(legacy) or 0)
    signed = [c for c in checkpoints if c.is_signed_by(key)]
    walk = _Walk(key, legacy_max_id, _by_sequence(signed, {head_sequence}))
    try:
        for row in _rows(session):
            _check_readable_event(session, walk, row)
        _check_tail(walk, head_sequence, head_hash, signed)
        _check_forged(checkpoints, signed)
    except _BrokenChainError as broken:
        return VerifyResult(
            False, walk.events, broken.first_bad, broken.problem, walk.legacy, walk.matched
        )
    return VerifyResult(True, walk.events, None, None, walk.legacy, walk.matched)


def _by_sequence(checkpoints: Sequence[Checkpoint], extra: set[int]) -> dict[int, list[Checkpoint]]:
    """Checkpoints by sequence; ``extra`` sequences get an entry so their hash is remembered."""
    found: dict[int, list[Checkpoint]] = {sequence: [] for sequence in extra}
    for checkpoint in checkpoints:
        found.setdefault(checkpoint.sequence, []).append(checkpoint)
    return found


def _rows(session: Session) -> Iterator[Row[Any]]:
    """Every event in id order, CHUNK rows per query (keyset pagination, not OFFSET)."""
    last_id = 0
    while True:
        try:
            chunk = _fetch(session, last_id, CHUNK)
        except _UNREADABLE:
            last_id = yield from _one_by_one(session, last_id)
            continue
        yield from chunk
        if len(chunk) < CHUNK:
            return
        last_id = chunk[-1].id
        del chunk  # not held while the next chunk is read: one chunk in memory at a time


# What SQLite's flexible typing lets an attacker store that the column types cannot read back
# (a timestamp or JSON that does not parse); PostgreSQL refuses such values on write.
_UNREADABLE = (ValueError, TypeError, OverflowError)


def _fetch(session: Session, after_id: int, limit: int) -> list[Row[Any]]:
    statement = select(*_COLUMNS).where(AuditEvent.id > after_id).order_by(AuditEvent.id)
    return list(session.execute(statement.limit(limit)).all())


def _one_by_one(session: Session, after_id: int) -> Generator[Row[Any], None, int]:
    """The chunk after ``after_id`` row by row, to name the event that cannot be read."""
    ids = session.scalars(
        select(AuditEvent.id).where(AuditEvent.id > after_id).order_by(AuditEvent.id).limit(CHUNK)
    ).all()
    for event_id in ids:
        try:
            (row,) = _fetch(session, event_id - 1, 1)
        except _UNREADABLE as error:
            raise _BrokenChainError(
                f"event {event_id} holds a value its column cannot read ({error}): edited",
                event_id,
            ) from error
        yield row
    return ids[-1] if ids else after_id


def _check_readable_event(session: Session, walk: _Walk, row: Row[Any]) -> None:
    """:func:`_check_event`, reporting values of the wrong type as a finding, not a crash."""
    try:
        _check_event(session, walk, row)
    except _UNREADABLE as error:
        raise _BrokenChainError(
            f"event {row.id} holds values that cannot be checked ({error}): edited", row.id
        ) from error


def _check_event(session: Session, walk: _Walk, row: Row[Any]) -> None:
    chain_fields = (row.sequence, row.prev_hash, row.chain_hash, row.key_id)
    if all(value is None for value in chain_fields):
        if walk.expected > 1 or row.id > walk.legacy_max_id:
            raise _BrokenChainError(
                f"event {row.id} is not signed but was written after the audit chain "
                "began (inserted without the key)",
                row.id,
            )
        walk.legacy += 1
        return
    if any(value is None for value in chain_fields):
        raise _BrokenChainError(f"event {row.id} has incomplete chain fields", row.id)
    if row.key_id != walk.key.key_id:
        raise _BrokenChainError(
            f"event {row.id} was signed with audit key {row.key_id}, not with the "
            f"configured key {walk.key.key_id}: wrong CLINIC_AUDIT_KEY?",
            row.id,
        )
    _check_sequence(session, walk, row)
    if row.prev_hash != walk.prev_hash:
        raise _BrokenChainError(
            f"event {row.id} does not link to the event before it (prev_hash "
            "mismatch): events reordered or replaced",
            row.id,
        )
    if not hmac.compare_digest(row.chain_hash, walk.key.mac(_payload(row))):
        raise _BrokenChainError(
            f"event {row.id} does not match its chain_hash: edited, or forged without the key",
            row.id,
        )
    _check_checkpoints_at(walk, row)
    walk.expected, walk.prev_hash = row.sequence + 1, row.chain_hash
    walk.events += 1


def _check_sequence(session: Session, walk: _Walk, row: Row[Any]) -> None:
    """Sequences must run 1, 2, 3… in id order; tell a deletion from a reordering."""
    if row.sequence == walk.expected:
        return
    if row.sequence < walk.expected:
        raise _BrokenChainError(
            f"event {row.id} repeats or goes back to sequence {row.sequence} (expected "
            f"{walk.expected}): inserted or reordered event",
            row.id,
        )
    later = session.scalar(
        select(func.min(AuditEvent.id)).where(
            AuditEvent.id > row.id,
            AuditEvent.sequence >= walk.expected,
            AuditEvent.sequence < row.sequence,
        )
    )
    if later is not None:
        raise _BrokenChainError(
            f"events reordered: event {row.id} holds sequence {row.sequence} but "
            f"sequence {walk.expected} comes later, at event {later}",
            row.id,
        )
    missing = f"{walk.expected}" + (
        "" if row.sequence == walk.expected + 1 else f"..{row.sequence - 1}"
    )
    raise _BrokenChainError(
        f"sequence gap before event {row.id}: sequence {missing} missing (events deleted)", row.id
    )


def _payload(row: Row[Any]) -> dict[str, Any]:
    return event_payload(
        sequence=row.sequence,
        occurred_at=row.occurred_at,
        actor=row.actor,
        role=row.role,
        action=row.action,
        resource_type=row.resource_type,
        resource_id=row.resource_id,
        outcome=row.outcome,
        details=row.details,
        prev_hash=row.prev_hash,
        key_id=row.key_id,
    )


def _check_checkpoints_at(walk: _Walk, row: Row[Any]) -> None:
    if row.sequence not in walk.checkpoints:
        return
    walk.hashes_at[row.sequence] = row.chain_hash
    for checkpoint in walk.checkpoints[row.sequence]:
        if checkpoint.chain_hash != row.chain_hash:
            raise _BrokenChainError(
                f"checkpoint made at {checkpoint.made_at} holds another hash for "
                f"sequence {row.sequence} than event {row.id}: the chain was rewritten "
                "after the checkpoint",
                row.id,
            )
        walk.matched += 1


def _check_tail(
    walk: _Walk, head_sequence: int, head_hash: str, checkpoints: Sequence[Checkpoint]
) -> None:
    """The head row and every checkpoint must lie within the chain that was found."""
    last = walk.expected - 1
    if head_sequence > last:
        raise _BrokenChainError(
            f"the chain head records sequence {head_sequence} but the last event has "
            f"sequence {last}: events removed from the tail"
        )
    expected_head = walk.hashes_at.get(head_sequence, GENESIS_HASH)
    if head_hash != expected_head:
        raise _BrokenChainError(
            f"the chain head's hash differs from the event at sequence {head_sequence}:"
            " head row altered"
        )
    for checkpoint in checkpoints:
        if checkpoint.sequence > last:
            raise _BrokenChainError(
                f"checkpoint made at {checkpoint.made_at} records sequence "
                f"{checkpoint.sequence} but the chain ends at sequence {last}: events "
                "removed from the tail"
            )
        if checkpoint.sequence == 0:
            if checkpoint.chain_hash != GENESIS_HASH:
                raise _BrokenChainError("checkpoint at sequence 0 does not hold the genesis hash")
            walk.matched += 1


def _check_forged(given: Sequence[Checkpoint], signed: Sequence[Checkpoint]) -> None:
    for checkpoint in given:
        if checkpoint not in signed:
            raise _BrokenChainError(
                f"checkpoint made at {checkpoint.made_at} (sequence "
                f"{checkpoint.sequence}) has a bad MAC: forged, altered, or made with "
                "another audit key"
            )


def make_checkpoint(session: Session, key: AuditKey) -> Checkpoint:
    """Sign the current head (sequence and hash) with the audit key."""
    sequence, chain_hash = read_head(session)
    made_at = dt.datetime.now(dt.UTC).isoformat(timespec="microseconds")
    unsigned = Checkpoint(sequence, chain_hash, made_at, "")
    return Checkpoint(sequence, chain_hash, made_at, _checkpoint_mac(key, unsigned))


def save_checkpoint(directory: Path, checkpoint: Checkpoint) -> Path:
    """Append one line to ``directory/checkpoints.jsonl`` and fsync it before returning."""
    return append_checkpoint(directory / CHECKPOINT_FILE, checkpoint)


def append_checkpoint(path: Path, checkpoint: Checkpoint) -> Path:
    """Append one JSON line to the file ``path`` (created with its folder), fsynced."""
    path.parent.mkdir(parents=True, exist_ok=True)
    created = not path.exists()
    with path.open("a", encoding="utf-8") as stream:
        stream.write(json.dumps(checkpoint.to_json(), sort_keys=True) + "\n")
        stream.flush()
        os.fsync(stream.fileno())
    if created:  # the new file's directory entry must survive a crash too
        descriptor = os.open(path.parent, os.O_RDONLY)
        try:
            os.fsync(descriptor)
        finally:
            os.close(descriptor)
    return path


def load_checkpoints(path: Path) -> list[Checkpoint]:
    """Checkpoints from a file, or from ``checkpoints.jsonl`` in a directory (none if absent).

    A line that does not parse is an error naming the file and line, not something to skip:
    a damaged checkpoint file is itself a finding.
    """
    file = path / CHECKPOINT_FILE if path.is_dir() else path
    if path.is_dir() and not file.exists():
        return []
    found: list[Checkpoint] = []
    with file.open(encoding="utf-8") as stream:
        for number, line in enumerate(stream, start=1):
            if not line.strip():
                continue
            try:
                found.append(Checkpoint.from_json(json.loads(line)))
            except ValueError as error:
                raise ValueError(f"{file}:{number}: not a checkpoint: {error}") from error
    return found
