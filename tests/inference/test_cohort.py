"""Cohort scoring: every case once, resumable after a kill, audited; then the cohort report."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pandas as pd
import pytest
from sqlalchemy import func, select

from clinic.audit.chain import AuditKey
from clinic.audit.verify import verify_chain
from clinic.auth.roles import Principal, Role
from clinic.data.cases import load_cases
from clinic.inference import cohort as cohort_module
from clinic.inference.cohort import CohortScoreRequest, score_cohort
from clinic.reports.cohort import CohortReportRequest, NothingScoredError, cohort_report
from clinic.store.models import AuditEvent, CohortRun, Prediction
from clinic.store.store import Store
from tests.modelkit import TINY_COHORT, TINY_MODEL

RESEARCHER = Principal("researcher-test", Role.RESEARCHER)
REQUEST = CohortScoreRequest(TINY_COHORT, TINY_MODEL, batch_size=8, mc_samples=4)


def scalar(store: Store, query: Any) -> int:
    with store.session() as session:
        return int(session.scalar(query) or 0)


def cohort_size(store: Store) -> int:
    with store.session() as session:
        return len(load_cases(session, cohort=TINY_COHORT))


def test_scoring_a_cohort_scores_every_case_once(trained_store: Store) -> None:
    total = cohort_size(trained_store)
    first = score_cohort(trained_store, RESEARCHER, REQUEST)
    assert first.cases == total
    assert first.scored + first.no_usable_input == total and first.already_scored == 0
    second = score_cohort(trained_store, RESEARCHER, REQUEST)
    assert second.scored == 0 and second.already_scored == first.scored

    predictions = scalar(trained_store, select(func.count()).select_from(Prediction))
    assert predictions == first.scored
    created = select(func.count()).where(AuditEvent.action == "prediction.create")
    assert scalar(trained_store, created) == first.scored
    runs = select(func.count()).where(CohortRun.status == "finished")
    assert scalar(trained_store, runs) == 2
    with trained_store.session() as session:
        assert verify_chain(session, AuditKey.from_settings(trained_store.settings)).ok


class SimulatedKillError(Exception):
    pass


def test_a_killed_run_resumes_without_losing_or_duplicating(
    trained_store: Store, monkeypatch: pytest.MonkeyPatch
) -> None:
    real_write = cohort_module._write
    calls = {"n": 0}

    def dies_in_second_batch(*args: Any, **kwargs: Any) -> None:
        calls["n"] += 1
        if calls["n"] == REQUEST.batch_size + 3:
            raise SimulatedKillError
        real_write(*args, **kwargs)

    monkeypatch.setattr(cohort_module, "_write", dies_in_second_batch)
    with pytest.raises(SimulatedKillError):
        score_cohort(trained_store, RESEARCHER, REQUEST)
    kept = scalar(trained_store, select(func.count()).select_from(Prediction))
    assert kept == REQUEST.batch_size  # the first batch committed, the second rolled back whole
    events = select(func.count()).where(AuditEvent.action == "prediction.create")
    assert scalar(trained_store, events) == kept

    monkeypatch.setattr(cohort_module, "_write", real_write)
    resumed = score_cohort(trained_store, RESEARCHER, REQUEST)
    assert resumed.already_scored == kept
    total = scalar(trained_store, select(func.count()).select_from(Prediction))
    assert total == kept + resumed.scored
    assert resumed.scored + kept + resumed.no_usable_input == cohort_size(trained_store)


def test_the_cohort_report_covers_the_scored_cases(trained_store: Store, tmp_path: Path) -> None:
    with pytest.raises(NothingScoredError, match="clinic cohort score"):
        cohort_report(trained_store, RESEARCHER, CohortReportRequest(TINY_COHORT, tmp_path))
    summary = score_cohort(trained_store, RESEARCHER, REQUEST)
    files = cohort_report(trained_store, RESEARCHER, CohortReportRequest(TINY_COHORT, tmp_path))

    frame = pd.read_csv(files.csv)
    assert len(frame) == summary.scored
    assert frame["case_id"].is_unique
    labels = [c[2:] for c in frame.columns if c.startswith("p:")]
    assert labels and all(f"y:{name}" in frame for name in labels)
    html = files.html.read_text()
    assert "<img" in html and "data:image/png;base64," in html and "http://" not in html
    for name in labels:
        assert name in html
    assert pd.read_parquet(files.parquet).shape == frame.shape
    reported = select(func.count()).where(AuditEvent.action == "cohort.report")
    assert scalar(trained_store, reported) == 1
