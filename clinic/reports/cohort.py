"""``clinic cohort report``: the cohort's stored predictions + ground truth → report and tables.

Uses the predictions of the cohort's latest finished scoring run for the model (one per case:
the newest of that model version), the cases' known labels (clinician > ground truth > report
derived) and sex / age from the clinical record. Researchers may run it: the output holds
pseudonymous ids and aggregates only.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pandas as pd
from sqlalchemy import select
from sqlalchemy.orm import Session

from clinic.audit.chain import AuditKey, record
from clinic.auth.guard import guard
from clinic.auth.roles import Permission, Principal
from clinic.data.cases import load_cases
from clinic.reports.cohort_report import CohortReportFiles, write_cohort_report
from clinic.store.models import ClinicalRecord, Cohort, CohortRun, Encounter, Prediction
from clinic.store.store import Store


class NothingScoredError(LookupError):
    """The cohort has no finished scoring run for this model."""


@dataclass(frozen=True)
class CohortReportRequest:
    cohort: str
    out_dir: Path
    model: str | None = None  # default: the model of the cohort's latest finished run


def cohort_report(
    store: Store, principal: Principal, request: CohortReportRequest
) -> CohortReportFiles:
    guard(store, principal, Permission.COHORT_REPORT, "cohort.report", "cohort", request.cohort)
    with store.session() as session:
        run = latest_run(session, request.cohort, request.model)
        frame, labels, model = cohort_frame(session, request.cohort, run)
    files = write_cohort_report(
        frame, labels, request.out_dir, title=f"Cohort {request.cohort}", model=model
    )
    with store.session() as session:
        record(session, AuditKey.from_settings(store.settings), principal, "cohort.report",
               "cohort", request.cohort,
               details={"model": run.model_name, "run": run.id, "cases": len(frame),
                        "out": str(request.out_dir)})  # fmt: skip
        session.commit()
    return files


def latest_run(session: Session, cohort: str, model: str | None) -> CohortRun:
    query = (
        select(CohortRun)
        .join(Cohort, Cohort.id == CohortRun.cohort_id)
        .where(Cohort.name == cohort, CohortRun.status == "finished")
        .order_by(CohortRun.id.desc())
    )
    if model is not None:
        query = query.where(CohortRun.model_name == model)
    run = session.scalars(query).first()
    if run is None:
        raise NothingScoredError(
            f"cohort {cohort!r} has no finished scoring run"
            + (f" with model {model!r}" if model else "")
            + ": run `clinic cohort score` first"
        )
    return run


def cohort_frame(
    session: Session, cohort: str, run: CohortRun
) -> tuple[pd.DataFrame, list[str], dict[str, Any]]:
    """One row per scored case: ids, subset, sex, age, and per label p / abstain / y."""
    cases = {case.case_id: case for case in load_cases(session, cohort=cohort)}
    rows = session.execute(
        select(Encounter.pseudonym, Prediction)
        .join(Prediction, Prediction.encounter_id == Encounter.id)
        .where(Prediction.model_key == run.model_key, Encounter.pseudonym.in_(list(cases)))
        .order_by(Prediction.id)
    ).all()
    newest = {str(case_id): prediction for case_id, prediction in rows}  # later ids win
    demographics = _demographics(session, list(newest))
    labels: list[str] = []
    records: list[dict[str, Any]] = []
    for case_id, prediction in newest.items():
        labels = labels or [f["label"] for f in prediction.findings]
        case = cases[case_id]
        row: dict[str, Any] = {"case_id": case_id, "patient_id": case.patient_id}
        row.update(subset=prediction.subset, **demographics.get(case_id, {}))
        for finding in prediction.findings:
            name = finding["label"]
            row[f"p:{name}"] = float(finding["probability"])
            row[f"abstain:{name}"] = bool(finding["abstained"])
            row[f"y:{name}"] = case.labels.get(name, math.nan)
        records.append(row)
    frame = pd.DataFrame.from_records(records)
    for column in ("sex", "age_years"):
        if column not in frame:
            frame[column] = None if column == "sex" else math.nan
    last = next(reversed(newest.values())) if newest else None
    model = {"name": run.model_name, "adapter": run.adapter, "model_key": run.model_key,
             "run": run.id, "lineage": last.lineage if last else {}}  # fmt: skip
    return frame, labels, model


def _demographics(session: Session, case_ids: list[str]) -> dict[str, dict[str, Any]]:
    rows = session.execute(
        select(Encounter.pseudonym, ClinicalRecord.sex, ClinicalRecord.age_years)
        .join(ClinicalRecord, ClinicalRecord.encounter_id == Encounter.id)
        .where(Encounter.pseudonym.in_(case_ids))
        .order_by(ClinicalRecord.id)
    ).all()
    return {
        str(case_id): {"sex": sex, "age_years": math.nan if age is None else float(age)}
        for case_id, sex, age in rows
    }
