"""Alembic environment: the URL comes from the config set by ``clinic.store.db.alembic_config``
(or ``-x url=...`` / ``CLINIC_DATABASE_URL`` when alembic is run by hand)."""

from __future__ import annotations

import os
from typing import Any

from alembic import context

from clinic.settings import normalise_database_url
from clinic.store.db import make_engine
from clinic.store.models import Base

config = context.config
target_metadata = Base.metadata


def _url() -> str:
    url = context.get_x_argument(as_dictionary=True).get("url")
    url = url or config.get_main_option("sqlalchemy.url") or os.environ.get("CLINIC_DATABASE_URL")
    if not url:
        raise RuntimeError("no database URL: pass -x url=... or set CLINIC_DATABASE_URL")
    return normalise_database_url(url)


def include_object(
    obj: Any, name: str | None, type_: str, reflected: bool, compare_to: Any
) -> bool:
    """Leave the pgvector HNSW indexes out of autogenerate: they are partial indexes over one
    embedding dimension each (migration 0004, or created at first search for a new dimension),
    which the ORM models cannot express."""
    return not (type_ == "index" and (name or "").startswith("ix_embeddings_hnsw_"))


def run_migrations_offline() -> None:
    url = _url()
    context.configure(
        url=url,
        target_metadata=target_metadata,
        literal_binds=True,
        include_object=include_object,
        render_as_batch=url.startswith("sqlite"),
    )
    with context.begin_transaction():
        context.run_migrations()


def run_migrations_online() -> None:
    url = _url()
    engine = make_engine(url)
    with engine.connect() as connection:
        context.configure(
            connection=connection,
            target_metadata=target_metadata,
            render_as_batch=url.startswith("sqlite"),
            compare_type=True,
            include_object=include_object,
        )
        with context.begin_transaction():
            context.run_migrations()
    engine.dispose()


if context.is_offline_mode():
    run_migrations_offline()
else:
    run_migrations_online()
