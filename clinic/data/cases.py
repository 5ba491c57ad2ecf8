"""Cases: one encounter's evidence across modalities, read from the store as plain objects.

A case holds references (blob hashes) and small values only; pixels and signals are read from
the blob store when a dataset item is built, so listing ten thousand cases stays cheap. Any
modality may be absent. Labels are kept by *name*: ``labels["MI"] = 1.0``, unknown (uncertain or
not mentioned) labels are simply missing and become NaN in a label matrix.
"""

from __future__ import annotations

import math
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass, field

import numpy as np
import numpy.typing as npt
from sqlalchemy import Select, select
from sqlalchemy.orm import Session

from clinic.store.models import (
    ClinicalRecord,
    Cohort,
    CohortMember,
    EcgRecord,
    Encounter,
    Label,
    Patient,
    Report,
    XrayImage,
)
from schemas.clinical_record import CORE_FIELD_NAMES
from schemas.modalities import MODALITIES

RECORD_FIELDS: tuple[str, ...] = tuple(name for name in CORE_FIELD_NAMES if name != "sex")
"""Numeric core fields of a clinical record that models read (``sex`` is added as a flag)."""

_KNOWN_STATES = ("positive", "negative")
_LABEL_SOURCE_PRIORITY = {"clinician": 0, "ground_truth": 1, "report_derived": 2}


@dataclass
class Case:
    """One encounter: blob references, record values, report text and labels by name."""

    case_id: str
    patient_id: str
    split: str | None
    xray_blob: str | None = None
    ecg_blob: str | None = None
    ecg_leads: tuple[str, ...] = ()
    ecg_rate_hz: int = 0
    record: dict[str, float] | None = None
    report: str | None = None
    labels: dict[str, float] = field(default_factory=dict)

    @property
    def present(self) -> tuple[str, ...]:
        """Modalities this case has, in canonical order."""
        have = {
            "xray": self.xray_blob is not None,
            "ecg": self.ecg_blob is not None,
            "record": self.record is not None,
            "report": bool(self.report),
        }
        return tuple(m for m in MODALITIES if have[m])


class CohortNotFoundError(LookupError):
    """The named cohort does not exist in the store."""


def load_cases(
    session: Session,
    *,
    cohort: str | None = None,
    label_vocabulary: str | None = None,
    extra_fields: Sequence[str] = (),
    case_ids: Sequence[str] | None = None,
) -> list[Case]:
    """Every encounter of ``cohort`` (or of the whole store) as a :class:`Case`, ordered by id.

    Labels are restricted to ``label_vocabulary`` when given. Reports of one encounter (e.g. a
    radiology report and an ECG interpretation) are joined in a stable order. ``extra_fields``
    names record extras (source columns outside the core schema, such as Hannover's binned
    labs) to add to ``Case.record`` as floats, NaN where absent or not a number. ``case_ids``
    restricts the result to those encounters (by pseudonymous case id).
    """
    encounters = _encounter_query(session, cohort)
    if case_ids is not None:
        encounters = encounters.where(Encounter.pseudonym.in_(list(case_ids)))
    cases = {
        int(row[0]): Case(case_id=str(row[1]), patient_id=str(row[2]), split=row[3])
        for row in session.execute(encounters).all()
    }
    ids = list(cases)
    for chunk in _chunks(ids, 5000):
        _attach_xrays(session, cases, chunk)
        _attach_ecgs(session, cases, chunk)
        _attach_records(session, cases, chunk, extra_fields)
        _attach_reports(session, cases, chunk)
        _attach_labels(session, cases, chunk, label_vocabulary)
    return [cases[i] for i in ids]


def _encounter_query(session: Session, cohort: str | None) -> Select[int, str, str, str | None]:
    query = (
        select(Encounter.id, Encounter.pseudonym, Patient.pseudonym, Encounter.split)
        .join(Patient, Patient.id == Encounter.patient_id)
        .order_by(Encounter.id)
    )
    if cohort is None:
        return query
    cohort_id = session.scalar(select(Cohort.id).where(Cohort.name == cohort))
    if cohort_id is None:
        known = session.scalars(select(Cohort.name).order_by(Cohort.name)).all()
        raise CohortNotFoundError(f"no cohort named {cohort!r}; known cohorts: {list(known)}")
    members = select(CohortMember.encounter_id).where(CohortMember.cohort_id == cohort_id)
    return query.where(Encounter.id.in_(members))


def _chunks(ids: Sequence[int], size: int) -> Iterable[Sequence[int]]:
    for start in range(0, len(ids), size):
        yield ids[start : start + size]


def _attach_xrays(session: Session, cases: dict[int, Case], ids: Sequence[int]) -> None:
    """The first image of each encounter (by id): one X-ray token per case."""
    query = (
        select(XrayImage.encounter_id, XrayImage.pixels_blob)
        .where(XrayImage.encounter_id.in_(ids))
        .order_by(XrayImage.id.desc())
    )
    for encounter_id, blob in session.execute(query).all():
        cases[encounter_id].xray_blob = blob


