"""FHIR export of predictions and audit events, validated with fhir.resources' R4B models.

fhir.resources 8 has no R4 package (R5 by default, R4B and STU3 beside it); the resources used
here are structurally identical in R4 and R4B. The models check structure (unknown elements,
types, cardinality) but not invariants such as obs-6 or status codes, so those are asserted
here directly.
"""

from __future__ import annotations

import copy
import json
import uuid
from collections.abc import Iterator
from typing import Any

import pytest
from fhir.resources.R4B.auditevent import AuditEvent
from fhir.resources.R4B.bundle import Bundle

from clinic.reports.fhir import (
    FINDING_SYSTEM,
    LINEAGE_EXTENSION,
    audit_action_code,
    audit_event_resource,
    audit_outcome_code,
    fhir_instant,
    prediction_bundle,
)

VALUE_KEYS = ("valueQuantity", "valueString", "valueCodeableConcept", "valueBoolean")


def _prediction() -> dict[str, Any]:
    return {
        "prediction_id": 12,
        "case_id": "E1a2b3c4",
        "patient_id": "P9f8e7d6",
        "created_at": "2026-11-30T12:00:00.000000Z",
        "model": {"name": "demo", "adapter": "site-a", "version": "a" * 64},
        "subset": "xray+ecg",
        "modalities_used": ["xray", "ecg"],
        "lineage": {
            "weights": "b" * 64,
            "adapter": "c" * 64,
            "preprocess": "d" * 64,
            "calibration": "e" * 64,
            "inputs": {"ecg": "f" * 64, "xray": "0" * 64},
            "code_version": "0.1.0",
        },
        "lineage_hash": "1" * 64,
        "findings": [
            {
                "label": "MI",
                "probability": 0.82,
                "interval": [0.71, 0.9],
                "uncertainty": 0.05,
                "abstained": False,
                "abstain_reason": None,
                "contributions": {"xray": 0.1, "ecg": 0.31},
            },
            {
                "label": "Pleural effusion",
                "probability": 0.12,
                "interval": [0.05, 0.2],
                "uncertainty": 0.04,
                "abstained": False,
                "abstain_reason": None,
                "contributions": {"xray": -0.2},
            },
            {
                "label": "AF",
                "probability": 0.47,
                "interval": [0.2, 0.75],
                "uncertainty": 0.3,
                "abstained": True,
                "abstain_reason": "subset AUROC 0.55 below 0.6",
                "contributions": {"ecg": 0.2},
            },
        ],
        "explanations": {"xray_saliency": "2" * 64, "ecg_attribution": None},
    }


def _resources(bundle: dict[str, Any], kind: str) -> list[dict[str, Any]]:
    return [e["resource"] for e in bundle["entry"] if e["resource"]["resourceType"] == kind]


def _observation(bundle: dict[str, Any], label: str) -> dict[str, Any]:
    (match,) = [o for o in _resources(bundle, "Observation") if o["code"]["text"] == label]
    return match


def _walk(node: object) -> Iterator[tuple[str, object]]:
    """Every (key, value) pair in a JSON tree."""
    if isinstance(node, dict):
        for key, value in node.items():
            yield key, value
            yield from _walk(value)
    elif isinstance(node, list):
        for item in node:
            yield from _walk(item)


def _strings(node: object) -> list[str]:
    if isinstance(node, str):
        return [node]
    if isinstance(node, dict):
        return [s for value in node.values() for s in _strings(value)]
    if isinstance(node, list):
        return [s for item in node for s in _strings(item)]
    return []


def test_bundle_validates_as_r4b_collection() -> None:
    bundle = prediction_bundle(_prediction())
    parsed = Bundle.model_validate(bundle)
    assert parsed.type == "collection"
    kinds = [e["resource"]["resourceType"] for e in bundle["entry"]]
    assert kinds == ["DiagnosticReport", "Observation", "Observation", "Observation", "Device"]
    assert [type(e.resource).__name__ for e in parsed.entry or []] == kinds


def test_resources_are_preliminary_machine_output() -> None:
    bundle = prediction_bundle(_prediction())
    (report,) = _resources(bundle, "DiagnosticReport")
    assert report["status"] == "preliminary"
    assert {o["status"] for o in _resources(bundle, "Observation")} == {"preliminary"}
    assert report["issued"] == report["effectiveDateTime"] == "2026-11-30T12:00:00Z"


def test_every_reference_resolves_within_the_bundle() -> None:
    bundle = prediction_bundle(_prediction())
    full_urls = [entry["fullUrl"] for entry in bundle["entry"]]
    assert len(set(full_urls)) == len(full_urls)
    for entry in bundle["entry"]:
        assert entry["fullUrl"] == f"urn:uuid:{uuid.UUID(entry['resource']['id'])}"
    references = [value for key, value in _walk(bundle) if key == "reference"]
    assert references, "the bundle links its resources"
    assert set(references) <= set(full_urls)
    (report,) = _resources(bundle, "DiagnosticReport")
    observations = _resources(bundle, "Observation")
    assert [r["reference"] for r in report["result"]] == [
        f"urn:uuid:{o['id']}" for o in observations
    ]
    (device,) = _resources(bundle, "Device")
    assert {o["device"]["reference"] for o in observations} == {f"urn:uuid:{device['id']}"}


