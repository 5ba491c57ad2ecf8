"""The embedded index built on Ray: one remote task per embedding space (see
:mod:`clinic.engines.index` for what runs where)."""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import replace

import ray

from clinic.engines.index import IndexBuild, Space, build_index
from clinic.engines.options import EngineOptions
from clinic.engines.ray_runtime import TASK_RETRIES, ray_connection
from clinic.settings import Settings
from clinic.store.store import Store


def build_in_worker(settings: Settings, space: Space) -> IndexBuild:
    """Open the store in the worker, build one space's index, close it again."""
    store = Store.open(settings, migrate=False)
    try:
        return build_index(store, space, ran_on="ray")
    finally:
        store.close()


def build_on_ray(
    settings: Settings, spaces: Sequence[Space], engine: EngineOptions
) -> list[IndexBuild]:
    """Build the spaces' indexes in parallel Ray tasks; results in the order of ``spaces``.

    The workers get the settings without their secrets: building an index reads vectors, never
    identifiers, so neither the pseudonymisation nor the audit key leaves this process.
    """
    keyless = replace(settings, raw_pseudonym_key=None, raw_audit_key=None)
    with ray_connection(engine):
        remote = ray.remote(num_cpus=1, max_retries=TASK_RETRIES)(build_in_worker)
        return list(ray.get([remote.remote(keyless, space) for space in spaces]))
