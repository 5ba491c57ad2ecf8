"""Exports of a case's prediction to other systems (FHIR R4), checked and audited."""

from __future__ import annotations

from typing import Any

from clinic.audit.chain import AuditKey, record
from clinic.auth.guard import guard
from clinic.auth.roles import Permission, Principal
from clinic.inference.service import case_predictions
from clinic.reports.fhir import prediction_bundle
from clinic.store.store import Store


class NoPredictionError(LookupError):
    """The case has no stored prediction to export."""


def export_fhir(store: Store, principal: Principal, case_id: str) -> dict[str, Any]:
    """The case's newest prediction as a FHIR R4 Bundle (DiagnosticReport + Observations)."""
    guard(store, principal, Permission.EXPORT_FHIR, "export.fhir", "case", case_id)
    predictions = case_predictions(store, principal, case_id)
    if not predictions:
        raise NoPredictionError(f"case {case_id} has no prediction: run `clinic predict` first")
    bundle = prediction_bundle(predictions[0])
    with store.session() as session:
        record(session, AuditKey.from_settings(store.settings), principal, "export.fhir",
               "prediction", str(predictions[0]["prediction_id"]),
               details={"case_id": case_id, "resources": len(bundle.get("entry", []))})  # fmt: skip
        session.commit()
    return bundle
