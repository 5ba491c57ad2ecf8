"""FHIR R4 export: one prediction as a Bundle, one audit event as an AuditEvent.

Clinicians' systems speak FHIR R4 (4.0.1). A prediction becomes a ``collection`` Bundle of one
DiagnosticReport (the case), one Observation per finding and one Device (the model), linked by
``urn:uuid:`` fullUrls. Choices that matter to a receiver:

* Status is ``preliminary`` everywhere: this is machine output nobody has reviewed yet.
* Privacy by allowlist: only named fields of the prediction are read, and the only ids that
  leave are pseudonymous ones (patient pseudonym, case id, prediction id). The subject is a
  *logical* reference (``Reference.identifier``) to the patient pseudonym; no Patient resource,
  name, birth date or sex is ever emitted, whatever else the input dict carries.
* Abstention is data absence: an abstained finding has no ``value[x]``, no interpretation and
  no interval (they would leak the number the model declined to stand behind), but a
  ``dataAbsentReason`` and a note with the reason. Per-modality contributions stay, as
  components, since they say which inputs were looked at, not what was concluded.
* Re-exports are byte-identical: every id is a uuid5 of the prediction id and lineage hash under
  a fixed namespace (the Device's of the model name, adapter and version, so one model is one
  Device across bundles), and no clock is read.
* Lineage (weights, adapter, preprocessing, calibration, input hashes, code version and the
  lineage hash) travels in a complex extension on the DiagnosticReport, so any receiver can
  trace the report to the exact model and inputs.

Validation: fhir.resources 8 (what is installed) ships R5 by default plus R4B and STU3, but no
R4 package; its last R4 release (6.x) needs pydantic 1, and the HL7 reference validator is a
Java tool that needs the network for its packages. The tests therefore validate with
``fhir.resources.R4B``. Everything emitted here (Bundle, DiagnosticReport, Observation, Device,
AuditEvent, and the datatypes they use) is structurally the same in R4 and R4B: R4B's changes
are new resources and medication-definition / subscription work, not these.
"""

from __future__ import annotations

import json
import math
import re
import uuid
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import Any, Final

from schemas.modalities import MODALITIES

Resource = dict[str, Any]

POSITIVE_THRESHOLD: Final = 0.5

# Fixed forever: changing it changes every id ever exported.
_NAMESPACE: Final = uuid.UUID("5b0d7c1e-3f7a-4d2b-9c61-8e4f2a9d0c37")

UCUM: Final = "http://unitsofmeasure.org"
FINDING_SYSTEM: Final = "urn:clinic:finding"
COMPONENT_SYSTEM: Final = "urn:clinic:finding-component"
CONTRIBUTION_SYSTEM: Final = "urn:clinic:modality-contribution"
REPORT_CODE_SYSTEM: Final = "urn:clinic:report"
PATIENT_SYSTEM: Final = "urn:clinic:patient-pseudonym"
CASE_SYSTEM: Final = "urn:clinic:case"
PREDICTION_SYSTEM: Final = "urn:clinic:prediction"
MODEL_SYSTEM: Final = "urn:clinic:model-version"
LINEAGE_EXTENSION: Final = "urn:clinic:fhir:extension:prediction-lineage"
CASE_EXTENSION: Final = "urn:clinic:fhir:extension:case"
SUBSET_EXTENSION: Final = "urn:clinic:fhir:extension:modality-subset"
EXPLANATIONS_EXTENSION: Final = "urn:clinic:fhir:extension:explanations"
CHAIN_HASH_EXTENSION: Final = "urn:clinic:fhir:extension:audit-chain-hash"
INTERPRETATION_SYSTEM: Final = "http://terminology.hl7.org/CodeSystem/v3-ObservationInterpretation"
DATA_ABSENT_SYSTEM: Final = "http://terminology.hl7.org/CodeSystem/data-absent-reason"


# --------------------------------------------------------------------------- input


@dataclass(frozen=True)
class _Finding:
    label: str
    probability: float | None
    interval: tuple[float, float] | None
    uncertainty: float | None
    abstained: bool
    abstain_reason: str | None
    contributions: tuple[tuple[str, float], ...]  # canonical modality order


@dataclass(frozen=True)
class _Prediction:
    """The allowlisted part of a prediction dict, checked and normalised."""

    prediction_id: str
    case_id: str
    patient_id: str
    created_at: str  # FHIR instant
    model_name: str
    model_adapter: str | None
    model_version: str
    subset: str | None
    lineage: tuple[tuple[str, str], ...]
    lineage_hash: str
    explanations: tuple[tuple[str, str], ...]
    findings: tuple[_Finding, ...]


