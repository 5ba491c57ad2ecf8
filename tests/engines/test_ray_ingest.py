"""Ingestion on Ray (local Ray, 2 CPUs) stores exactly what the local engine stores."""

from __future__ import annotations

import os
from functools import partial
from pathlib import Path

import pytest
from sqlalchemy import func, select

import clinic.engines.ray_ingest as ray_ingest
from clinic.engines.options import Engine, EngineOptions
from clinic.ingest.discover import iter_items_from_paths
from clinic.ingest.engine import IngestOptions, IngestSummary, ingest
from clinic.ingest.prepare import Outcome, PrepareContext
from clinic.ingest.types import IngestItem
from clinic.store.models import SourceItem
from clinic.store.store import Store
from tests.conftest import make_settings
from tests.engines.helpers import phantom_with_bad_inputs, stored_rows


def open_store(root: Path) -> Store:
    return Store.open(make_settings(root / "home", f"sqlite:///{root / 'home' / 'clinic.db'}"))


def ingest_into(root: Path, items: list[IngestItem], engine: Engine) -> tuple[Store, IngestSummary]:
    store = open_store(root)
    options = IngestOptions(workers=2, cohort="phantom", engine=engine, batch_size=8)
    return store, ingest(store, items, options)


@pytest.fixture(scope="module")
def phantom_items(tmp_path_factory: pytest.TempPathFactory) -> list[IngestItem]:
    paths = phantom_with_bad_inputs(tmp_path_factory.mktemp("phantom"))
    return list(iter_items_from_paths(paths))


def test_ray_ingestion_stores_what_the_local_engine_stores(
    ray_local: EngineOptions, phantom_items: list[IngestItem], tmp_path: Path
) -> None:
    local, by_local = ingest_into(tmp_path / "local", phantom_items, Engine.LOCAL)
    on_ray, by_ray = ingest_into(tmp_path / "ray", phantom_items, Engine.RAY)
    try:
        assert by_ray.as_json() == by_local.as_json()
        assert by_ray.quarantined_by_reason == by_local.quarantined_by_reason
        assert by_local.quarantined >= 3 and by_local.ingested > 0
        assert stored_rows(on_ray) == stored_rows(local)
        again = ingest(on_ray, phantom_items, IngestOptions(workers=2, engine=Engine.RAY))
        assert again.already_stored == by_local.ingested and again.ingested == 0
    finally:
        local.close()
        on_ray.close()


def crash_once_on(
    target: str, marker: Path, tasks: list[tuple[IngestItem, str]], context: PrepareContext
) -> list[Outcome]:
    """Kill this Ray worker the first time it meets ``target``; decode normally afterwards."""
    if any(sha == target for _, sha in tasks):
        if not marker.exists():
            marker.write_text(str(os.getpid()))
            os._exit(1)
        marker.with_suffix(".retried").write_text(str(os.getpid()))
    return ray_ingest.supervised_decode(tasks, context)


def test_a_ray_worker_killed_mid_run_loses_and_duplicates_nothing(
    ray_local: EngineOptions,
    phantom_items: list[IngestItem],
    tmp_path: Path,
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    from clinic.ingest.prepare import content_sha256

    target = content_sha256(phantom_items[len(phantom_items) // 2])
    marker = tmp_path / "killed"
    monkeypatch.setattr(ray_ingest, "DECODE", partial(crash_once_on, target, marker))
    reference, expected = ingest_into(tmp_path / "reference", phantom_items, Engine.LOCAL)
    store, summary = ingest_into(tmp_path / "ray", phantom_items, Engine.RAY)
    try:
        assert marker.exists() and marker.with_suffix(".retried").exists()  # died, then retried
        assert summary.as_json() == expected.as_json()
        with store.session() as session:
            count = session.scalar(select(func.count()).select_from(SourceItem))
        assert count == expected.ingested
        assert stored_rows(store) == stored_rows(reference)
    finally:
        reference.close()
        store.close()
