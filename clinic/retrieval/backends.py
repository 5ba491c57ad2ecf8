"""Nearest-neighbour search over one embedding space: pgvector on PostgreSQL, the embedded index
under ``CLINIC_HOME/index`` otherwise. Both search *inside* the allowed cases of a filter.

pgvector: one partial HNSW index per embedding dimension, on the expression ``vector::vector(D)``
with ``WHERE vector_dims(vector) = D`` — created by migration 0004 for the shipped configs'
dimensions, on first search for any other. The space (and any case filter) is applied during the
graph walk by pgvector's iterative index scans (``relaxed_order``), which keep scanning until
enough rows pass instead of returning fewer than k. ``hnsw.ef_search`` comes from
``CLINIC_HNSW_EF_SEARCH`` (default 100; the README's tuning table shows what it buys).

Embedded: the index is synchronised from the ``embeddings`` table before each search (rows
created or replaced since the last sync are upserted), so newly scored cases are found at once.
"""

from __future__ import annotations

import json
import os
import re
import threading
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import numpy.typing as npt
from sqlalchemy import Select, TextClause, select, text
from sqlalchemy.orm import Session

from clinic.retrieval.index import EmbeddedIndex, IndexLockedError, StaleIndexError
from clinic.store.models import Embedding
from clinic.store.store import Store

_SPACE = re.compile(r"^[0-9a-f]{64}:[a-z]+$")
HNSW_M = 16  # as migration 0004
HNSW_EF_CONSTRUCTION = 64
EXACT_FILTER_MAX = 2_000  # allowed cases at or below which PostgreSQL scores them all (README)
SYNC_FILE = "sync.json"
SYNC_ATTEMPTS = 50
_ENSURED: set[tuple[str, str]] = set()  # (database, index) known to exist, per process
_OPEN_INDEXES: dict[Path, EmbeddedIndex] = {}  # one loaded handle per index folder, per process
_HANDLE_LOCK = threading.RLock()  # a shared handle is synced (mutated) and searched by one thread


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
    ef_search = max(store.settings.hnsw_ef_search, k)
    with store.session() as session:
        session.execute(text(f"SET LOCAL hnsw.ef_search = {ef_search}"))
        session.execute(text("SET LOCAL hnsw.iterative_scan = relaxed_order"))
        allowed_sql, exact = None, False
        if allowed is not None:
            compiled = allowed.compile(session.get_bind(), compile_kwargs={"literal_binds": True})
            allowed_sql = str(compiled)
            count = session.execute(text(f"SELECT count(*) FROM ({allowed_sql}) AS allowed"))
            exact = int(count.scalar_one()) <= EXACT_FILTER_MAX
        params: dict[str, Any] = {"q": literal, "k": k}
        sql = pgvector_search_sql(space, dim, allowed_sql, exact=exact)
        rows = session.execute(sql, params).all()
        session.rollback()
    hits = [Neighbour(int(row[0]), 1.0 - float(row[1])) for row in rows]
    return sorted(hits, key=lambda hit: -hit.score)  # relaxed order: re-sort the k found


def pgvector_search_sql(
    space: str, dim: int, allowed_sql: str | None = None, *, exact: bool = False
) -> TextClause:
    """The k-nearest query (parameters ``q``, ``k``): it names the HNSW index's own predicate
    and expression so the planner can use it, then the space and the case filter.

    ``exact`` orders by ``distance + 0``, which no index provides: a selective filter is then
    answered by looking its few cases up (unique btree on encounter, space) and scoring them
    all — faster and exact where the graph walk would skip through many rows that fail it.
    """
    distance = f"(vector::vector({dim})) <=> CAST(:q AS vector({dim}))"
    where = f"vector_dims(vector) = {dim} AND space = '{space}'"
    if allowed_sql is not None:
        where += f" AND encounter_id IN ({allowed_sql})"
    order = f"({distance}) + 0" if exact else distance
    return text(
        f"SELECT encounter_id, {distance} AS d FROM embeddings WHERE {where} "
        f"ORDER BY {order} LIMIT :k"
    )


def hnsw_index_name(dim: int) -> str:
    """The name migration 0004 gives the HNSW index over ``dim``-dimensional embeddings."""
    return f"ix_embeddings_hnsw_d{dim}"


def ensure_hnsw_index(store: Store, space: str, dim: int) -> None:
    """Make sure the HNSW index covering ``space`` (its dimension ``dim``) exists: migrations
    create those of the shipped configs; another dimension's is created here once (idempotent;
    concurrent callers serialise on an advisory lock instead of racing on the index name)."""
    name = hnsw_index_name(dim)
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
                    f"WHERE vector_dims(vector) = {dim}"
                )
            )
    _ENSURED.add(known)


def index_dir(store: Store, space: str) -> Path:
    return store.settings.home / "index" / space.replace(":", "-")


def _search_embedded(
    store: Store, space: str, query: npt.NDArray[np.float32], k: int, allowed: Select[int] | None
) -> list[Neighbour]:
    keys: npt.NDArray[np.int64] | None = None
    if allowed is not None:
        with store.session() as session:
            keys = np.asarray(session.scalars(allowed).all(), dtype=np.int64)
    with _HANDLE_LOCK:
        index = sync_embedded_index(store, space, int(query.shape[0]))
        hits = index.search(np.asarray(query, dtype=np.float32), k, allowed=keys)
    return [Neighbour(int(hit.key), float(hit.score)) for hit in hits]


def sync_embedded_index(store: Store, space: str, dim: int) -> EmbeddedIndex:
    """Open the space's index and upsert every embedding written since its last sync.

    Only one writer may hold an index: a sync that meets another one (or finds the index saved
    by it meanwhile) reopens and tries again, so concurrent searches never fail or lose rows.
    """
    with _HANDLE_LOCK:  # callers outside a search (index build) mutate the shared handle too
        return _sync_shared_handle(store, space, dim)


def _sync_shared_handle(store: Store, space: str, dim: int) -> EmbeddedIndex:
    directory = index_dir(store, space)
    for attempt in range(SYNC_ATTEMPTS):
        index = _open_index(directory, dim)
        try:
            _sync(store, space, index)
            return index
        except (IndexLockedError, StaleIndexError):
            _OPEN_INDEXES.pop(directory, None)
            time.sleep(0.1 * (attempt + 1))
    raise IndexLockedError(f"the index in {directory} stayed locked by another writer")


def _open_index(directory: Path, dim: int) -> EmbeddedIndex:
    """The process's handle on ``directory``, reloaded from disk only when another writer has
    saved a newer generation since (a reload at 100k rows reads ~200 MB; a check reads one
    small file)."""
    cached = _OPEN_INDEXES.get(directory)
    if cached is not None and cached.dim == dim and cached.is_current():
        return cached
    index = EmbeddedIndex.open(directory, dim)
    _OPEN_INDEXES[directory] = index
    return index


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