def _text(value: object, what: str) -> str:
    """A required non-empty string (FHIR strings cannot be empty)."""
    if isinstance(value, bool) or not isinstance(value, str | int) or not str(value).strip():
        raise ValueError(f"{what} must be a non-empty string, got {value!r}")
    return str(value).strip()


def _optional_text(value: object, what: str) -> str | None:
    return None if value is None or value == "" else _text(value, what)


def _number(value: object, what: str) -> float:
    if isinstance(value, bool) or not isinstance(value, int | float) or not math.isfinite(value):
        raise ValueError(f"{what} must be a finite number, got {value!r}")
    return float(value)


def _optional_number(value: object, what: str) -> float | None:
    return None if value is None else _number(value, what)


def fhir_instant(value: object) -> str:
    """An ISO timestamp (str or datetime) as a FHIR instant in UTC.

    A naive timestamp is taken as UTC: the platform records UTC, and SQLite drops the offset.
    """
    if isinstance(value, datetime):
        moment = value
    elif isinstance(value, str):
        try:
            moment = datetime.fromisoformat(value)
        except ValueError as error:
            raise ValueError(f"not an ISO 8601 timestamp: {value!r}") from error
    else:
        raise ValueError(f"a timestamp must be a string or datetime, got {value!r}")
    if moment.tzinfo is None:
        moment = moment.replace(tzinfo=UTC)
    return moment.astimezone(UTC).isoformat().replace("+00:00", "Z")


def _modality_order(name: str) -> tuple[int, str]:
    return (MODALITIES.index(name), name) if name in MODALITIES else (len(MODALITIES), name)


def _parse_finding(raw: Mapping[str, Any], index: int) -> _Finding:
    where = f"findings[{index}]"
    probability = _optional_number(raw.get("probability"), f"{where}.probability")
    if probability is not None and not 0.0 <= probability <= 1.0:
        raise ValueError(f"{where}.probability must lie in [0, 1], got {probability}")
    interval_raw = raw.get("interval")
    interval = None
    if interval_raw is not None:
        if not isinstance(interval_raw, Sequence) or len(interval_raw) != 2:
            raise ValueError(f"{where}.interval must be [low, high], got {interval_raw!r}")
        low, high = (_number(bound, f"{where}.interval") for bound in interval_raw)
        interval = (low, high)
    abstained = bool(raw.get("abstained", False))
    if not abstained and probability is None:
        raise ValueError(f"{where} is neither abstained nor has a probability")
    contributions = raw.get("contributions") or {}
    return _Finding(
        label=_text(raw.get("label"), f"{where}.label"),
        probability=probability,
        interval=interval,
        uncertainty=_optional_number(raw.get("uncertainty"), f"{where}.uncertainty"),
        abstained=abstained,
        abstain_reason=_optional_text(raw.get("abstain_reason"), f"{where}.abstain_reason"),
        contributions=tuple(
            (str(modality), _number(weight, f"{where}.contributions.{modality}"))
            for modality, weight in sorted(
                contributions.items(), key=lambda i: _modality_order(i[0])
            )
        ),
    )


def _lineage_entries(lineage: Mapping[str, Any]) -> tuple[tuple[str, str], ...]:
    """Non-null lineage fields as (name, value); input hashes as ``input-<modality>``."""
    entries: list[tuple[str, str]] = []
    for key, value in lineage.items():
        if isinstance(value, Mapping):
            ordered = sorted(value.items(), key=lambda item: _modality_order(str(item[0])))
            entries += [(f"{key}-{name}", str(v)) for name, v in ordered if v is not None]
        elif value is not None and str(value):
            entries.append((str(key), str(value)))
    return tuple(entries)


def _parse_prediction(prediction: Mapping[str, Any]) -> _Prediction:
    model = prediction.get("model")
    if not isinstance(model, Mapping):
        raise ValueError("prediction.model must be a mapping with name and version")
    findings = prediction.get("findings")
    if not isinstance(findings, Sequence) or isinstance(findings, str):
        raise ValueError("prediction.findings must be a list")
    explanations = prediction.get("explanations") or {}
    return _Prediction(
        prediction_id=_text(prediction.get("prediction_id"), "prediction_id"),
        case_id=_text(prediction.get("case_id"), "case_id"),
        patient_id=_text(prediction.get("patient_id"), "patient_id"),
        created_at=fhir_instant(prediction.get("created_at")),
        model_name=_text(model.get("name"), "model.name"),
        model_adapter=_optional_text(model.get("adapter"), "model.adapter"),
        model_version=_text(model.get("version"), "model.version"),
        subset=_optional_text(prediction.get("subset"), "subset"),
        lineage=_lineage_entries(prediction.get("lineage") or {}),
        lineage_hash=_text(prediction.get("lineage_hash"), "lineage_hash"),
        explanations=tuple(
            (str(key), str(value)) for key, value in explanations.items() if value is not None
        ),
        findings=tuple(_parse_finding(raw, i) for i, raw in enumerate(findings)),
    )


