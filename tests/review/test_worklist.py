"""The worklist against an independent oracle, on both backends, at 2,000 synthetic cases.

The synthetic store (``bench.worklist.populate``) has superseded predictions, a second model,
abstained findings, unscored cases, blank reports, reviews, labels and two cohorts; the oracle
below recomputes filters, counts and order in plain Python from what was written, so ordering,
paging, filters and counts done in SQL are checked against something that cannot share a bug.
"""

from __future__ import annotations

import json
import math
from collections.abc import Iterator
from dataclasses import asdict
from pathlib import Path
from typing import Any

import pytest
import sqlalchemy as sa
from alembic import command
from sqlalchemy import func, select

from bench.worklist import LABELS, MODEL, OLD_MODEL, SyntheticCase, populate
from clinic.auth.roles import Principal, Role
from clinic.inference.cohort import CohortScoreRequest, score_cohort
from clinic.review.worklist import (
    WorklistFilter,
    WorklistPage,
    cohort_names,
    label_names,
    model_names,
    worklist,
)
from clinic.settings import Settings
from clinic.store.db import alembic_config, make_engine
from clinic.store.models import AuditEvent, Prediction
from clinic.store.store import Store
from tests.modelkit import TINY_COHORT, TINY_MODEL, copy_store

CLINICIAN = Principal("dr-worklist", Role.CLINICIAN)
RESEARCHER = Principal("researcher-worklist", Role.RESEARCHER)
N_CASES = 2000


# --------------------------------------------------------------------------- oracle


def called(case: SyntheticCase, model: str) -> list[tuple[float, str]]:
    """(probability, label) of the non-abstained findings of the case's prediction by model."""
    if model == OLD_MODEL:
        return [(0.2, label) for label in LABELS] if case.old_prediction_id else []
    return [(float(f["probability"]), str(f["label"])) for f in case.findings if not f["abstained"]]


def risk(case: SyntheticCase, model: str) -> float | None:
    calls = called(case, model)
    return max(p for p, _ in calls) if calls else None


def flagged(case: SyntheticCase, model: str) -> list[str]:
    calls = sorted(called(case, model), key=lambda c: (-c[0], c[1]))
    return [label for p, label in calls if p >= 0.5]


def keep(case: SyntheticCase, filters: WorklistFilter, model: str) -> bool:
    tests = [
        set(filters.modalities) <= set(case.modalities),
        filters.cohort is None or filters.cohort in case.cohorts,
        filters.reviewed is None or filters.reviewed == case.reviewed,
        filters.label is None or filters.label in case.positive_labels,
        filters.flagged is None
        or (bool(flagged(case, model)) if filters.flagged == "any"
            else filters.flagged in flagged(case, model)),
    ]  # fmt: skip
    return all(tests)


def expected(cases: list[SyntheticCase], filters: WorklistFilter) -> list[SyntheticCase]:
    model = filters.model or MODEL
    kept = [c for c in cases if keep(c, filters, model)]

    def order(case: SyntheticCase) -> tuple[bool, float, str]:
        value = risk(case, model)
        return value is None, -(value or 0.0), case.case_id

    return sorted(kept, key=order)


def expected_counts(cases: list[SyntheticCase], model: str) -> dict[str, int]:
    reviewed = sum(c.reviewed for c in cases)
    return {"cases": len(cases), "flagged": sum(bool(flagged(c, model)) for c in cases),
            "reviewed": reviewed, "unreviewed": len(cases) - reviewed}  # fmt: skip


# --------------------------------------------------------------------------- fixtures


@pytest.fixture
def synthetic(store: Store) -> list[SyntheticCase]:
    with store.session() as session:
        return populate(session, N_CASES, seed=7)


def ids(page: WorklistPage) -> list[str]:
    return [row.case_id for row in page.rows]


