"""The clinician worklist: which cases to look at first, filtered, counted and paged in SQL.

A store may hold ten thousand cases, and the UI asks for one page of fifty on every rerun, so
nothing here walks all cases in Python: the latest prediction per case, the filters, the counts,
the ordering (highest calibrated risk first, unscored cases last, then case id) and the paging
are one count query and one page query (plus the page's cohort names). Sorting and "flagged"
filtering read ``Prediction.max_risk`` / ``Prediction.flagged``, stored with each prediction for
exactly this purpose. Only pseudonymous ids and model outputs are returned; each call is one
``worklist.view`` audit event with the filter and the counts.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import asdict, dataclass
from typing import Any

from sqlalchemy import (
    ColumnElement,
    Exists,
    Select,
    Subquery,
    case,
    cast,
    false,
    func,
    literal,
    select,
    true,
)
from sqlalchemy.dialects.postgresql import JSONB
from sqlalchemy.orm import Session

from clinic.audit.chain import AuditKey, record
from clinic.auth.guard import guard
from clinic.auth.roles import Permission, Principal
from clinic.inference.records import FLAG_THRESHOLD
from clinic.store.models import (
    ClinicalRecord,
    Cohort,
    CohortMember,
    EcgRecord,
    Encounter,
    Label,
    Patient,
    Prediction,
    Report,
    Review,
    XrayImage,
)
from clinic.store.store import Store
from schemas.modalities import MODALITIES

ANY_FLAGGED = "any"
MAX_PAGE_SIZE = 500


@dataclass(frozen=True)
class WorklistFilter:
    cohort: str | None = None
    modalities: tuple[str, ...] = ()  # the case must have all of these
    flagged: str | None = None  # a label flagged on the latest prediction; "any": any label
    reviewed: bool | None = None  # None: both
    label: str | None = None  # a known positive label (any source)
    model: str | None = None  # default: the newest model with predictions


@dataclass(frozen=True)
class WorklistRow:
    case_id: str
    patient_id: str
    modalities: tuple[str, ...]
    max_risk: float | None
    top_finding: str | None
    flagged: tuple[str, ...]
    reviewed: bool
    prediction_id: int | None
    cohorts: tuple[str, ...]


@dataclass(frozen=True)
class WorklistPage:
    rows: list[WorklistRow]
    total: int
    page: int
    page_size: int
    counts: dict[str, int]  # "cases", "flagged", "reviewed", "unreviewed" over the filtered set


def worklist(
    store: Store,
    principal: Principal,
    filters: WorklistFilter,
    *,
    page: int = 0,
    page_size: int = 50,
) -> WorklistPage:
    """One page of the filtered worklist, highest risk first; audited as ``worklist.view``."""
    guard(store, principal, Permission.PREDICTION_READ, "worklist.view", "worklist")
    _check(filters, page, page_size)
    with store.session() as session:
        model = filters.model or newest_model(session)
        query = _WorklistQuery(store.engine.dialect.name, model, filters)
        counts = query.counts(session)
        rows = query.page(session, page, page_size)
        details = {"filter": asdict(filters), "model": model, "page": page,
                   "page_size": page_size, "counts": counts, "rows": len(rows)}  # fmt: skip
        record(session, AuditKey.from_settings(store.settings), principal, "worklist.view",
               "worklist", None, details=details)  # fmt: skip
        session.commit()
    return WorklistPage(rows, counts["cases"], page, page_size, counts)


def _check(filters: WorklistFilter, page: int, page_size: int) -> None:
    unknown = set(filters.modalities) - set(MODALITIES)
    if unknown:
        raise ValueError(f"unknown modalities {sorted(unknown)}: use {list(MODALITIES)}")
    if page < 0:
        raise ValueError("page must be 0 or more")
    if not 1 <= page_size <= MAX_PAGE_SIZE:
        raise ValueError(f"page_size must be between 1 and {MAX_PAGE_SIZE}")


def newest_model(session: Session) -> str | None:
    """The model of the most recent prediction in the store (None when nothing was scored)."""
    query = select(Prediction.model_name).order_by(Prediction.id.desc()).limit(1)
    return session.scalar(query)


class _WorklistQuery:
    """The filtered set of cases joined to their latest prediction of one model."""

    def __init__(self, dialect: str, model: str | None, filters: WorklistFilter) -> None:
        self.dialect, self.filters = dialect, filters
        self.latest = _latest_predictions(model)
        self.reviewed = select(Review.id).where(Review.encounter_id == Encounter.id).exists()

    def _from(self, *columns: Any) -> Select[Any]:
        return (
            select(*columns)
            .select_from(Encounter)
            .join(Patient, Patient.id == Encounter.patient_id)
            .outerjoin(self.latest, self.latest.c.encounter_id == Encounter.id)
            .outerjoin(Prediction, Prediction.id == self.latest.c.prediction_id)
            .where(*self._conditions())
        )

    def _conditions(self) -> list[ColumnElement[bool]]:
        filters = self.filters
        conditions: list[ColumnElement[bool]] = [_has_modality(m) for m in filters.modalities]
        if filters.cohort is not None:
            conditions.append(Encounter.id.in_(_cohort_members(filters.cohort)))
        if filters.flagged is not None:
            conditions.append(self._flagged(filters.flagged))
        if filters.reviewed is not None:
            conditions.append(self.reviewed if filters.reviewed else ~self.reviewed)
        if filters.label is not None:
            conditions.append(_has_positive_label(filters.label))
        return conditions

    def _flagged(self, label: str) -> ColumnElement[bool]:
        """Any label flagged (``max_risk`` at the threshold), or ``label`` in ``flagged``."""
        any_flag = Prediction.max_risk >= FLAG_THRESHOLD
        if label == ANY_FLAGGED:
            return any_flag
        if self.dialect == "postgresql":
            return any_flag & cast(Prediction.flagged, JSONB).contains([label])
        each = func.json_each(Prediction.flagged).table_valued("value")
        return any_flag & select(literal(1)).select_from(each).where(each.c.value == label).exists()

    def counts(self, session: Session) -> dict[str, int]:
        flagged = func.sum(case((Prediction.max_risk >= FLAG_THRESHOLD, 1), else_=0))
        reviewed = func.sum(case((self.reviewed, 1), else_=0))
        total, flagged_n, reviewed_n = session.execute(
            self._from(func.count(), flagged, reviewed)
        ).one()
        total, reviewed_n = int(total or 0), int(reviewed_n or 0)
        return {"cases": total, "flagged": int(flagged_n or 0), "reviewed": reviewed_n,
                "unreviewed": total - reviewed_n}  # fmt: skip

    def page(self, session: Session, page: int, page_size: int) -> list[WorklistRow]:
        """The page's rows: ranked and cut in an inner query, so the per-row details (modality
        and review lookups, the findings JSON) are read for ``page_size`` rows, not all."""
        order = (Prediction.max_risk.desc().nulls_last(), Encounter.pseudonym)
        ranked = (
            self._from(Encounter.id.label("encounter_id"), Prediction.id.label("prediction_id"))
            .order_by(*order)
            .offset(page * page_size)
            .limit(page_size)
            .subquery("ranked")
        )
        columns = (Encounter.id, Encounter.pseudonym, Patient.pseudonym, Prediction.id,
                   Prediction.max_risk, Prediction.flagged, Prediction.findings,
                   self.reviewed.label("reviewed"),
                   *(_has_modality(m).label(f"has_{m}") for m in MODALITIES))  # fmt: skip
        query = (
            select(*columns)
            .select_from(ranked)
            .join(Encounter, Encounter.id == ranked.c.encounter_id)
            .join(Patient, Patient.id == Encounter.patient_id)
            .outerjoin(Prediction, Prediction.id == ranked.c.prediction_id)
            .order_by(*order)
        )
        results: list[Any] = list(session.execute(query).all())
        cohorts = _cohorts_of(session, [int(r[0]) for r in results])
        return [_row(r, cohorts.get(int(r[0]), ())) for r in results]


def _latest_predictions(model: str | None) -> Subquery:
    """Encounter id → id of its newest prediction by ``model`` (nothing when no model)."""
    chosen = Prediction.model_name == model if model is not None else false()
    return (
        select(Prediction.encounter_id, func.max(Prediction.id).label("prediction_id"))
        .where(chosen)
        .group_by(Prediction.encounter_id)
        .subquery("latest")
    )


_MODALITY_TABLES: dict[str, type[XrayImage | EcgRecord | ClinicalRecord | Report]] = {
    "xray": XrayImage,
    "ecg": EcgRecord,
    "record": ClinicalRecord,
    "report": Report,
}


def _has_modality(modality: str) -> Exists:
    """The case has ``modality`` (a report only when it has non-blank text, as cases do)."""
    table = _MODALITY_TABLES[modality]
    blank = func.length(func.trim(Report.text)) > 0 if table is Report else true()
    return select(table.id).where(table.encounter_id == Encounter.id, blank).exists()


def _cohort_members(cohort: str) -> Select[int]:
    return (
        select(CohortMember.encounter_id)
        .join(Cohort, Cohort.id == CohortMember.cohort_id)
        .where(Cohort.name == cohort)
    )


def _has_positive_label(label: str) -> Exists:
    return (
        select(Label.id)
        .where(Label.encounter_id == Encounter.id, Label.name == label, Label.state == "positive")
        .exists()
    )


def _cohorts_of(session: Session, encounter_ids: Sequence[int]) -> dict[int, tuple[str, ...]]:
    if not encounter_ids:
        return {}
    rows = session.execute(
        select(CohortMember.encounter_id, Cohort.name)
        .join(Cohort, Cohort.id == CohortMember.cohort_id)
        .where(CohortMember.encounter_id.in_(encounter_ids))
        .order_by(Cohort.name)
    ).all()
    out: dict[int, tuple[str, ...]] = {}
    for encounter_id, name in rows:
        out[int(encounter_id)] = (*out.get(int(encounter_id), ()), str(name))
    return out


def _row(result: Any, cohorts: tuple[str, ...]) -> WorklistRow:
    mapping = result._mapping
    max_risk = mapping["max_risk"]
    return WorklistRow(
        case_id=str(result[1]),
        patient_id=str(result[2]),
        modalities=tuple(m for m in MODALITIES if mapping[f"has_{m}"]),
        max_risk=float(max_risk) if max_risk is not None else None,
        top_finding=top_finding(result[6] or []),
        flagged=tuple(str(label) for label in result[5] or ()),
        reviewed=bool(mapping["reviewed"]),
        prediction_id=int(result[3]) if result[3] is not None else None,
        cohorts=cohorts,
    )


def top_finding(findings: Sequence[dict[str, Any]]) -> str | None:
    """The label of the highest non-abstained probability (the one behind ``max_risk``)."""
    called = [
        (float(f["probability"]), str(f["label"]))
        for f in findings
        if not f.get("abstained") and isinstance(f.get("probability"), int | float)
        and math.isfinite(f["probability"])
    ]  # fmt: skip
    return min(called, key=lambda call: (-call[0], call[1]))[1] if called else None


def label_names(store: Store) -> list[str]:
    """Every label name known in the store, sorted (choices for the label filters)."""
    with store.session() as session:
        return list(session.scalars(select(Label.name).distinct().order_by(Label.name)).all())


def cohort_names(store: Store) -> list[str]:
    with store.session() as session:
        return list(session.scalars(select(Cohort.name).order_by(Cohort.name)).all())


def model_names(store: Store) -> list[str]:
    """Models with predictions, the most recently used first (the worklist's default first)."""
    newest = func.max(Prediction.id)
    query = select(Prediction.model_name).group_by(Prediction.model_name).order_by(newest.desc())
    with store.session() as session:
        return list(session.scalars(query).all())