# --------------------------------------------------------------------------- building blocks


def _uuid(*parts: str) -> str:
    return str(uuid.uuid5(_NAMESPACE, "|".join(parts)))


def _full_url(resource: Resource) -> str:
    return f"urn:uuid:{resource['id']}"


def _reference(resource: Resource) -> dict[str, str]:
    return {"reference": _full_url(resource)}


def _coding(system: str, code: str, display: str | None = None) -> dict[str, str]:
    coding = {"system": system, "code": " ".join(code.split())}
    if display:
        coding["display"] = display
    return coding


def _concept(system: str, code: str, text: str | None = None) -> dict[str, Any]:
    concept: dict[str, Any] = {"coding": [_coding(system, code)]}
    if text:
        concept["text"] = text
    return concept


def _fraction(value: float) -> dict[str, Any]:
    """A dimensionless Quantity (UCUM "1"): probabilities are fractions, not percentages."""
    return {"value": value, "unit": "1", "system": UCUM, "code": "1"}


def _patient(prediction: _Prediction) -> dict[str, Any]:
    """Logical reference by pseudonym only: no Patient resource, no display text."""
    return {
        "type": "Patient",
        "identifier": {"system": PATIENT_SYSTEM, "value": prediction.patient_id},
    }


def _uri_part(name: str) -> str:
    """A data-derived name made safe inside a URI (sub-extension url, identifier system)."""
    return re.sub(r"[^A-Za-z0-9._-]+", "-", name).strip("-") or "unnamed"


def _string_extensions(entries: Sequence[tuple[str, str]]) -> list[dict[str, str]]:
    return [{"url": _uri_part(name), "valueString": value} for name, value in entries if value]


# --------------------------------------------------------------------------- resources


def _device(prediction: _Prediction) -> Resource:
    names = [{"name": prediction.model_name, "type": "model-name"}]
    if prediction.model_adapter:
        names.append({"name": f"adapter {prediction.model_adapter}", "type": "other"})
    key = (prediction.model_name, prediction.model_adapter or "", prediction.model_version)
    return {
        "resourceType": "Device",
        "id": _uuid("device", *key),
        "identifier": [{"system": MODEL_SYSTEM, "value": prediction.model_version}],
        "deviceName": names,
        "type": {"text": "multimodal diagnostic model (software)"},
        "version": [{"value": prediction.model_version}],
    }


def _value_components(finding: _Finding) -> list[dict[str, Any]]:
    """Interval and uncertainty of the probability; none for an abstained finding."""
    if finding.abstained:
        return []
    components: list[dict[str, Any]] = []
    if finding.interval is not None:
        low, high = finding.interval
        components.append(
            {
                "code": _concept(COMPONENT_SYSTEM, "probability-interval", "uncertainty interval"),
                "valueRange": {"low": _fraction(low), "high": _fraction(high)},
            }
        )
    if finding.uncertainty is not None:
        components.append(
            {
                "code": _concept(COMPONENT_SYSTEM, "uncertainty", "uncertainty"),
                "valueQuantity": _fraction(finding.uncertainty),
            }
        )
    return components


def _contribution_components(finding: _Finding) -> list[dict[str, Any]]:
    return [
        {
            "code": _concept(CONTRIBUTION_SYSTEM, modality, f"contribution of {modality}"),
            "valueQuantity": {"value": weight},
        }
        for modality, weight in finding.contributions
    ]


def _interpretation(probability: float, threshold: float) -> list[dict[str, Any]]:
    code, display = ("POS", "Positive") if probability >= threshold else ("NEG", "Negative")
    return [{"coding": [_coding(INTERPRETATION_SYSTEM, code, display)]}]


def _abstention(finding: _Finding) -> dict[str, Any]:
    reason = finding.abstain_reason or "no reason given"
    return {
        "dataAbsentReason": {
            "coding": [_coding(DATA_ABSENT_SYSTEM, "unknown", "Unknown")],
            "text": f"model abstained: {reason}",
        },
        "note": [{"text": f"The model abstained on this finding: {reason}"}],
    }


