"""The batch pipelines take ``engine=``: ingestion on Ray, cohort scoring on either engine."""

from __future__ import annotations

from pathlib import Path

from clinic.engines.options import EngineOptions
from clinic.settings import Settings
from clinic.store.store import Store
from pipelines.cohort import run_cohort_scoring
from pipelines.ingest import run_ingestion
from tests.conftest import make_settings
from tests.engines.helpers import phantom_with_bad_inputs
from tests.modelkit import TINY_COHORT, TINY_MODEL


def test_run_ingestion_on_ray(ray_local: EngineOptions, tmp_path: Path) -> None:
    paths = phantom_with_bad_inputs(tmp_path / "inputs", patients=2)
    settings = make_settings(tmp_path / "home", f"sqlite:///{tmp_path / 'home' / 'clinic.db'}")
    first = run_ingestion(settings, paths, engine="ray")
    assert first.ingested > 0 and first.quarantined == 3
    again = run_ingestion(settings, paths, engine="local")
    assert again.already_stored == first.ingested and again.quarantined == 3


def test_run_cohort_scoring_scores_then_resumes(trained_store: Store) -> None:
    settings: Settings = trained_store.settings
    first = run_cohort_scoring(settings, TINY_COHORT, TINY_MODEL, engine="local")
    assert first.scored > 0 and first.already_scored == 0
    again = run_cohort_scoring(settings, TINY_COHORT, TINY_MODEL)
    assert again.scored == 0 and again.already_scored == first.scored