def test_positive_finding_has_probability_interval_and_interpretation() -> None:
    bundle = prediction_bundle(_prediction())
    mi = _observation(bundle, "MI")
    assert mi["code"]["coding"] == [{"system": FINDING_SYSTEM, "code": "MI"}]
    assert mi["valueQuantity"]["value"] == pytest.approx(0.82)
    assert mi["valueQuantity"]["code"] == "1"
    assert "dataAbsentReason" not in mi
    assert mi["interpretation"][0]["coding"][0]["code"] == "POS"
    by_code = {c["code"]["coding"][0]["code"]: c for c in mi["component"]}
    interval = by_code["probability-interval"]["valueRange"]
    assert (interval["low"]["value"], interval["high"]["value"]) == (0.71, 0.9)
    assert by_code["uncertainty"]["valueQuantity"]["value"] == 0.05
    assert by_code["xray"]["valueQuantity"]["value"] == 0.1
    assert by_code["ecg"]["valueQuantity"]["value"] == 0.31
    effusion = _observation(bundle, "Pleural effusion")
    assert effusion["interpretation"][0]["coding"][0]["code"] == "NEG"
    assert effusion["code"]["coding"][0]["code"] == "Pleural effusion"


def test_abstained_finding_has_data_absent_reason_and_no_value() -> None:
    bundle = prediction_bundle(_prediction())
    af = _observation(bundle, "AF")
    assert not [key for key in af if key.startswith("value")]
    assert "interpretation" not in af
    assert af["dataAbsentReason"]["coding"][0]["code"] == "unknown"
    assert "subset AUROC 0.55 below 0.6" in af["note"][0]["text"]
    codes = [c["code"]["coding"][0]["code"] for c in af.get("component", [])]
    assert codes == ["ecg"], "only contributions remain; the withheld interval does not"
    assert "0.47" not in json.dumps(af), "the probability the model withheld must not leak"


def test_conclusion_lists_positive_findings_and_abstentions() -> None:
    (report,) = _resources(prediction_bundle(_prediction()), "DiagnosticReport")
    conclusion = report["conclusion"]
    assert "MI 0.82" in conclusion
    assert "Pleural effusion" not in conclusion
    assert "Abstained: AF" in conclusion
    assert "not reviewed" in conclusion
    stricter = prediction_bundle(_prediction(), threshold=0.9)
    (strict_report,) = _resources(stricter, "DiagnosticReport")
    assert "MI" not in strict_report["conclusion"].split("Abstained")[0]
    assert _observation(stricter, "MI")["interpretation"][0]["coding"][0]["code"] == "NEG"


def test_lineage_and_model_are_carried() -> None:
    bundle = prediction_bundle(_prediction())
    (report,) = _resources(bundle, "DiagnosticReport")
    (lineage,) = [e for e in report["extension"] if e["url"] == LINEAGE_EXTENSION]
    carried = {e["url"]: e["valueString"] for e in lineage["extension"]}
    assert carried["lineageHash"] == "1" * 64
    assert carried["weights"] == "b" * 64
    assert carried["inputs-xray"] == "0" * 64
    assert carried["inputs-ecg"] == "f" * 64
    (device,) = _resources(bundle, "Device")
    assert device["version"] == [{"value": "a" * 64}]
    assert device["deviceName"][0] == {"name": "demo", "type": "model-name"}


def test_only_pseudonymous_ids_leave() -> None:
    prediction = _prediction()
    prediction |= {
        "patient_name": "Jane Example",
        "birth_date": "1950-02-03",
        "sex": "female",
        "mrn": "MRN-0042",
    }
    bundle = prediction_bundle(prediction)
    text = json.dumps(bundle)
    for leaked in ("Jane Example", "1950-02-03", "female", "MRN-0042"):
        assert leaked not in text
    subjects = [value for key, value in _walk(bundle) if key == "subject"]
    assert len(subjects) == 4  # the report and three observations
    for subject in subjects:
        assert subject == {
            "type": "Patient",
            "identifier": {"system": "urn:clinic:patient-pseudonym", "value": "P9f8e7d6"},
        }
    patient_mentions = [s for s in _strings(bundle) if "P9f8e7d6" in s]
    assert len(patient_mentions) == len(subjects), "the pseudonym appears only as the subject"
    assert not _resources(bundle, "Patient")