FILTERS = [
    WorklistFilter(),
    WorklistFilter(cohort="even"),
    WorklistFilter(modalities=("xray", "report")),
    WorklistFilter(modalities=("report",)),
    WorklistFilter(flagged="any"),
    WorklistFilter(flagged="Edema"),
    WorklistFilter(reviewed=True),
    WorklistFilter(reviewed=False),
    WorklistFilter(label="Edema"),
    WorklistFilter(cohort="even", flagged="Pneumonia", reviewed=False, modalities=("xray",)),
    WorklistFilter(model=OLD_MODEL),
    WorklistFilter(model=OLD_MODEL, flagged="any"),
    WorklistFilter(cohort="no-such-cohort"),
]


# --------------------------------------------------------------------------- tests


def test_every_filter_matches_the_oracle(store: Store, synthetic: list[SyntheticCase]) -> None:
    for filters in FILTERS:
        want = expected(synthetic, filters)
        page = worklist(store, CLINICIAN, filters, page=1, page_size=40)
        assert page.total == len(want), filters
        assert page.counts == expected_counts(want, filters.model or MODEL), filters
        assert ids(page) == [c.case_id for c in want[40:80]], filters
    assert 80 < len(expected(synthetic, FILTERS[-4])) < N_CASES / 4  # combined: selective


def test_pages_cover_the_whole_order_exactly_once(
    store: Store, synthetic: list[SyntheticCase]
) -> None:
    want = [c.case_id for c in expected(synthetic, WorklistFilter())]
    pages = [worklist(store, RESEARCHER, WorklistFilter(), page=p, page_size=450) for p in range(5)]
    assert [len(p.rows) for p in pages] == [450, 450, 450, 450, N_CASES - 4 * 450]
    assert [case for p in pages for case in ids(p)] == want
    beyond = worklist(store, RESEARCHER, WorklistFilter(), page=5, page_size=450)
    assert beyond.rows == [] and beyond.total == N_CASES
    risks = [row.max_risk for p in pages for row in p.rows]
    scored = [r for r in risks if r is not None]
    assert scored == sorted(scored, reverse=True)
    assert risks[len(scored) :] == [None] * (len(risks) - len(scored))  # unscored last


def test_rows_carry_the_latest_prediction_and_the_case_details(
    store: Store, synthetic: list[SyntheticCase]
) -> None:
    by_id = {c.case_id: c for c in synthetic}
    rows = worklist(store, CLINICIAN, WorklistFilter(), page=0, page_size=500).rows
    rows += worklist(store, CLINICIAN, WorklistFilter(), page=3, page_size=500).rows
    superseded = [row for row in rows if int(row.case_id[1:]) % 7 == 0 and row.prediction_id]
    assert superseded  # the latest prediction, not the superseded one at 0.999, is shown
    for row in rows:
        case = by_id[row.case_id]
        assert row.prediction_id == case.prediction_id
        want = risk(case, MODEL)
        assert row.max_risk == (None if want is None else pytest.approx(want))
        assert row.flagged == tuple(flagged(case, MODEL))
        calls = sorted(called(case, MODEL), key=lambda c: (-c[0], c[1]))
        assert row.top_finding == (calls[0][1] if calls else None)
        assert (row.patient_id, row.modalities) == (case.patient_id, case.modalities)
        assert (row.reviewed, row.cohorts) == (case.reviewed, case.cohorts)


def test_the_default_model_is_the_newest_one_with_predictions(
    store: Store, synthetic: list[SyntheticCase]
) -> None:
    assert model_names(store) == [MODEL, OLD_MODEL]
    old = worklist(store, CLINICIAN, WorklistFilter(model=OLD_MODEL))
    assert old.rows[0].max_risk == pytest.approx(0.2) and old.counts["flagged"] == 0
    assert cohort_names(store) == ["all", "even"]
    assert label_names(store) == ["Edema"]