def _observation(
    prediction: _Prediction, finding: _Finding, index: int, device: Resource, threshold: float
) -> Resource:
    observation: Resource = {
        "resourceType": "Observation",
        "id": _uuid("observation", prediction.prediction_id, prediction.lineage_hash, str(index)),
        "status": "preliminary",
        "code": _concept(FINDING_SYSTEM, finding.label, finding.label),
        "subject": _patient(prediction),
        "effectiveDateTime": prediction.created_at,
        "issued": prediction.created_at,
        "device": _reference(device),
    }
    probability = finding.probability  # never None unless abstained (see _parse_finding)
    if finding.abstained or probability is None:
        observation |= _abstention(finding)
    else:
        observation["valueQuantity"] = _fraction(probability)
        observation["interpretation"] = _interpretation(probability, threshold)
    components = _value_components(finding) + _contribution_components(finding)
    if components:
        observation["component"] = components
    return observation


def _finding_summary(finding: _Finding, probability: float) -> str:
    text = f"{finding.label} {probability:.2f}"
    if finding.interval is not None:
        text += f" ({finding.interval[0]:.2f}–{finding.interval[1]:.2f})"
    return text


def _conclusion(prediction: _Prediction, threshold: float) -> str:
    """Plain-text summary: positive findings first, then abstentions, marked unreviewed."""
    positive = [
        (f, f.probability)
        for f in prediction.findings
        if not f.abstained and f.probability is not None and f.probability >= threshold
    ]
    abstained = [f for f in prediction.findings if f.abstained]
    parts = [f"Machine-generated, not reviewed (model {prediction.model_name})."]
    if positive:
        listed = "; ".join(_finding_summary(f, p) for f, p in positive)
        parts.append(f"Findings at or above probability {threshold:.2f}: {listed}.")
    else:
        parts.append(f"No finding at or above probability {threshold:.2f}.")
    if abstained:
        parts.append("Abstained: " + ", ".join(f.label for f in abstained) + ".")
    return " ".join(parts)


def _report_extensions(prediction: _Prediction) -> list[dict[str, Any]]:
    lineage = [("lineageHash", prediction.lineage_hash), *prediction.lineage]
    extensions: list[dict[str, Any]] = [
        {
            "url": CASE_EXTENSION,
            "valueIdentifier": {"system": CASE_SYSTEM, "value": prediction.case_id},
        },
        {"url": LINEAGE_EXTENSION, "extension": _string_extensions(lineage)},
    ]
    if prediction.subset:
        extensions.append({"url": SUBSET_EXTENSION, "valueString": prediction.subset})
    if prediction.explanations:
        extensions.append(
            {
                "url": EXPLANATIONS_EXTENSION,
                "extension": _string_extensions(prediction.explanations),
            }
        )
    return extensions


def _diagnostic_report(
    prediction: _Prediction, observations: Sequence[Resource], threshold: float
) -> Resource:
    return {
        "resourceType": "DiagnosticReport",
        "id": _uuid("report", prediction.prediction_id, prediction.lineage_hash),
        "extension": _report_extensions(prediction),
        "identifier": [{"system": PREDICTION_SYSTEM, "value": prediction.prediction_id}],
        "status": "preliminary",
        "code": _concept(
            REPORT_CODE_SYSTEM, "multimodal-prediction", "Multimodal model prediction"
        ),
        "subject": _patient(prediction),
        "effectiveDateTime": prediction.created_at,
        "issued": prediction.created_at,
        "result": [_reference(observation) for observation in observations],
        "conclusion": _conclusion(prediction, threshold),
    }


def prediction_bundle(
    prediction: Mapping[str, Any], *, threshold: float = POSITIVE_THRESHOLD
) -> dict[str, Any]:
    """A FHIR R4 ``collection`` Bundle for one prediction, as a JSON-able dict.

    Entries: the DiagnosticReport, its Observations (one per finding, in input order) and the
    model's Device. ``threshold`` splits POS from NEG interpretations and picks the findings the
    conclusion lists. Raises ``ValueError`` on a prediction that lacks a required field.
    """
    parsed = _parse_prediction(prediction)
    device = _device(parsed)
    observations = [
        _observation(parsed, finding, index, device, threshold)
        for index, finding in enumerate(parsed.findings)
    ]
    report = _diagnostic_report(parsed, observations, threshold)
    return {
        "resourceType": "Bundle",
        "id": _uuid("bundle", parsed.prediction_id, parsed.lineage_hash),
        "identifier": {"system": PREDICTION_SYSTEM, "value": parsed.prediction_id},
        "type": "collection",
        "timestamp": parsed.created_at,
        "entry": [
            {"fullUrl": _full_url(resource), "resource": resource}
            for resource in (report, *observations, device)
        ],
    }


