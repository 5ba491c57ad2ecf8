"""pgvector HNSW indexes on embeddings, one per embedding dimension (PostgreSQL only)

Revision ID: 0004
Revises: 0003
Create Date: 2026-11-30 16:40:00.000000

Embedding spaces (model key × modality) differ in dimension, and one ``vector`` column holds
them all; an HNSW index needs one fixed dimension, so each index is a partial one over the rows
of one dimension (``vector_dims(vector) = D``) on the expression ``vector::vector(D)``. Searches
name the same predicate and filter the space inside the graph walk with pgvector's iterative
scans. The indexes for the dimensions of the shipped model configs (128: cpu-small and the ECG
config, 256: gpu-base) are created here; a model of another dimension gets its index on first
search (``clinic.retrieval.backends.ensure_hnsw_index``, same name and parameters).

The per-space indexes that earlier releases created at search time are dropped: the
per-dimension index answers the same queries. Parameters: m = 16, ef_construction = 64
(pgvector's defaults; the measured recall/latency trade-off is in the README). SQLite stores
use the embedded index under CLINIC_HOME/index instead; nothing changes for them.
"""

from collections.abc import Sequence

import sqlalchemy as sa
from alembic import op


revision: str = '0004'
down_revision: str | None = '0003'
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None

DIMENSIONS = (128, 256)
HNSW_M = 16
HNSW_EF_CONSTRUCTION = 64
RUNTIME_INDEX_PREFIX = 'ix_embeddings_hnsw_'


def _is_postgres() -> bool:
    return op.get_bind().dialect.name == 'postgresql'


def upgrade() -> None:
    if not _is_postgres():
        return
    bind = op.get_bind()
    runtime = bind.execute(
        sa.text("SELECT indexname FROM pg_indexes WHERE tablename = 'embeddings' "
                "AND indexname LIKE :prefix"),
        {'prefix': RUNTIME_INDEX_PREFIX + '%'},
    ).scalars().all()
    for name in runtime:
        op.execute(f'DROP INDEX IF EXISTS {name}')
    for dim in DIMENSIONS:
        op.execute(
            f'CREATE INDEX IF NOT EXISTS {RUNTIME_INDEX_PREFIX}d{dim} ON embeddings '
            f'USING hnsw ((vector::vector({dim})) vector_cosine_ops) '
            f'WITH (m = {HNSW_M}, ef_construction = {HNSW_EF_CONSTRUCTION}) '
            f'WHERE vector_dims(vector) = {dim}'
        )


def downgrade() -> None:
    if not _is_postgres():
        return
    for dim in DIMENSIONS:
        op.execute(f'DROP INDEX IF EXISTS {RUNTIME_INDEX_PREFIX}d{dim}')
