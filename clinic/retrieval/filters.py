"""Case filters for retrieval (``--filter label=MI,age=60-80,sex=female,cohort=demo,has=ecg``).

A filter is turned into one SQL query of allowed encounter ids, so both the embedded index and
pgvector search *within* the allowed cases instead of filtering a fixed top-k afterwards (which
starves the result when the filter is selective).
"""

from __future__ import annotations

from dataclasses import dataclass

from sqlalchemy import Select, exists, select

from clinic.store.models import (
    ClinicalRecord,
    Cohort,
    CohortMember,
    EcgRecord,
    Encounter,
    Label,
    Report,
    XrayImage,
)

_PRESENCE: dict[str, type[XrayImage | EcgRecord | ClinicalRecord | Report]] = {
    "xray": XrayImage,
    "ecg": EcgRecord,
    "record": ClinicalRecord,
    "report": Report,
}


class FilterError(ValueError):
    """A filter expression that cannot be understood; the message says which part and why."""


@dataclass(frozen=True)
class CaseFilter:
    labels: tuple[str, ...] = ()  # each must be known positive
    age: tuple[float, float] | None = None  # inclusive range in years
    sex: str | None = None
    cohort: str | None = None
    has: tuple[str, ...] = ()  # modalities the case must have

    @property
    def empty(self) -> bool:
        return self == CaseFilter()

    def to_json(self) -> dict[str, object]:
        return {"labels": list(self.labels), "age": list(self.age) if self.age else None,
                "sex": self.sex, "cohort": self.cohort, "has": list(self.has)}  # fmt: skip


def parse_filter(text: str | None) -> CaseFilter:
    """``label=MI,label=CHF,age=60-80,sex=female,cohort=demo,has=ecg`` → :class:`CaseFilter`."""
    labels: list[str] = []
    has: list[str] = []
    age: tuple[float, float] | None = None
    sex = cohort = None
    for part in (p.strip() for p in (text or "").split(",") if p.strip()):
        name, sep, value = part.partition("=")
        name, value = name.strip().lower(), value.strip()
        if not sep or not value:
            raise FilterError(f"filter part {part!r} is not NAME=VALUE")
        if name == "label":
            labels.append(value)
        elif name == "age":
            age = _age_range(value)
        elif name == "sex":
            sex = _sex(value)
        elif name == "cohort":
            cohort = value
        elif name == "has":
            has.append(_modality(value))
        else:
            raise FilterError(f"unknown filter {name!r}: use label, age, sex, cohort or has")
    return CaseFilter(tuple(labels), age, sex, cohort, tuple(has))


def _age_range(value: str) -> tuple[float, float]:
    low, sep, high = value.partition("-")
    try:
        bounds = (float(low), float(high)) if sep else (float(low), float(low))
    except ValueError as error:
        raise FilterError(f"age filter {value!r} is not a range like 60-80") from error
    if bounds[0] > bounds[1]:
        raise FilterError(f"age filter {value!r}: the lower bound is above the upper")
    return bounds


def _sex(value: str) -> str:
    lowered = value.lower()
    if lowered not in ("female", "male"):
        raise FilterError(f"sex filter {value!r}: use female or male")
    return lowered


def _modality(value: str) -> str:
    if value not in _PRESENCE:
        raise FilterError(f"has filter {value!r}: use one of {', '.join(_PRESENCE)}")
    return value


def allowed_encounters(case_filter: CaseFilter) -> Select[int]:
    """SELECT of the encounter ids that pass ``case_filter``."""
    query = select(Encounter.id)
    for label in case_filter.labels:
        positive = exists().where(
            Label.encounter_id == Encounter.id, Label.name == label, Label.state == "positive"
        )
        query = query.where(positive)
    if case_filter.age is not None or case_filter.sex is not None:
        record = select(ClinicalRecord.encounter_id)
        if case_filter.age is not None:
            record = record.where(ClinicalRecord.age_years.between(*case_filter.age))
        if case_filter.sex is not None:
            record = record.where(ClinicalRecord.sex == case_filter.sex)
        query = query.where(Encounter.id.in_(record))
    if case_filter.cohort is not None:
        members = (
            select(CohortMember.encounter_id)
            .join(Cohort, Cohort.id == CohortMember.cohort_id)
            .where(Cohort.name == case_filter.cohort)
        )
        query = query.where(Encounter.id.in_(members))
    for modality in case_filter.has:
        table = _PRESENCE[modality]
        query = query.where(exists().where(table.encounter_id == Encounter.id))
    return query
