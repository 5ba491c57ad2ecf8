"""Clinician reviews of model findings: accept, reject or correct, as a clinician label.

A review is the clinician's call on one finding of one stored prediction. It becomes a
``clinician`` label, which case loading already prefers over ground truth and report-derived
labels, so reviewed cases feed evaluation and the next fine-tuning. The review row, the label and
the ``review.write`` audit event are written in one transaction: none exists without the others.
Reviews are history, never edited: a later review of the same (case, label) supersedes an
earlier one and both are kept (rows and labels), newest first where they are listed.
"""

from __future__ import annotations

import math
from enum import StrEnum
from typing import Any

from sqlalchemy import select
from sqlalchemy.orm import Session

from clinic.audit.chain import AuditKey, canonical_time, record
from clinic.auth.guard import guard
from clinic.auth.roles import Permission, Principal
from clinic.inference.records import FLAG_THRESHOLD
from clinic.inference.service import CaseNotFoundError
from clinic.ingest.types import LabelSource, LabelState
from clinic.store.models import Encounter, Label, Prediction, Review
from clinic.store.store import Store

DEFAULT_VOCABULARY = "clinic"


class Decision(StrEnum):
    ACCEPT = "accept"  # the model's call is right
    REJECT = "reject"  # the model's call is wrong: the opposite holds
    CORRECT = "correct"  # the clinician gives the probability


class ReviewError(ValueError):
    """A review that cannot be recorded as asked (the message says why)."""


def review_finding(
    store: Store,
    principal: Principal,
    case_id: str,
    prediction_id: int,
    label: str,
    decision: Decision | str,
    *,
    corrected_probability: float | None = None,
    comment: str = "",
) -> int:
    """Record a clinician's decision on ``label`` of prediction ``prediction_id``; returns the
    review id. Accept: the model's call (positive at p >= 0.5); reject: the opposite; correct:
    positive at ``corrected_probability`` >= 0.5, the value kept on the label."""
    guard(store, principal, Permission.REVIEW_WRITE, "review.write", "case", case_id)
    decision = _decision(decision)
    _check_probability(decision, corrected_probability)
    with store.session() as session:
        encounter_id = _encounter_id(session, case_id)
        finding = _finding(session, encounter_id, prediction_id, label)
        value = _clinician_value(decision, float(finding["probability"]), corrected_probability)
        review = Review(encounter_id=encounter_id, prediction_id=prediction_id, label=label,
                        decision=decision.value, corrected_probability=corrected_probability,
                        comment=comment.strip(), created_by=principal.username)  # fmt: skip
        session.add(review)
        session.add(_clinician_label(session, encounter_id, label, value, principal))
        session.flush()
        details = {"review_id": review.id, "prediction_id": prediction_id, "label": label,
                   "decision": decision.value, "corrected_probability": corrected_probability,
                   "value": value, "has_comment": bool(review.comment)}  # fmt: skip
        record(session, AuditKey.from_settings(store.settings), principal, "review.write",
               "case", case_id, details=details)  # fmt: skip
        session.commit()
        return int(review.id)


def _decision(decision: Decision | str) -> Decision:
    try:
        return Decision(decision)
    except ValueError:
        known = [d.value for d in Decision]
        raise ReviewError(f"unknown decision {decision!r}: use one of {known}") from None


def _check_probability(decision: Decision, probability: float | None) -> None:
    """A correction needs a probability in [0, 1]; accept / reject take none (their value is
    the model's call or its opposite, so a second number could only contradict it)."""
    if decision is not Decision.CORRECT:
        if probability is not None:
            raise ReviewError(f"a {decision.value} review takes no corrected probability")
        return
    if probability is None or not math.isfinite(probability) or not 0.0 <= probability <= 1.0:
        raise ReviewError(f"a correction needs a probability in [0, 1], got {probability!r}")


def _encounter_id(session: Session, case_id: str) -> int:
    found = session.scalar(select(Encounter.id).where(Encounter.pseudonym == case_id))
    if found is None:
        raise CaseNotFoundError(f"no case with id {case_id!r} in the store")
    return int(found)


def _finding(session: Session, encounter_id: int, prediction_id: int, label: str) -> dict[str, Any]:
    """The finding ``label`` of the case's prediction ``prediction_id``."""
    prediction = session.get(Prediction, prediction_id)
    if prediction is None or prediction.encounter_id != encounter_id:
        raise ReviewError(f"prediction {prediction_id} is not a prediction of this case")
    for finding in prediction.findings:
        if finding.get("label") == label:
            return dict(finding)
    raise ReviewError(f"prediction {prediction_id} has no finding {label!r}")


def _clinician_value(decision: Decision, model_p: float, corrected: float | None) -> float:
    """The label's value: 1/0 for the model's call (accept) or its opposite (reject); the
    corrected probability itself for a correction."""
    if decision is Decision.CORRECT and corrected is not None:
        return corrected
    model_positive = model_p >= FLAG_THRESHOLD
    positive = model_positive if decision is Decision.ACCEPT else not model_positive
    return 1.0 if positive else 0.0


def _clinician_label(
    session: Session, encounter_id: int, name: str, value: float, principal: Principal
) -> Label:
    state = LabelState.POSITIVE if value >= FLAG_THRESHOLD else LabelState.NEGATIVE
    return Label(encounter_id=encounter_id, name=name, value=value, state=state.value,
                 source=LabelSource.CLINICIAN.value, vocabulary=_vocabulary(session, name),
                 created_by=principal.username)  # fmt: skip


def _vocabulary(session: Session, name: str) -> str:
    """The vocabulary the store already uses for ``name``, so that a vocabulary-restricted load
    (training, evaluation) sees the clinician's label next to the others."""
    query = select(Label.vocabulary).where(Label.name == name).order_by(Label.id).limit(1)
    return session.scalar(query) or DEFAULT_VOCABULARY


def case_reviews(session: Session, encounter_id: int) -> list[dict[str, Any]]:
    """Every review of a case, newest first, as plain values."""
    rows = session.scalars(
        select(Review).where(Review.encounter_id == encounter_id).order_by(Review.id.desc())
    ).all()
    return [review_json(row) for row in rows]


def review_json(row: Review) -> dict[str, Any]:
    return {
        "review_id": row.id,
        "prediction_id": row.prediction_id,
        "label": row.label,
        "decision": row.decision,
        "corrected_probability": row.corrected_probability,
        "comment": row.comment,
        "created_by": row.created_by,
        "created_at": canonical_time(row.created_at),
    }
