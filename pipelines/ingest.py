"""The ingestion pipeline: paths (and an optional manifest) into a store, as a plain function.

This is the entry point batch schedulers call; the CLI is a thin layer over the same engine.
"""

from __future__ import annotations

from pathlib import Path

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
) -> IngestSummary:
    """Ingest ``paths`` (and ``manifest``) into the store ``settings`` describe."""
    settings.check()
    items = list(iter_items_from_paths(paths))
    if manifest is not None:
        items += list(iter_manifest_items(manifest))
    store = Store.open(settings)
    try:
        return ingest(store, items, options or IngestOptions())
    finally:
        store.close()
