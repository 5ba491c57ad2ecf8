"""Operator and researcher views: who may see them, what they show, and which are audited."""

from __future__ import annotations

import json
from collections.abc import Iterator
from pathlib import Path

import pytest
from sqlalchemy import func, select

from clinic.audit.chain import AuditKey, record
from clinic.auth.roles import AccessDenied, Principal, Role
from clinic.inference.cohort import CohortScoreRequest, score_cohort
from clinic.reports.cohort import CohortReportRequest, cohort_report
from clinic.review.admin import (
    audit_log,
    chain_status,
    cohorts_overview,
    ingest_runs,
    model_cards,
    quarantine,
)
from clinic.settings import Settings
from clinic.store.models import AuditEvent, CohortMember, Prediction, QuarantineItem
from clinic.store.store import Store
from tests.audit.helpers import edit
from tests.modelkit import TINY_COHORT, TINY_MODEL, copy_store

ADMIN = Principal("admin-test", Role.ADMIN)
CLINICIAN = Principal("dr-admin-views", Role.CLINICIAN)
RESEARCHER = Principal("researcher-admin-views", Role.RESEARCHER)
SYSTEM = Principal("batch", Role.SYSTEM)


@pytest.fixture(scope="module")
def scored(tiny_trained: Settings, tmp_path_factory: pytest.TempPathFactory) -> Settings:
    """The tiny cohort scored and reported; read-only (tests that write copy it)."""
    folder = tmp_path_factory.mktemp("admin-scored")
    settings = copy_store(tiny_trained, folder)
    store = Store.open(settings)
    request = CohortScoreRequest(TINY_COHORT, TINY_MODEL, batch_size=16, mc_samples=2)
    score_cohort(store, RESEARCHER, request)
    cohort_report(store, RESEARCHER, CohortReportRequest(TINY_COHORT, folder / "report"))
    store.close()
    return settings


@pytest.fixture(scope="module")
def shared(scored: Settings) -> Iterator[Store]:
    opened = Store.open(scored, migrate=False)
    yield opened
    opened.close()


@pytest.fixture
def private(scored: Settings, tmp_path: Path) -> Iterator[Store]:
    opened = Store.open(copy_store(scored, tmp_path), migrate=False)
    yield opened
    opened.close()


def events(store: Store, action: str, outcome: str = "success") -> int:
    query = select(func.count(AuditEvent.id)).where(
        AuditEvent.action == action, AuditEvent.outcome == outcome
    )
    with store.session() as session:
        return int(session.scalar(query) or 0)


def test_operators_see_ingestion_runs(shared: Store) -> None:
    runs = ingest_runs(shared, ADMIN)
    assert runs and runs[0]["status"] == "finished"
    assert {"id", "started_at", "finished_at", "command", "counts", "quarantined"} <= set(runs[0])
    assert [run["id"] for run in runs] == sorted((run["id"] for run in runs), reverse=True)
    assert ingest_runs(shared, SYSTEM, limit=1) == runs[:1]


@pytest.mark.parametrize("who", [CLINICIAN, RESEARCHER])
def test_only_operators_see_ingestion_and_quarantine(shared: Store, who: Principal) -> None:
    before = events(shared, "ingest.runs", "denied")
    with pytest.raises(AccessDenied):
        ingest_runs(shared, who)
    with pytest.raises(AccessDenied):
        quarantine(shared, who)
    assert events(shared, "ingest.runs", "denied") == before + 1


def test_quarantine_lists_refused_inputs_by_reason_and_is_audited(private: Store) -> None:
    with private.session() as session:
        session.add_all([
            QuarantineItem(path="/in/a.dcm", sha256="a" * 64, kind="xray", reason="unreadable",
                           message="not a DICOM file"),
            QuarantineItem(path="/in/b.csv", sha256="b" * 64, kind="record", reason="schema",
                           message="no id column"),
        ])  # fmt: skip
        session.commit()
    everything = quarantine(private, ADMIN)
    assert [item["path"] for item in everything] == ["/in/a.dcm", "/in/b.csv"]
    [only] = quarantine(private, ADMIN, reason="schema")
    assert (only["kind"], only["message"]) == ("record", "no id column")
    assert events(private, "quarantine.view") == 2


def test_the_audit_log_pages_newest_first_and_counts_matches(shared: Store) -> None:
    _, everything = audit_log(shared, ADMIN)
    _, again = audit_log(shared, ADMIN)
    assert again == everything + 1  # reading the log is itself an event
    created = "prediction.create"  # a filter the reads do not add to, so pages stay put
    first, total = audit_log(shared, ADMIN, action=created, page=0, page_size=10)
    second, _ = audit_log(shared, ADMIN, action=created, page=1, page_size=10)
    whole, _ = audit_log(shared, ADMIN, action=created, page_size=20)
    assert total >= 20 and [row["id"] for row in first + second] == [row["id"] for row in whole]
    ids = [row["id"] for row in whole]
    assert ids == sorted(ids, reverse=True) and len(set(ids)) == 20
    assert {"sequence", "occurred_at", "actor", "role", "action", "details"} <= set(first[0])


