"""Nearest-neighbour search over one embedding space: pgvector on PostgreSQL, the embedded index
under ``CLINIC_HOME/index`` otherwise. Both search *inside* the allowed cases of a filter.

pgvector: one partial HNSW index per space, on the expression ``vector::vector(D)`` with
``WHERE space = '<space>'`` (spaces differ in dimension, and a partial index keeps each graph to
its own vectors). Filtered queries use pgvector's iterative index scans (``relaxed_order``), which
keep scanning the graph until enough rows pass the filter instead of returning fewer than k.

Embedded: the index is synchronised from the ``embeddings`` table before each search (rows
created or replaced since the last sync are upserted), so newly scored cases are found at once.
"""

from __future__ import annotations

import hashlib
import json
import os
import re
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import numpy.typing as npt
from sqlalchemy import Select, select, text
from sqlalchemy.orm import Session

from clinic.retrieval.index import EmbeddedIndex, IndexLockedError, StaleIndexError
from clinic.store.models import Embedding
from clinic.store.store import Store

_SPACE = re.compile(r"^[0-9a-f]{64}:[a-z]+$")
HNSW_M = 16
HNSW_EF_CONSTRUCTION = 64
HNSW_EF_SEARCH = 100
SYNC_FILE = "sync.json"
SYNC_ATTEMPTS = 50
_ENSURED: set[tuple[str, str]] = set()  # (database, index) known to exist, per process


@dataclass(frozen=True)
class Neighbour:
    encounter_id: int
    score: float  # cosine similarity


def search_space(
    store: Store,
    space: str,
    query: npt.NDArray[np.float32],
    k: int,
    allowed: Select[int] | None = None,
) -> list[Neighbour]:
    """The ``k`` most similar cases in ``space`` (restricted to ``allowed`` when given)."""
    if not _SPACE.match(space):
        raise ValueError(f"not an embedding space name: {space!r}")
    if store.settings.is_sqlite:
        return _search_embedded(store, space, query, k, allowed)
    return _search_pgvector(store, space, query, k, allowed)


def _search_pgvector(
    store: Store, space: str, query: npt.NDArray[np.float32], k: int, allowed: Select[int] | None
) -> list[Neighbour]:
    dim = int(query.shape[0])
    ensure_hnsw_index(store, space, dim)
    literal = "[" + ",".join(f"{float(v):.8g}" for v in query) + "]"
    where = f"space = '{space}'"
    with store.session() as session:
        session.execute(text(f"SET LOCAL hnsw.ef_search = {max(HNSW_EF_SEARCH, k)}"))
        session.execute(text("SET LOCAL hnsw.iterative_scan = relaxed_order"))
        params: dict[str, Any] = {"q": literal, "k": k}
        if allowed is not None:
            compiled = allowed.compile(session.get_bind(), compile_kwargs={"literal_binds": True})
            where += f" AND encounter_id IN ({compiled})"
        rows = session.execute(
            text(
                f"SELECT encounter_id, (vector::vector({dim})) <=> CAST(:q AS vector({dim})) AS d "
                f"FROM embeddings WHERE {where} "
                f"ORDER BY (vector::vector({dim})) <=> CAST(:q AS vector({dim})) LIMIT :k"
            ),
            params,
        ).all()
        session.rollback()
    hits = [Neighbour(int(row[0]), 1.0 - float(row[1])) for row in rows]
    return sorted(hits, key=lambda hit: -hit.score)  # relaxed order: re-sort the k found


def hnsw_index_name(space: str) -> str:
    return "ix_embeddings_hnsw_" + hashlib.sha256(space.encode()).hexdigest()[:16]


def ensure_hnsw_index(store: Store, space: str, dim: int) -> None:
    """Create the space's partial HNSW index if it does not exist yet (idempotent; concurrent
    callers serialise on an advisory lock instead of racing on the index name)."""
    name = hnsw_index_name(space)
    known = (store.settings.database_url, name)
    if known in _ENSURED:
        return
    with store.engine.begin() as connection:
        connection.execute(text("SELECT pg_advisory_xact_lock(hashtext(:name))"), {"name": name})
        exists = connection.execute(
            text("SELECT 1 FROM pg_indexes WHERE indexname = :name"), {"name": name}
        ).first()
        if not exists:
            connection.execute(
                text(
                    f"CREATE INDEX {name} ON embeddings USING hnsw "
                    f"((vector::vector({dim})) vector_cosine_ops) "
                    f"WITH (m = {HNSW_M}, ef_construction = {HNSW_EF_CONSTRUCTION}) "
                    f"WHERE space = '{space}'"
                )
            )
    _ENSURED.add(known)


def index_dir(store: Store, space: str) -> Path:
    return store.settings.home / "index" / space.replace(":", "-")


def _search_embedded(
    store: Store, space: str, query: npt.NDArray[np.float32], k: int, allowed: Select[int] | None
) -> list[Neighbour]:
    index = sync_embedded_index(store, space, int(query.shape[0]))
    keys: npt.NDArray[np.int64] | None = None
    if allowed is not None:
        with store.session() as session:
            keys = np.asarray(session.scalars(allowed).all(), dtype=np.int64)
    hits = index.search(np.asarray(query, dtype=np.float32), k, allowed=keys)
    return [Neighbour(int(hit.key), float(hit.score)) for hit in hits]


def sync_embedded_index(store: Store, space: str, dim: int) -> EmbeddedIndex:
    """Open the space's index and upsert every embedding written since its last sync.

    Only one writer may hold an index: a sync that meets another one (or finds the index saved
    by it meanwhile) reopens and tries again, so concurrent searches never fail or lose rows.
    """
    directory = index_dir(store, space)
    for attempt in range(SYNC_ATTEMPTS):
        index = EmbeddedIndex.open(directory, dim)
        try:
            _sync(store, space, index)
            return index
        except (IndexLockedError, StaleIndexError):
            time.sleep(0.1 * (attempt + 1))
    raise IndexLockedError(f"the index in {directory} stayed locked by another writer")


def _sync(store: Store, space: str, index: EmbeddedIndex) -> None:
    marker = index.directory / SYNC_FILE
    since = json.loads(marker.read_text())["max_id"] if marker.is_file() else 0
    with store.session() as session:
        changed = _changed_since(session, space, since)
    if not changed:
        return
    with index:  # the writer lock is held from the first add until here
        keys = np.asarray([row[1] for row in changed], dtype=np.int64)
        vectors = np.stack([np.asarray(row[2], dtype=np.float32) for row in changed])
        index.add(keys, vectors)
        index.save()
        newest = max(int(row[0]) for row in changed)
        temporary = marker.with_name(f".{SYNC_FILE}.{os.getpid()}")
        temporary.write_text(json.dumps({"max_id": newest}))
        temporary.replace(marker)


def _changed_since(session: Session, space: str, since: int) -> list[Any]:
    """Rows with an id above the last synced one (a replaced vector is a new row, see
    :func:`clinic.inference.records.upsert_embeddings`)."""
    query = (
        select(Embedding.id, Embedding.encounter_id, Embedding.vector)
        .where(Embedding.space == space, Embedding.id > since)
        .order_by(Embedding.id)
    )
    return list(session.execute(query).all())