# --------------------------------------------------------------------------- audit events

_OUTCOMES: Final[Mapping[str, str]] = {
    "success": "0",
    "failure": "4",
    "failed": "4",
    "denied": "4",
    "refused": "4",
    "rejected": "4",
    "error": "8",
    "serious_failure": "8",
    "major_failure": "12",
}
_ACTION_VERBS: Final[Mapping[str, str]] = {
    **dict.fromkeys(("create", "ingest", "import", "register", "add", "insert"), "C"),
    **dict.fromkeys(("read", "view", "get", "search", "query", "list", "export", "download"), "R"),
    **dict.fromkeys(("update", "edit", "modify", "change", "rotate", "set"), "U"),
    **dict.fromkeys(("delete", "remove", "purge", "erase"), "D"),
}


def audit_outcome_code(outcome: str) -> str:
    """FHIR AuditEvent outcome: "0" success, "4" minor failure, "8" serious, "12" major.

    An outcome string this map does not know is reported as "8": an audit trail must not
    understate a failure. FHIR codes themselves pass through.
    """
    if outcome in {"0", "4", "8", "12"}:
        return outcome
    return _OUTCOMES.get(outcome.strip().lower(), "8")


def audit_action_code(action: str) -> str:
    """C/R/U/D from the first verb in a dotted action name ("ingest.batch" → C), else E."""
    for token in re.split(r"[^a-z]+", action.lower()):
        if token in _ACTION_VERBS:
            return _ACTION_VERBS[token]
    return "E"


def _audit_details(details: object) -> list[dict[str, str]]:
    """Each detail as (key, text): strings as they are, anything else as sorted JSON."""
    if details is None:
        return []
    items = details.items() if isinstance(details, Mapping) else [("details", details)]
    rendered = (
        (
            str(key),
            value if isinstance(value, str) else json.dumps(value, sort_keys=True, default=str),
        )
        for key, value in sorted(items, key=lambda item: str(item[0]))
    )
    return [{"type": key, "valueString": text} for key, text in rendered if text]


def _audit_entity(event: Mapping[str, Any]) -> dict[str, Any]:
    resource_type = _text(event.get("resource_type"), "resource_type")
    entity: dict[str, Any] = {"type": _coding("urn:clinic:resource-type", resource_type)}
    resource_id = _optional_text(event.get("resource_id"), "resource_id")
    if resource_id is not None:
        system = f"urn:clinic:{_uri_part(resource_type)}"
        entity["what"] = {"identifier": {"system": system, "value": resource_id}}
    details = _audit_details(event.get("details"))
    if details:
        entity["detail"] = details
    return entity


def audit_event_resource(event: Mapping[str, Any]) -> dict[str, Any]:
    """A FHIR R4 AuditEvent for one row of the platform's audit log.

    ``event`` has id, occurred_at, actor, role, action, resource_type, resource_id, outcome,
    details and hash (the row's chain hash, carried in an extension so the FHIR copy can be
    checked against the tamper-evident chain).
    """
    action = _text(event.get("action"), "action")
    outcome = _text(event.get("outcome"), "outcome")
    resource: Resource = {
        "resourceType": "AuditEvent",
        "id": _text(event.get("id"), "id"),
        "type": _coding("urn:clinic:audit-action", action, action),
        "action": audit_action_code(action),
        "recorded": fhir_instant(event.get("occurred_at")),
        "outcome": audit_outcome_code(outcome),
        "agent": [
            {
                "role": [_concept("urn:clinic:role", _text(event.get("role"), "role"))],
                "who": {
                    "identifier": {
                        "system": "urn:clinic:actor",
                        "value": _text(event.get("actor"), "actor"),
                    }
                },
                "requestor": True,
            }
        ],
        "source": {"observer": {"display": "clinic platform"}},
        "entity": [_audit_entity(event)],
    }
    if resource["outcome"] != "0":
        resource["outcomeDesc"] = outcome
    chain_hash = _optional_text(event.get("hash"), "hash")
    if chain_hash is not None:
        resource["extension"] = [{"url": CHAIN_HASH_EXTENSION, "valueString": chain_hash}]
    return resource
