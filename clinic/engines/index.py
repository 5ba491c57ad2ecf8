"""Building the retrieval index of every embedding space of a model, on either engine.

What runs where:

- SQLite (embedded index under ``CLINIC_HOME/index``): the heavy part is reading the vectors,
  normalising them and building the HNSW graph (:func:`sync_embedded_index`). The local engine
  does it here, one space after another; the Ray engine runs one remote task per space (spaces
  are separate folders, so they build in parallel) on a node that must mount ``CLINIC_HOME``.
- PostgreSQL (pgvector): the database server builds the graph (``CREATE INDEX … USING hnsw``);
  the statement is sent from here whatever the engine, since no worker could make it faster.

Building is idempotent: an index that is up to date is only checked, and one that is behind
gets the embeddings written since its last sync.
"""

from __future__ import annotations

import time
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

from sqlalchemy import func, select

from clinic.engines.options import EngineOptions
from clinic.retrieval.backends import ensure_hnsw_index, sync_embedded_index
from clinic.store.models import Embedding
from clinic.store.store import Store


@dataclass(frozen=True)
class Space:
    name: str
    dim: int


@dataclass(frozen=True)
class IndexBuild:
    """What building one space's index did, and where it ran."""

    space: str
    backend: str  # "embedded" | "pgvector"
    vectors: int
    seconds: float
    ran_on: str  # "local" | "ray" | "database"

    def to_json(self) -> dict[str, Any]:
        return {
            "space": self.space,
            "backend": self.backend,
            "vectors": self.vectors,
            "seconds": self.seconds,
            "ran_on": self.ran_on,
        }


def model_spaces(store: Store, model_key: str) -> list[Space]:
    """Every embedding space a model version has vectors in (one per modality, and fused)."""
    with store.session() as session:
        rows = session.execute(
            select(Embedding.space, Embedding.dim)
            .where(Embedding.model_key == model_key)
            .distinct()
            .order_by(Embedding.space)
        ).all()
    return [Space(str(space), int(dim)) for space, dim in rows]


def space_dims(store: Store, names: Sequence[str]) -> list[Space]:
    """The named spaces with their dimension; a name without vectors is an error."""
    with store.session() as session:
        dims = dict(
            session.execute(
                select(Embedding.space, Embedding.dim).where(Embedding.space.in_(list(names)))
            ).all()
        )
    missing = [name for name in names if name not in dims]
    if missing:
        raise LookupError(f"no embeddings in space(s) {', '.join(missing)}")
    return [Space(name, int(dims[name])) for name in names]


def build_index(store: Store, space: Space, ran_on: str = "local") -> IndexBuild:
    """Build or bring up to date the index of one space, in this process."""
    started = time.perf_counter()
    if store.settings.is_sqlite:
        index = sync_embedded_index(store, space.name, space.dim)
        vectors, backend = len(index), "embedded"
    else:
        ensure_hnsw_index(store, space.name, space.dim)
        vectors, backend, ran_on = _count(store, space.name), "pgvector", "database"
    return IndexBuild(space.name, backend, vectors, time.perf_counter() - started, ran_on)


def build_indexes(
    store: Store, spaces: Sequence[Space], engine: EngineOptions | None = None
) -> list[IndexBuild]:
    """Build every space's index: on Ray for the embedded index when asked, else here."""
    if engine is not None and engine.is_ray and store.settings.is_sqlite and spaces:
        from clinic.engines.ray_index import build_on_ray

        return build_on_ray(store.settings, spaces, engine)
    return [build_index(store, space) for space in spaces]


def _count(store: Store, space: str) -> int:
    with store.session() as session:
        return int(session.scalar(select(func.count()).where(Embedding.space == space)) or 0)