def test_each_view_is_one_audit_event_with_the_filter_and_counts_only(store: Store) -> None:
    with store.session() as session:
        populate(session, 30)
    filters = WorklistFilter(cohort="even", modalities=("xray",), flagged="any")
    page = worklist(store, CLINICIAN, filters, page=0, page_size=5)
    with store.session() as session:
        events = session.scalars(
            select(AuditEvent).where(AuditEvent.action == "worklist.view")
        ).all()
    assert len(events) == 1
    event = events[0]
    assert (event.actor, event.outcome, event.resource_type) == (CLINICIAN.username, "success",
                                                                 "worklist")  # fmt: skip
    assert event.details["filter"] == {**asdict(filters), "modalities": ["xray"]}
    assert event.details["counts"] == page.counts and event.details["model"] == MODEL
    text = str(event.details)
    assert not any(row.case_id in text or row.patient_id in text for row in page.rows)


def test_an_empty_store_gives_an_empty_worklist(store: Store) -> None:
    page = worklist(store, CLINICIAN, WorklistFilter(flagged="Edema"))
    assert page.rows == [] and page.total == 0
    assert page.counts == {"cases": 0, "flagged": 0, "reviewed": 0, "unreviewed": 0}
    assert model_names(store) == [] and label_names(store) == []


@pytest.mark.parametrize(
    ("filters", "page", "page_size"),
    [(WorklistFilter(modalities=("mri",)), 0, 50), (WorklistFilter(), -1, 50),
     (WorklistFilter(), 0, 0)],
)  # fmt: skip
def test_invalid_requests_are_refused(
    store: Store, filters: WorklistFilter, page: int, page_size: int
) -> None:
    with pytest.raises(ValueError):
        worklist(store, CLINICIAN, filters, page=page, page_size=page_size)


# --------------------------------------------------------------------------- real predictions


@pytest.fixture(scope="module")
def scored(tiny_trained: Settings, tmp_path_factory: pytest.TempPathFactory) -> Iterator[Store]:
    opened = Store.open(copy_store(tiny_trained, tmp_path_factory.mktemp("worklist-scored")))
    request = CohortScoreRequest(TINY_COHORT, TINY_MODEL, batch_size=16, mc_samples=2)
    score_cohort(opened, RESEARCHER, request)
    yield opened
    opened.close()


def test_scoring_stores_the_worklist_columns_from_the_findings(scored: Store) -> None:
    with scored.session() as session:
        predictions = session.scalars(select(Prediction)).all()
    assert predictions
    for prediction in predictions:
        calls = [f["probability"] for f in prediction.findings if not f["abstained"]]
        assert prediction.max_risk == (max(calls) if calls else None)
        over = [f for f in prediction.findings if not f["abstained"] and f["probability"] >= 0.5]
        assert sorted(prediction.flagged) == sorted(f["label"] for f in over)
    page = worklist(scored, CLINICIAN, WorklistFilter(cohort=TINY_COHORT), page_size=100)
    by_id = {p.id: p for p in predictions}
    shown = [row for row in page.rows if row.prediction_id is not None]
    assert len(shown) == len({p.encounter_id for p in predictions})
    for row in shown:
        assert row.max_risk == by_id[row.prediction_id or 0].max_risk
        assert row.flagged == tuple(by_id[row.prediction_id or 0].flagged)
    risks = [row.max_risk for row in shown if row.max_risk is not None]
    assert risks == sorted(risks, reverse=True)


# --------------------------------------------------------------------------- migration 0003


def _predictions_table() -> sa.TableClause:
    return sa.table("predictions", *(sa.column(name) for name in ("id", "max_risk")),
                    sa.column("flagged", sa.JSON()), sa.column("findings", sa.JSON()))  # fmt: skip


