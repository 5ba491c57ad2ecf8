"""The case view: decoded content, flags, prediction and explanations, any subset of modalities,
one ``case.view`` audit event per look, and no look for anyone without ``case.view``."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path
from typing import Any

import numpy as np
import pytest
from sqlalchemy import delete, func, select

from clinic.auth.roles import AccessDenied, Principal, Role
from clinic.data.cases import load_cases
from clinic.inference.cohort import CohortScoreRequest, score_cohort
from clinic.inference.service import CaseNotFoundError, PredictRequest, predict
from clinic.ingest.types import STANDARD_LEADS
from clinic.review.case_view import (
    THUMBNAIL_SIDE,
    CaseView,
    case_view,
    ecg_quality,
    similar_cases,
    thumbnail,
)
from clinic.settings import Settings
from clinic.store.models import (
    AuditEvent,
    ClinicalRecord,
    EcgRecord,
    Encounter,
    Patient,
    Report,
    XrayImage,
)
from clinic.store.store import Store
from schemas.modalities import MODALITIES
from schemas.reference_ranges import reference_flag
from tests.modelkit import TINY_COHORT, TINY_MODEL, copy_store

CLINICIAN = Principal("dr-case", Role.CLINICIAN)
RESEARCHER = Principal("researcher-case", Role.RESEARCHER)
FULL = ("xray", "ecg", "record", "report")


@pytest.fixture(scope="module")
def scored(tiny_trained: Settings, tmp_path_factory: pytest.TempPathFactory) -> Settings:
    """The tiny cohort scored, and the first complete case predicted with explanations."""
    settings = copy_store(tiny_trained, tmp_path_factory.mktemp("case-view-scored"))
    store = Store.open(settings)
    request = CohortScoreRequest(TINY_COHORT, TINY_MODEL, batch_size=16, mc_samples=2)
    score_cohort(store, RESEARCHER, request)
    predict(store, CLINICIAN, PredictRequest(full_case(store), TINY_MODEL, mc_samples=2))
    store.close()
    return settings


@pytest.fixture(scope="module")
def shared(scored: Settings) -> Iterator[Store]:
    """For tests that only read (each view appends an audit event, nothing else)."""
    opened = Store.open(scored, migrate=False)
    yield opened
    opened.close()


@pytest.fixture
def private(scored: Settings, tmp_path: Path) -> Iterator[Store]:
    opened = Store.open(copy_store(scored, tmp_path), migrate=False)
    yield opened
    opened.close()


def full_case(store: Store) -> str:
    with store.session() as session:
        cases = load_cases(session, cohort=TINY_COHORT)
    return next(case.case_id for case in cases if case.present == FULL)


def views(store: Store, case_id: str) -> int:
    query = select(func.count(AuditEvent.id)).where(
        AuditEvent.action == "case.view", AuditEvent.resource_id == case_id
    )
    with store.session() as session:
        return int(session.scalar(query) or 0)


def test_a_complete_case_has_every_part_decoded(shared: Store) -> None:
    case_id = full_case(shared)
    view = case_view(shared, CLINICIAN, case_id)
    assert view.case_id == case_id and view.patient_id
    assert view.modalities == FULL
    assert view.xray is not None and view.xray.ndim == 2 and view.xray.dtype == np.float32
    assert float(view.xray.min()) >= 0.0 and float(view.xray.max()) <= 1.0
    assert view.xray_meta["Rows"] == view.xray.shape[0]
    assert view.xray_meta["Columns"] == view.xray.shape[1]
    assert view.ecg is not None and view.ecg.shape[0] == 12 and view.ecg.dtype == np.float32
    assert view.ecg_rate_hz > 0 and set(view.ecg_leads_present) <= set(STANDARD_LEADS)
    assert view.report and view.record
    assert view.labels and {"name", "state", "value", "source"} <= set(view.labels[0])
    assert view.reviews == []


def test_the_latest_prediction_comes_with_its_decoded_explanations(shared: Store) -> None:
    view = case_view(shared, CLINICIAN, full_case(shared))
    assert view.prediction is not None
    assert view.prediction["model"]["name"] == TINY_MODEL
    assert view.prediction["findings"] and view.prediction["lineage_hash"]
    assert set(view.explanations) == set(view.prediction["explanations"]) != set()
    for label, explanation in view.explanations.items():
        assert explanation.label == label
        assert explanation.xray_saliency is not None and explanation.xray_saliency.ndim == 2
        assert explanation.ecg_attribution is not None
        assert explanation.ecg_attribution.shape[0] == 12
        assert explanation.report_tokens


def test_record_values_carry_units_ranges_and_flags(shared: Store) -> None:
    with shared.session() as session:
        case_ids = [c.case_id for c in load_cases(session, cohort=TINY_COHORT) if c.record]
    flagged = 0
    for case_id in case_ids[:6]:
        for value in case_view(shared, CLINICIAN, case_id).record:
            assert value.value is not None
            number = value.value if isinstance(value.value, float | int) else None
            assert value.flag == reference_flag(value.name, number)
            flagged += value.flag is not None
            if value.name == "heart_rate_bpm":
                assert (value.unit, value.low, value.high) == ("bpm", 60.0, 100.0)
            if value.name == "sex":
                assert isinstance(value.value, str) and value.flag is None
    assert flagged > 0  # the phantom has abnormal vitals and labs


def test_each_view_is_audited_once_without_content(shared: Store) -> None:
    case_id = full_case(shared)
    before = views(shared, case_id)
    view = case_view(shared, CLINICIAN, case_id)
    assert views(shared, case_id) == before + 1
    with shared.session() as session:
        event = session.scalars(
            select(AuditEvent).where(AuditEvent.action == "case.view")
            .order_by(AuditEvent.id.desc()).limit(1)
        ).one()  # fmt: skip
    assert (event.actor, event.outcome) == (CLINICIAN.username, "success")
    assert event.details["modalities"] == list(FULL)
    assert view.prediction is not None
    assert event.details["prediction_id"] == view.prediction["prediction_id"]
    assert view.report is not None and view.report[:40] not in str(event.details)


def test_researchers_may_not_see_case_content(shared: Store) -> None:
    case_id = full_case(shared)
    before = views(shared, case_id)
    with pytest.raises(AccessDenied):
        case_view(shared, RESEARCHER, case_id)
    with pytest.raises(AccessDenied):
        similar_cases(shared, RESEARCHER, case_id)
    with shared.session() as session:
        denied = session.scalar(
            select(func.count(AuditEvent.id)).where(
                AuditEvent.actor == RESEARCHER.username, AuditEvent.outcome == "denied"
            )
        )
    assert denied == 2 and views(shared, case_id) == before + 2


def test_an_unknown_case_is_an_error(shared: Store) -> None:
    with pytest.raises(CaseNotFoundError):
        case_view(shared, CLINICIAN, "E-no-such-case")


def test_another_models_view_has_no_prediction(shared: Store) -> None:
    view = case_view(shared, CLINICIAN, full_case(shared), model="no-such-model")
    assert view.prediction is None and view.explanations == {}
    assert view.modalities == FULL


def keep_only(store: Store, case_id: str, keep: tuple[str, ...]) -> None:
    """Delete the case's rows of every modality not in ``keep``."""
    tables: dict[str, Any] = {"xray": XrayImage, "ecg": EcgRecord, "record": ClinicalRecord,
                              "report": Report}  # fmt: skip
    with store.session() as session:
        encounter_id = session.scalar(select(Encounter.id).where(Encounter.pseudonym == case_id))
        for modality, table in tables.items():
            if modality not in keep:
                session.execute(delete(table).where(table.encounter_id == encounter_id))
        session.commit()


