"""The ingestion pipeline: paths (and an optional manifest) into a store, as a plain function.

This is the entry point batch schedulers call; the CLI is a thin layer over the same engine.
"""

from __future__ import annotations

from dataclasses import replace
from pathlib import Path

from clinic.engines.options import Engine, engine_options
from clinic.ingest.discover import iter_items_from_paths, iter_manifest_items
from clinic.ingest.engine import IngestOptions, IngestSummary, ingest
from clinic.settings import Settings
from clinic.store.store import Store


def run_ingestion(
    settings: Settings,
    paths: list[Path],
    *,
    manifest: Path | None = None,
    options: IngestOptions | None = None,
    engine: Engine | str | None = None,
    address: str | None = None,
) -> IngestSummary:
    """Ingest ``paths`` (and ``manifest``) into the store ``settings`` describe.

    ``engine`` (``local`` or ``ray``) and ``address`` override ``options``; the address defaults
    to ``CLINIC_RAY_ADDRESS`` when the engine is Ray.
    """
    settings.check()
    options = options or IngestOptions()
    if engine is not None:
        chosen = engine_options(engine, address, max(options.workers, 1))
        options = replace(options, engine=chosen.engine, address=chosen.address)
    items = list(iter_items_from_paths(paths))
    if manifest is not None:
        items += list(iter_manifest_items(manifest))
    store = Store.open(settings)
    try:
        return ingest(store, items, options)
    finally:
        store.close()
