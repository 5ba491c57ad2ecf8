"""The prediction service on a trained tiny model: findings, lineage, audit, explanations, roles."""

from __future__ import annotations

import json
from typing import Any

import numpy as np
import pytest
from sqlalchemy import func, select

from clinic.audit.chain import AuditKey
from clinic.audit.verify import verify_chain
from clinic.auth.roles import AccessDenied, Principal, Role
from clinic.data.cases import Case, load_cases
from clinic.inference import service
from clinic.inference.service import CaseNotFoundError, PredictRequest, predict
from clinic.reports.export import export_fhir
from clinic.store.blobs import decode_array
from clinic.store.models import AuditEvent, Embedding, Prediction
from clinic.store.store import Store
from tests.modelkit import TINY_COHORT, TINY_MODEL

CLINICIAN = Principal("dr-test", Role.CLINICIAN)
RESEARCHER = Principal("researcher-test", Role.RESEARCHER)


def cases_of(store: Store) -> list[Case]:
    with store.session() as session:
        return load_cases(session, cohort=TINY_COHORT)


def richest(store: Store) -> Case:
    return max(cases_of(store), key=lambda case: len(case.present))


def count(store: Store, model: Any, **where: Any) -> int:
    with store.session() as session:
        query = select(func.count()).select_from(model)
        for name, value in where.items():
            query = query.where(getattr(model, name) == value)
        return int(session.scalar(query) or 0)


def test_a_prediction_has_calibrated_findings_uncertainty_contributions_and_lineage(
    trained_store: Store,
) -> None:
    case = richest(trained_store)
    result = predict(trained_store, CLINICIAN, PredictRequest(case.case_id, TINY_MODEL))

    assert result["case_id"] == case.case_id and result["patient_id"] == case.patient_id
    assert result["modalities_used"] == list(case.present)
    assert result["subset"] == "+".join(case.present)
    assert len(result["findings"]) > 0
    for finding in result["findings"]:
        assert 0.0 <= finding["probability"] <= 1.0
        low, high = finding["interval"]
        assert 0.0 <= low <= high <= 1.0
        assert finding["uncertainty"] >= 0.0
        assert set(finding["contributions"]) == set(case.present)
        assert finding["abstained"] == (finding["abstain_reason"] is not None)
    lineage = result["lineage"]
    assert set(lineage) >= {"weights", "adapter", "preprocess", "calibration", "inputs",
                            "code_version"}  # fmt: skip
    assert set(lineage["inputs"]) == set(case.present)
    if case.xray_blob:
        assert lineage["inputs"]["xray"] == case.xray_blob
    json.dumps(result, allow_nan=False)  # strict JSON


def test_some_uncertainty_comes_from_mc_dropout(trained_store: Store) -> None:
    request = PredictRequest(richest(trained_store).case_id, TINY_MODEL, explain=False)
    result = predict(trained_store, CLINICIAN, request)
    assert any(f["uncertainty"] > 0 for f in result["findings"])


def test_prediction_and_audit_event_are_written_together(trained_store: Store) -> None:
    case = richest(trained_store)
    first = predict(trained_store, CLINICIAN, PredictRequest(case.case_id, TINY_MODEL))
    again = predict(trained_store, CLINICIAN, PredictRequest(case.case_id, TINY_MODEL))

    assert again["prediction_id"] == first["prediction_id"]  # same lineage: same row
    assert count(trained_store, Prediction) == 1
    assert count(trained_store, AuditEvent, action="prediction.create") == 1
    assert count(trained_store, AuditEvent, action="prediction.read") == 1
    with trained_store.session() as session:
        event = session.scalars(
            select(AuditEvent).where(AuditEvent.action == "prediction.create")
        ).one()
        assert event.actor == "dr-test" and event.role == "clinician"
        assert event.resource_id == str(first["prediction_id"])
        assert event.details["lineage_hash"] == first["lineage_hash"]
        assert verify_chain(session, AuditKey.from_settings(trained_store.settings)).ok


