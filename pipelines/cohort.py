"""The cohort-scoring pipeline: score every unscored case of a cohort, as a plain function.

Batch schedulers call this (the CLI's ``clinic cohort score`` is a thin layer over the same
service): scoring is resumable and audited per prediction on either engine, and the principal
defaults to a batch job's system identity.
"""

from __future__ import annotations

from dataclasses import replace

from clinic.auth.roles import Principal, Role
from clinic.engines.options import Engine, engine_options
from clinic.inference.cohort import CohortScoreRequest, CohortScoreSummary, score_cohort
from clinic.settings import Settings
from clinic.store.store import Store

BATCH_PRINCIPAL = Principal("pipeline", Role.SYSTEM)


def run_cohort_scoring(
    settings: Settings,
    cohort: str,
    model: str,
    *,
    engine: Engine | str = Engine.LOCAL,
    address: str | None = None,
    workers: int = 1,
    request: CohortScoreRequest | None = None,
    principal: Principal = BATCH_PRINCIPAL,
) -> CohortScoreSummary:
    """Score ``cohort`` with ``model`` in the store ``settings`` describe.

    ``request`` carries the remaining knobs (batch size, MC samples, adapter, device); its
    cohort, model and engine fields are set from the arguments. ``address`` defaults to
    ``CLINIC_RAY_ADDRESS`` when the engine is Ray.
    """
    settings.check()
    chosen = engine_options(engine, address, workers)
    base = request or CohortScoreRequest(cohort, model)
    scoring = replace(
        base, cohort=cohort, model=model, engine=chosen.engine, address=chosen.address,
        workers=workers if chosen.is_ray else base.workers,
    )  # fmt: skip
    store = Store.open(settings)
    try:
        return score_cohort(store, principal, scoring)
    finally:
        store.close()