def _insert_legacy_predictions(url: str) -> None:
    """Rows as migration 0002 left them: findings only."""
    findings = [
        [{"label": "A", "probability": 0.7, "abstained": False},
         {"label": "B", "probability": 0.9, "abstained": True},
         {"label": "C", "probability": 0.55, "abstained": False}],
        [{"label": "A", "probability": 0.3, "abstained": True}],
        [{"label": "A", "probability": 0.1, "abstained": False}],
    ]  # fmt: skip
    engine = make_engine(url)
    with engine.begin() as connection:
        connection.execute(sa.text("INSERT INTO patients (id, pseudonym) VALUES (1, 'P1')"))
        connection.execute(sa.text(
            "INSERT INTO encounters (id, pseudonym, patient_id) VALUES (1, 'E1', 1)"
        ))  # fmt: skip
        table = sa.table("predictions", *(sa.column(name) for name in (
            "id", "encounter_id", "model_name", "model_key", "lineage_hash", "subset",
            "created_by")), *(sa.column(name, sa.JSON()) for name in (
            "lineage", "findings", "explanations")))  # fmt: skip
        connection.execute(table.insert(), [
            {"id": i + 1, "encounter_id": 1, "model_name": "m", "model_key": "k",
             "lineage_hash": f"h{i}", "subset": "xray", "created_by": "t", "lineage": {},
             "findings": found, "explanations": {}} for i, found in enumerate(findings)
        ])  # fmt: skip
    engine.dispose()


def _stored(url: str) -> dict[int, tuple[Any, Any]]:
    engine = make_engine(url)
    table = _predictions_table()
    with engine.connect() as connection:
        rows = connection.execute(sa.select(table.c.id, table.c.max_risk, table.c.flagged)).all()
    engine.dispose()
    return {int(row[0]): (row[1], row[2]) for row in rows}


def test_migration_0003_backfills_existing_predictions(database_url: str) -> None:
    config = alembic_config(database_url)
    command.upgrade(config, "0002")
    _insert_legacy_predictions(database_url)
    command.upgrade(config, "head")
    stored = _stored(database_url)
    assert stored[1] == (pytest.approx(0.7), ["A", "C"])
    assert stored[2] == (None, [])
    assert stored[3] == (pytest.approx(0.1), [])
    command.downgrade(config, "0002")  # the rows survive the way down and up again
    command.upgrade(config, "head")
    assert _stored(database_url)[1] == (pytest.approx(0.7), ["A", "C"])
    engine = make_engine(database_url)
    with engine.connect() as connection:
        assert connection.scalar(select(func.count()).select_from(sa.table("reviews"))) == 0
    engine.dispose()


def test_the_backfill_rule_matches_the_scoring_rule() -> None:
    """The migration's frozen copy and ``risk_summary`` agree on awkward findings."""
    import importlib.util

    from clinic.inference.records import risk_summary
    from clinic.inference.scoring import Finding

    path = Path(__file__).resolve().parents[2] / "migrations/versions/0003_reviews_worklist.py"
    spec = importlib.util.spec_from_file_location("migration_0003", path)
    assert spec is not None and spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    cases = [[("B", 0.5, False), ("A", 0.5, False), ("C", 0.49, False)],
             [("A", math.nan, False), ("B", 0.2, False)], [("A", 0.99, True)], []]  # fmt: skip
    for findings in cases:
        objects = [Finding(label, p, (0.0, 1.0), 0.0, a, None, {}) for label, p, a in findings]
        assert module._summary([f.to_json() for f in objects]) == risk_summary(objects)


def test_the_benchmark_reports_latency_per_size_and_the_ratio(
    capsys: pytest.CaptureFixture[str],
) -> None:
    from bench import worklist as bench

    summary = bench.main(["--sizes", "40,80", "--repeats", "2", "--json"])
    assert json.loads(capsys.readouterr().out) == summary
    assert [size["n"] for size in summary["sizes"]] == [40, 80]
    for size in summary["sizes"]:
        assert set(size["pages"]) == set(bench.FILTERS)
        for timing in size["pages"].values():
            assert timing["p95_ms"] >= timing["median_ms"] > 0
    assert set(summary["ratio"]) == set(bench.FILTERS)