def test_a_failing_audit_write_leaves_no_prediction(
    trained_store: Store, monkeypatch: pytest.MonkeyPatch
) -> None:
    def broken(*args: Any, **kwargs: Any) -> None:
        raise RuntimeError("audit store unavailable")

    monkeypatch.setattr(service, "record", broken)
    with pytest.raises(RuntimeError, match="audit store unavailable"):
        request = PredictRequest(richest(trained_store).case_id, TINY_MODEL, explain=False)
        predict(trained_store, CLINICIAN, request)
    assert count(trained_store, Prediction) == 0
    assert count(trained_store, Embedding) == 0


def test_every_subset_of_modalities_is_served(trained_store: Store) -> None:
    by_subset: dict[tuple[str, ...], Case] = {}
    for case in cases_of(trained_store):
        by_subset.setdefault(case.present, case)
    assert len(by_subset) >= 3  # the phantom cohort mixes subsets
    for subset, case in by_subset.items():
        request = PredictRequest(case.case_id, TINY_MODEL, explain=False, mc_samples=4)
        result = predict(trained_store, CLINICIAN, request)
        assert tuple(result["modalities_used"]) == subset


def test_explanations_are_stored_as_blobs_for_clinicians_only(trained_store: Store) -> None:
    case = richest(trained_store)
    result = predict(trained_store, CLINICIAN, PredictRequest(case.case_id, TINY_MODEL))
    explained = result["explanations"]
    assert len(explained) == min(3, len(result["findings"]))
    for label, artifacts in explained.items():
        assert label in {f["label"] for f in result["findings"]}
        if "xray" in case.present:
            saliency = decode_array(trained_store.blobs.get(artifacts["xray_saliency"]))
            assert saliency.ndim == 2 and float(saliency.max()) <= 1.0 + 1e-6
        if "ecg" in case.present:
            attribution = decode_array(trained_store.blobs.get(artifacts["ecg_attribution"]))
            assert attribution.shape[0] == 12
        if "report" in case.present:
            tokens = json.loads(trained_store.blobs.get(artifacts["report_tokens"]))
            assert tokens and all(len(pair) == 2 for pair in tokens)

    other = next(c for c in cases_of(trained_store) if c.case_id != case.case_id)
    pseudonymous = predict(trained_store, RESEARCHER, PredictRequest(other.case_id, TINY_MODEL))
    assert pseudonymous["explanations"] == {}


def test_lineage_changes_when_the_calibration_changes(trained_store: Store) -> None:
    case = richest(trained_store)
    request = PredictRequest(case.case_id, TINY_MODEL, explain=False)
    first = predict(trained_store, CLINICIAN, request)
    path = trained_store.settings.home / "models" / TINY_MODEL / "calibration.json"
    calibration = json.loads(path.read_text())
    calibration["min_auroc"] = 0.99
    path.write_text(json.dumps(calibration))
    second = predict(trained_store, CLINICIAN, request)
    assert second["lineage"]["calibration"] != first["lineage"]["calibration"]
    assert second["lineage_hash"] != first["lineage_hash"]
    assert second["prediction_id"] != first["prediction_id"]
    assert all(f["abstained"] for f in second["findings"])  # nothing reaches AUROC 0.99


def test_unknown_case_and_missing_permission_are_clear_errors(trained_store: Store) -> None:
    with pytest.raises(CaseNotFoundError, match="no case with id 'E-nope'"):
        predict(trained_store, CLINICIAN, PredictRequest("E-nope", TINY_MODEL))
    with pytest.raises(AccessDenied):  # a FHIR document is case content: not for researchers
        export_fhir(trained_store, RESEARCHER, richest(trained_store).case_id)


def test_embeddings_are_stored_per_modality_and_fused(trained_store: Store) -> None:
    case = richest(trained_store)
    predict(trained_store, CLINICIAN, PredictRequest(case.case_id, TINY_MODEL, explain=False))
    with trained_store.session() as session:
        rows = session.execute(select(Embedding.modality, Embedding.vector)).all()
    modalities = {m for m, _ in rows}
    assert modalities == {*case.present, "fused"}
    for _, vector in rows:
        assert np.isclose(np.linalg.norm(vector), 1.0, atol=1e-4)
