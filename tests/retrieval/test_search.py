"""Similar-case search on a scored tiny cohort: patient → patients, cross-modal, text, filters."""

from __future__ import annotations

import pytest
from sqlalchemy import select

from clinic.auth.roles import Principal, Role
from clinic.data.cases import Case, load_cases
from clinic.inference.cohort import CohortScoreRequest, score_cohort
from clinic.retrieval.filters import parse_filter
from clinic.retrieval.search import RetrievalError, SimilarRequest, similar
from clinic.store.models import AuditEvent
from clinic.store.store import Store
from tests.modelkit import TINY_COHORT, TINY_MODEL

CLINICIAN = Principal("dr-test", Role.CLINICIAN)
RESEARCHER = Principal("researcher-test", Role.RESEARCHER)


@pytest.fixture
def scored(trained_store: Store) -> tuple[Store, list[Case]]:
    score_cohort(
        trained_store,
        RESEARCHER,
        CohortScoreRequest(TINY_COHORT, TINY_MODEL, batch_size=16, mc_samples=2),
    )
    with trained_store.session() as session:
        return trained_store, load_cases(session, cohort=TINY_COHORT)


def richest(cases: list[Case]) -> Case:
    return max(cases, key=lambda case: len(case.present))


def test_patient_to_patients_with_a_per_modality_breakdown(
    scored: tuple[Store, list[Case]],
) -> None:
    store, cases = scored
    query = richest(cases)
    result = similar(store, CLINICIAN, SimilarRequest(TINY_MODEL, case_id=query.case_id, k=5))
    assert result["query"] == query.case_id
    hits = result["hits"]
    assert len(hits) == 5
    assert [h["score"] for h in hits] == sorted((h["score"] for h in hits), reverse=True)
    by_id = {case.case_id: case for case in cases}
    for hit in hits:
        other = by_id[hit["case_id"]]
        assert other.patient_id != query.patient_id  # the query patient's own cases are excluded
        assert set(hit["by_modality"]) == set(query.present) & set(other.present)
        assert all(-1.0 - 1e-6 <= v <= 1.0 + 1e-6 for v in hit["by_modality"].values())
        assert hit["labels"] == sorted(n for n, v in other.labels.items() if v >= 0.5)


def test_the_query_can_use_a_subset_of_its_modalities(scored: tuple[Store, list[Case]]) -> None:
    store, cases = scored
    query = richest(cases)
    one = query.present[0]
    result = similar(
        store, CLINICIAN, SimilarRequest(TINY_MODEL, case_id=query.case_id, k=3, modalities=(one,))
    )
    assert result["modalities"] == [one]
    assert all(set(hit["by_modality"]) <= {one} for hit in result["hits"])


def test_filters_restrict_hits_and_never_starve(scored: tuple[Store, list[Case]]) -> None:
    store, cases = scored
    query = richest(cases)
    with_ecg = [c for c in cases if "ecg" in c.present and c.patient_id != query.patient_id]
    request = SimilarRequest(
        TINY_MODEL, case_id=query.case_id, k=len(with_ecg) + 5, case_filter=parse_filter("has=ecg")
    )
    hits = similar(store, CLINICIAN, request)["hits"]
    assert {h["case_id"] for h in hits} == {c.case_id for c in with_ecg}


def test_cross_modal_xray_to_reports(scored: tuple[Store, list[Case]]) -> None:
    store, cases = scored
    query = next(c for c in cases if "xray" in c.present)
    result = similar(
        store,
        CLINICIAN,
        SimilarRequest(
            TINY_MODEL, case_id=query.case_id, k=3, target="report", modalities=("xray",)
        ),
    )
    assert result["modalities"] == ["xray"] and result["target"] == "report"
    assert result["hits"]
    with_report = {c.case_id for c in cases if "report" in c.present}
    assert {h["case_id"] for h in result["hits"]} <= with_report


def test_free_text_query_finds_cases(scored: tuple[Store, list[Case]]) -> None:
    store, _ = scored
    result = similar(store, RESEARCHER, SimilarRequest(TINY_MODEL, text="pleural effusion", k=4))
    assert len(result["hits"]) == 4
    for hit in result["hits"]:
        assert hit["score"] == pytest.approx(max(hit["by_modality"].values()), abs=1e-5)


def test_every_search_is_audited_and_errors_are_clear(scored: tuple[Store, list[Case]]) -> None:
    store, cases = scored
    similar(store, RESEARCHER, SimilarRequest(TINY_MODEL, case_id=cases[0].case_id, k=2))
    with store.session() as session:
        event = session.scalars(
            select(AuditEvent).where(AuditEvent.action == "similar.search")
        ).one()
    assert event.actor == "researcher-test" and event.resource_id == cases[0].case_id
    assert len(event.details["hits"]) == 2
    with pytest.raises(RetrievalError, match="no case with id"):
        similar(store, CLINICIAN, SimilarRequest(TINY_MODEL, case_id="E-missing"))
    with pytest.raises(RetrievalError, match="either a case id or a text"):
        similar(store, CLINICIAN, SimilarRequest(TINY_MODEL))