def test_export_is_deterministic_and_ids_depend_on_the_prediction() -> None:
    first = json.dumps(prediction_bundle(_prediction()), sort_keys=True)
    second = json.dumps(prediction_bundle(copy.deepcopy(_prediction())), sort_keys=True)
    assert first == second
    other = _prediction() | {"prediction_id": 13}
    other_bundle = prediction_bundle(other)
    first_urls = {e["fullUrl"] for e in json.loads(first)["entry"]}
    other_urls = {e["fullUrl"] for e in other_bundle["entry"]}
    shared = first_urls & other_urls
    (device,) = _resources(other_bundle, "Device")
    assert shared == {f"urn:uuid:{device['id']}"}, "only the model's Device is shared"


def test_timestamps_normalise_to_utc_instants() -> None:
    assert fhir_instant("2026-11-30T13:00:00+01:00") == "2026-11-30T12:00:00Z"
    assert fhir_instant("2026-11-30T12:00:00.250000Z") == "2026-11-30T12:00:00.250000Z"
    assert fhir_instant("2026-11-30T12:00:00") == "2026-11-30T12:00:00Z"
    with pytest.raises(ValueError, match="ISO 8601"):
        fhir_instant("yesterday")


@pytest.mark.parametrize(
    ("change", "message"),
    [
        ({"patient_id": None}, "patient_id"),
        ({"model": {"name": "demo"}}, "model.version"),
        ({"findings": "MI"}, "findings"),
        ({"lineage_hash": ""}, "lineage_hash"),
    ],
)
def test_incomplete_predictions_are_refused(change: dict[str, Any], message: str) -> None:
    with pytest.raises(ValueError, match=message):
        prediction_bundle(_prediction() | change)


def test_findings_must_be_valid() -> None:
    prediction = _prediction()
    prediction["findings"][0]["probability"] = 1.2
    with pytest.raises(ValueError, match=r"\[0, 1\]"):
        prediction_bundle(prediction)
    prediction = _prediction()
    prediction["findings"][1] |= {"probability": None, "abstained": False}
    with pytest.raises(ValueError, match="neither abstained"):
        prediction_bundle(prediction)


def test_abstained_finding_without_probability_or_reason_exports() -> None:
    prediction = _prediction()
    prediction["findings"][2] |= {
        "probability": None,
        "interval": None,
        "uncertainty": None,
        "abstain_reason": None,
        "contributions": None,
    }
    bundle = prediction_bundle(prediction)
    Bundle.model_validate(bundle)
    af = _observation(bundle, "AF")
    assert "no reason given" in af["dataAbsentReason"]["text"]
    assert "component" not in af


def _audit_event(**changes: Any) -> dict[str, Any]:
    event = {
        "id": 41,
        "occurred_at": "2026-11-30T12:00:00.123456+00:00",
        "actor": "alice",
        "role": "clinician",
        "action": "prediction.export",
        "resource_type": "prediction",
        "resource_id": "12",
        "outcome": "success",
        "details": {"format": "fhir", "findings": 3, "labels": ["MI", "AF"]},
        "hash": "9" * 64,
    }
    return event | changes


def test_audit_event_validates_and_carries_the_event() -> None:
    resource = audit_event_resource(_audit_event())
    parsed = AuditEvent.model_validate(resource)
    assert parsed.outcome == "0"
    assert resource["id"] == "41"
    assert resource["action"] == "R"
    assert resource["recorded"] == "2026-11-30T12:00:00.123456Z"
    assert resource["agent"][0]["who"]["identifier"]["value"] == "alice"
    assert resource["agent"][0]["role"][0]["coding"][0]["code"] == "clinician"
    (entity,) = resource["entity"]
    assert entity["what"]["identifier"] == {"system": "urn:clinic:prediction", "value": "12"}
    details = {d["type"]: d["valueString"] for d in entity["detail"]}
    assert details == {"findings": "3", "format": "fhir", "labels": '["MI", "AF"]'}
    assert resource["extension"][0]["valueString"] == "9" * 64
    assert "outcomeDesc" not in resource


@pytest.mark.parametrize(
    ("outcome", "code"),
    [("success", "0"), ("failure", "4"), ("denied", "4"), ("error", "8"), ("interrupted", "8")],
)
def test_audit_outcomes(outcome: str, code: str) -> None:
    assert audit_outcome_code(outcome) == code
    resource = audit_event_resource(_audit_event(outcome=outcome))
    AuditEvent.model_validate(resource)
    assert resource["outcome"] == code
    assert resource.get("outcomeDesc") == (None if code == "0" else outcome)


@pytest.mark.parametrize(
    ("action", "code"),
    [("ingest.batch", "C"), ("user.delete", "D"), ("key.rotate", "U"), ("predict", "E")],
)
def test_audit_actions(action: str, code: str) -> None:
    assert audit_action_code(action) == code


def test_audit_event_without_resource_id_or_details() -> None:
    resource = audit_event_resource(_audit_event(resource_id=None, details=None, hash=None))
    AuditEvent.model_validate(resource)
    assert resource["entity"] == [
        {"type": {"system": "urn:clinic:resource-type", "code": "prediction"}}
    ]
    assert "extension" not in resource