@pytest.mark.parametrize("keep", [("report",), ("ecg",), ("xray",), ("record",), ()])
def test_any_subset_of_modalities_views_without_error(
    private: Store, keep: tuple[str, ...]
) -> None:
    case_id = full_case(private)
    keep_only(private, case_id, keep)
    view = case_view(private, CLINICIAN, case_id)
    assert view.modalities == keep
    assert_absent_parts(view, keep)


def assert_absent_parts(view: CaseView, keep: tuple[str, ...]) -> None:
    assert (view.xray is None, view.xray_meta == {}) == ("xray" not in keep,) * 2
    assert (view.ecg is None, view.ecg_rate_hz == 0) == ("ecg" not in keep,) * 2
    assert (view.ecg_leads_present == ()) == ("ecg" not in keep)
    assert view.ecg_quality == {} or "ecg" in keep  # a clean ECG has no flags either
    assert (view.record == []) == ("record" not in keep)
    assert (view.report is None) == ("report" not in keep)


def test_a_case_without_any_prediction_views_without_error(private: Store) -> None:
    with private.session() as session:
        patient = Patient(pseudonym="P-new")
        session.add(patient)
        session.flush()
        session.add(Encounter(pseudonym="E-new", patient_id=patient.id))
        session.commit()
    view = case_view(private, CLINICIAN, "E-new")
    assert (view.modalities, view.prediction, view.labels, view.reviews) == ((), None, [], [])
    assert_absent_parts(view, ())
    assert similar_cases(private, CLINICIAN, "E-new") == []  # nothing the model can read


