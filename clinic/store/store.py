"""One handle on a clinic store: database engine, sessions and blob folder."""

from __future__ import annotations

from dataclasses import dataclass

from sqlalchemy import Engine
from sqlalchemy.orm import Session, sessionmaker

from clinic.settings import Settings
from clinic.store.blobs import BlobStore
from clinic.store.db import make_engine, make_session_factory, upgrade_schema


@dataclass(frozen=True)
class Store:
    settings: Settings
    engine: Engine
    sessions: sessionmaker[Session]
    blobs: BlobStore

    @classmethod
    def open(cls, settings: Settings, *, migrate: bool = True) -> Store:
        """Open (and by default migrate to head) the store that ``settings`` describe."""
        settings.home.mkdir(parents=True, exist_ok=True)
        if migrate:
            upgrade_schema(settings.database_url)
        engine = make_engine(settings.database_url)
        return cls(settings, engine, make_session_factory(engine), BlobStore(settings.blob_root))

    def session(self) -> Session:
        return self.sessions()

    def close(self) -> None:
        self.engine.dispose()