def _attach_ecgs(session: Session, cases: dict[int, Case], ids: Sequence[int]) -> None:
    query = (
        select(
            EcgRecord.encounter_id,
            EcgRecord.signal_blob,
            EcgRecord.leads_present,
            EcgRecord.sampling_rate,
        )
        .where(EcgRecord.encounter_id.in_(ids))
        .order_by(EcgRecord.id.desc())
    )
    for encounter_id, blob, leads, rate in session.execute(query).all():
        cases[encounter_id].ecg_blob = blob
        cases[encounter_id].ecg_rate_hz = int(rate)
        cases[encounter_id].ecg_leads = tuple(str(lead) for lead in leads)


def _attach_records(
    session: Session, cases: dict[int, Case], ids: Sequence[int], extra_fields: Sequence[str]
) -> None:
    columns = [getattr(ClinicalRecord, name) for name in RECORD_FIELDS]
    query = (
        select(ClinicalRecord.encounter_id, ClinicalRecord.extras, ClinicalRecord.sex, *columns)
        .where(ClinicalRecord.encounter_id.in_(ids))
        .order_by(ClinicalRecord.id.desc())
    )
    for encounter_id, extras, sex, *values in session.execute(query).all():
        record = record_values(sex, values)
        record.update(extra_values(extras or {}, extra_fields))
        cases[encounter_id].record = record


def extra_values(extras: Mapping[str, object], names: Sequence[str]) -> dict[str, float]:
    """The named extras as floats: a number (or a flag, as 0/1) is kept; anything else — absent,
    None, text, a list — is NaN, so a model sees it as missing instead of as a made-up value."""
    return {name: _number_or_nan(extras.get(name)) for name in names}


def _number_or_nan(value: object) -> float:
    if isinstance(value, bool | int | float):
        number = float(value)
        return number if math.isfinite(number) else math.nan
    return math.nan


def record_values(sex: str | None, values: Sequence[float | None]) -> dict[str, float]:
    """Record fields as floats with NaN for missing; sex becomes ``is_female`` (NaN unknown)."""
    out = {
        name: math.nan if value is None else float(value)
        for name, value in zip(RECORD_FIELDS, values, strict=True)
    }
    out["is_female"] = {"female": 1.0, "male": 0.0}.get((sex or "").lower(), math.nan)
    return out


def _attach_reports(session: Session, cases: dict[int, Case], ids: Sequence[int]) -> None:
    query = (
        select(Report.encounter_id, Report.kind, Report.text)
        .where(Report.encounter_id.in_(ids))
        .order_by(Report.encounter_id, Report.kind, Report.id)
    )
    texts: dict[int, list[str]] = {}
    for encounter_id, _kind, text in session.execute(query).all():
        if text.strip():
            texts.setdefault(encounter_id, []).append(text.strip())
    for encounter_id, parts in texts.items():
        cases[encounter_id].report = "\n\n".join(parts)


def _attach_labels(
    session: Session, cases: dict[int, Case], ids: Sequence[int], vocabulary: str | None
) -> None:
    """Known (positive / negative) labels; a clinician's label wins over ground truth."""
    query = (
        select(Label.encounter_id, Label.name, Label.value, Label.state, Label.source)
        .where(Label.encounter_id.in_(ids), Label.state.in_(_KNOWN_STATES))
        .order_by(Label.id.desc())  # newest first: a later review of a finding wins
    )
    if vocabulary is not None:
        query = query.where(Label.vocabulary == vocabulary)
    best: dict[tuple[int, str], tuple[int, float]] = {}
    for encounter_id, name, value, state, source in session.execute(query).all():
        rank = _LABEL_SOURCE_PRIORITY.get(source, 9)
        number = float(value) if value is not None else (1.0 if state == "positive" else 0.0)
        key = (encounter_id, name)
        if key not in best or rank < best[key][0]:
            best[key] = (rank, number)
    for (encounter_id, name), (_rank, number) in best.items():
        cases[encounter_id].labels[name] = number


def label_matrix(cases: Sequence[Case], names: Sequence[str]) -> npt.NDArray[np.float32]:
    """(N, K) labels in the order of ``names``; NaN where a case has no known value."""
    out = np.full((len(cases), len(names)), np.nan, dtype=np.float32)
    for row, case in enumerate(cases):
        for column, name in enumerate(names):
            if name in case.labels:
                out[row, column] = case.labels[name]
    return out


def common_label_names(cases: Sequence[Case], min_positive: int = 1) -> list[str]:
    """Label names known for some case with at least ``min_positive`` positives, sorted."""
    positives: dict[str, int] = {}
    for case in cases:
        for name, value in case.labels.items():
            positives[name] = positives.get(name, 0) + int(value >= 0.5)
    return sorted(name for name, count in positives.items() if count >= min_positive)


def cases_by_patient(cases: Iterable[Case]) -> Mapping[str, list[Case]]:
    grouped: dict[str, list[Case]] = {}
    for case in cases:
        grouped.setdefault(case.patient_id, []).append(case)
    return grouped
