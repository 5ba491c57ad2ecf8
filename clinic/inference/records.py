"""Writing predictions and embeddings: idempotent upserts inside the caller's transaction.

A prediction is unique per (case, lineage hash): scoring the same case with the same weights,
adapter, preprocessing, calibration, inputs and code returns the row already there, so a re-run
of a killed cohort job never duplicates. An embedding is unique per (case, space) and is
replaced when the case's inputs change. Each prediction also stores its highest calibrated risk
and its flagged labels (:func:`risk_summary`), so that a worklist sorts and filters in SQL.
"""

from __future__ import annotations

import math
from collections.abc import Iterable, Mapping
from typing import Any

import numpy as np
import numpy.typing as npt
from sqlalchemy import delete, select
from sqlalchemy.orm import Session

from clinic.inference.scoring import CaseScore, Finding
from clinic.store.models import Embedding, Encounter, Patient, Prediction, utcnow


def embedding_space(model_key: str, modality: str) -> str:
    """The name of one embedding space: a model version × a modality (or ``fused``)."""
    return f"{model_key}:{modality}"


FLAG_THRESHOLD = 0.5
"""A finding is flagged for review when its calibrated probability is at least this."""


def risk_summary(findings: Iterable[Finding]) -> tuple[float | None, list[str]]:
    """(highest non-abstained calibrated probability, labels flagged at ``FLAG_THRESHOLD``,
    highest first). Abstained or non-finite probabilities are no call, so they never flag a case;
    ``None`` when nothing was called. Migration 0003 backfills with a frozen copy of this rule."""
    called = sorted(
        ((f.probability, f.label) for f in findings
         if not f.abstained and math.isfinite(f.probability)),
        key=lambda call: (-call[0], call[1]),
    )  # fmt: skip
    flagged = [label for probability, label in called if probability >= FLAG_THRESHOLD]
    return (called[0][0] if called else None), flagged


def find_prediction(session: Session, encounter_id: int, lineage_hash: str) -> Prediction | None:
    return session.scalar(
        select(Prediction).where(
            Prediction.encounter_id == encounter_id, Prediction.lineage_hash == lineage_hash
        )
    )


def add_prediction(
    session: Session,
    encounter_id: int,
    score: CaseScore,
    *,
    model_name: str,
    adapter: str | None,
    model_key: str,
    created_by: str,
    cohort_run_id: int | None = None,
    explanations: Mapping[str, Any] | None = None,
) -> Prediction:
    """Add the prediction row (flushed, not committed); the caller checked it is new."""
    max_risk, flagged = risk_summary(score.findings)
    row = Prediction(
        encounter_id=encounter_id,
        model_name=model_name,
        adapter=adapter,
        model_key=model_key,
        lineage_hash=score.lineage_hash,
        lineage=score.lineage,
        subset=score.subset,
        findings=[finding.to_json() for finding in score.findings],
        explanations=dict(explanations or {}),
        created_by=created_by,
        cohort_run_id=cohort_run_id,
        max_risk=max_risk,
        flagged=flagged,
    )
    session.add(row)
    session.flush()
    return row


def upsert_embeddings(
    session: Session,
    encounter_id: int,
    model_key: str,
    vectors: Mapping[str, npt.NDArray[np.float32]],
) -> None:
    """Store (or replace) the case's vector in each space of ``model_key``.

    A replaced vector is deleted and inserted again rather than updated in place: the new row id
    is what tells the embedded index that the vector changed.
    """
    spaces = {embedding_space(model_key, modality): modality for modality in vectors}
    session.execute(
        delete(Embedding).where(
            Embedding.encounter_id == encounter_id, Embedding.space.in_(list(spaces))
        )
    )
    for space, modality in spaces.items():
        vector = np.asarray(vectors[modality], dtype=np.float32)
        session.add(
            Embedding(
                encounter_id=encounter_id, space=space, model_key=model_key,
                modality=modality, dim=int(vector.shape[0]), vector=vector,
            )
        )  # fmt: skip
    session.flush()


def encounter_ids(session: Session, case_ids: list[str]) -> dict[str, tuple[int, str]]:
    """Case id → (encounter row id, patient pseudonym) for the ids that exist."""
    rows = session.execute(
        select(Encounter.pseudonym, Encounter.id, Patient.pseudonym)
        .join(Patient, Patient.id == Encounter.patient_id)
        .where(Encounter.pseudonym.in_(case_ids))
    ).all()
    return {case: (int(row_id), patient) for case, row_id, patient in rows}


def prediction_json(row: Prediction, case_id: str, patient_id: str) -> dict[str, Any]:
    """The stable JSON shape of a prediction (CLI ``--json``, FHIR export, UI)."""
    return {
        "prediction_id": row.id,
        "case_id": case_id,
        "patient_id": patient_id,
        "created_at": _iso(row.created_at),
        "created_by": row.created_by,
        "model": {"name": row.model_name, "adapter": row.adapter, "version": row.lineage_hash},
        "subset": row.subset,
        "modalities_used": row.subset.split("+"),
        "lineage": row.lineage,
        "lineage_hash": row.lineage_hash,
        "findings": row.findings,
        "explanations": row.explanations,
    }


def _iso(value: Any) -> str:
    if value is None:
        value = utcnow()
    if value.tzinfo is None:
        return str(value.isoformat(timespec="microseconds")) + "Z"
    return str(value.astimezone(utcnow().tzinfo).isoformat(timespec="microseconds")).replace(
        "+00:00", "Z"
    )