def test_similar_cases_come_with_previews(shared: Store) -> None:
    case_id = full_case(shared)
    hits = similar_cases(shared, CLINICIAN, case_id, k=4)
    assert 0 < len(hits) <= 4 and case_id not in [hit["case_id"] for hit in hits]
    for hit in hits:
        assert {"case_id", "patient_id", "score", "by_modality", "labels"} <= set(hit)
        if hit["thumbnail"] is not None:
            assert hit["thumbnail"].shape == (THUMBNAIL_SIDE, THUMBNAIL_SIDE)
            assert hit["thumbnail"].dtype == np.uint8
        if hit["ecg_snippet"] is not None:
            assert hit["ecg_snippet"].shape == (round(2.5 * hit["ecg_rate_hz"]),)
    assert any(hit["thumbnail"] is not None for hit in hits)
    with shared.session() as session:
        searches = session.scalar(
            select(func.count(AuditEvent.id)).where(
                AuditEvent.action == "similar.search", AuditEvent.resource_id == case_id
            )
        )
    assert searches and searches >= 1


def test_the_snippet_is_lead_two_of_the_hits_ecg(shared: Store) -> None:
    hits = similar_cases(shared, CLINICIAN, full_case(shared), k=6)
    hit = next(h for h in hits if h["ecg_snippet"] is not None)
    view = case_view(shared, CLINICIAN, hit["case_id"])
    assert view.ecg is not None
    lead = STANDARD_LEADS.index("II")
    expected = view.ecg[lead, : round(2.5 * view.ecg_rate_hz)]
    np.testing.assert_array_equal(hit["ecg_snippet"], expected)


def test_ecg_quality_marks_missing_leads_and_keeps_flags() -> None:
    present = [lead for lead in STANDARD_LEADS if lead not in ("V3", "aVL")]
    quality = ecg_quality({"V1": ["flat"], "V2": [], "record": ["padded"]}, present)
    assert quality == {"V1": ["flat"], "record": ["padded"], "V3": ["missing"],
                       "aVL": ["missing"]}  # fmt: skip


def test_thumbnails_keep_the_aspect_and_pad_with_black() -> None:
    wide = np.ones((50, 200), dtype=np.float32)
    small = thumbnail(wide)
    assert small is not None and small.shape == (THUMBNAIL_SIDE, THUMBNAIL_SIDE)
    assert small[THUMBNAIL_SIDE // 2].min() == 255  # the middle row is image
    assert small[0].max() == 0 and small[-1].max() == 0  # top and bottom are padding
    assert thumbnail(None) is None


def test_modalities_are_in_canonical_order(shared: Store) -> None:
    view = case_view(shared, CLINICIAN, full_case(shared))
    assert list(view.modalities) == [m for m in MODALITIES if m in view.modalities]