def test_the_audit_log_searches_actions_actors_and_details(shared: Store) -> None:
    with shared.session() as session:
        prediction = session.scalars(select(Prediction).limit(1)).one()
        case_events = session.scalar(
            select(func.count(AuditEvent.id)).where(
                AuditEvent.resource_type == "prediction",
                AuditEvent.resource_id == str(prediction.id),
            )
        )
    rows, total = audit_log(shared, ADMIN, action="cohort.score")
    assert total == len(rows) >= 1 and {row["action"] for row in rows} == {"cohort.score"}
    rows, total = audit_log(shared, ADMIN, search=RESEARCHER.username.upper())
    assert total == len(rows) > 0
    assert all(RESEARCHER.username in json.dumps(row) for row in rows)
    rows, _ = audit_log(shared, ADMIN, search="prediction.create", page_size=500)
    creations = {row["resource_id"] for row in rows if row["action"] == "prediction.create"}
    assert str(prediction.id) in creations and case_events
    assert audit_log(shared, ADMIN, search="%_%") == ([], 0)  # wildcards are literal


def test_reading_the_audit_log_needs_audit_read(shared: Store) -> None:
    before = events(shared, "audit.read")
    audit_log(shared, ADMIN, search="x")
    assert events(shared, "audit.read") == before + 1
    for who in (CLINICIAN, RESEARCHER):
        with pytest.raises(AccessDenied):
            audit_log(shared, who)
        with pytest.raises(AccessDenied):
            chain_status(shared, who)


def test_the_chain_status_reports_a_verified_chain_and_then_tampering(private: Store) -> None:
    status = chain_status(private, ADMIN)
    assert status["ok"] is True and status["events"] > 10 and status["first_bad"] is None
    with private.session() as session:
        target = session.scalar(select(func.min(AuditEvent.id)))
    assert target is not None
    edit(private, target, actor="someone-else")
    broken = chain_status(private, ADMIN)
    assert broken["ok"] is False and broken["first_bad"] == target
    assert events(private, "audit.verify", "failure") == 1


def test_model_cards_list_every_model_and_flag_unreadable_ones(private: Store) -> None:
    cards = model_cards(private, RESEARCHER)
    [tiny] = [card for card in cards if card["name"] == TINY_MODEL]
    assert tiny["calibration"]["subsets"] and tiny["hashes"]["weights"]
    assert set(tiny["label_names"]) and tiny["modalities"]
    broken = private.settings.home / "models" / "broken"
    broken.mkdir()
    (broken / "card.json").write_text("{not json")
    cards = model_cards(private, CLINICIAN)
    assert [card["name"] for card in cards] == sorted(card["name"] for card in cards)
    [bad] = [card for card in cards if card["name"] == "broken"]
    assert "unreadable" in bad["error"]


def test_cohorts_overview_counts_the_scored_cases_and_finds_the_report(shared: Store) -> None:
    [tiny] = [c for c in cohorts_overview(shared, RESEARCHER) if c["name"] == TINY_COHORT]
    with shared.session() as session:
        members = session.scalar(select(func.count(CohortMember.id)))
        scored = session.scalar(select(func.count(func.distinct(Prediction.encounter_id))))
    assert (tiny["cases"], tiny["scored"]) == (members, scored)
    assert 0 < tiny["scored"] <= tiny["cases"]
    assert tiny["last_run"]["model"] == TINY_MODEL and tiny["last_run"]["status"] == "finished"
    assert tiny["report"] is not None and Path(tiny["report"]).name == "report.html"
    assert Path(tiny["report"]).is_file()
    assert cohorts_overview(shared, CLINICIAN) == cohorts_overview(shared, ADMIN)
    with pytest.raises(AccessDenied):
        cohorts_overview(shared, SYSTEM)


def test_the_audit_search_runs_on_both_backends(store: Store) -> None:
    key = AuditKey.from_settings(store.settings)
    with store.session() as session:
        record(session, key, CLINICIAN, "case.view", "case", "E-one", details={"n": "Pleural 50%"})
        record(session, key, CLINICIAN, "case.view", "case", "E-two", details={"n": "other"})
        session.commit()
    rows, total = audit_log(store, ADMIN, search="pleural 50%")
    assert total == 1 and rows[0]["resource_id"] == "E-one"
    rows, total = audit_log(store, ADMIN, search="e-tw", action="case.view")
    assert total == 1 and rows[0]["details"] == {"n": "other"}
    assert audit_log(store, ADMIN, search="50%%") == ([], 0)
    assert chain_status(store, ADMIN)["ok"] is True
