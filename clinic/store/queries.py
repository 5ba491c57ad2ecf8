"""Read-side queries shared by the CLI, pipelines and (later) the UI."""

from __future__ import annotations

from dataclasses import dataclass

from sqlalchemy import func, select
from sqlalchemy.orm import Session

from clinic.store.models import (
    Base,
    ClinicalRecord,
    Cohort,
    CohortMember,
    EcgRecord,
    Label,
    Patient,
    QuarantineItem,
    Report,
    XrayImage,
)

COUNTED_TABLES: dict[str, type[Base]] = {
    "patients": Patient,
    "xray_images": XrayImage,
    "ecg_records": EcgRecord,
    "clinical_records": ClinicalRecord,
    "reports": Report,
    "labels": Label,
}


def table_counts(session: Session) -> dict[str, int]:
    """Row counts of the main tables, keyed as ``clinic status --json`` prints them."""
    return {
        name: int(session.scalar(select(func.count()).select_from(model)) or 0)
        for name, model in COUNTED_TABLES.items()
    }


def quarantine_counts(session: Session) -> dict[str, int]:
    rows = session.execute(
        select(QuarantineItem.reason, func.count()).group_by(QuarantineItem.reason)
    )
    return {reason: int(count) for reason, count in sorted(rows)}


@dataclass(frozen=True)
class QuarantineEntry:
    path: str
    sha256: str
    reason: str
    message: str

    def as_json(self) -> dict[str, str]:
        return {
            "path": self.path,
            "sha256": self.sha256,
            "reason": self.reason,
            "message": self.message,
        }


def quarantine_entries(session: Session, reason: str | None = None) -> list[QuarantineEntry]:
    statement = select(QuarantineItem).order_by(QuarantineItem.id)
    if reason:
        statement = statement.where(QuarantineItem.reason == reason)
    return [
        QuarantineEntry(q.path, q.sha256, q.reason, q.message) for q in session.scalars(statement)
    ]


def cohort_sizes(session: Session) -> dict[str, int]:
    rows = session.execute(
        select(Cohort.name, func.count(CohortMember.id))
        .outerjoin(CohortMember, CohortMember.cohort_id == Cohort.id)
        .group_by(Cohort.name)
        .order_by(Cohort.name)
    )
    return {name: int(count) for name, count in rows}
