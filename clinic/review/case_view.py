"""Everything a clinician sees of one case, read in one call and audited as one ``case.view``.

The UI never touches the database, the blob store or the model: this service hands it decoded
arrays (X-ray in [0, 1], ECG in mV), record values with their reference-range flags, the report
text, the latest prediction with its decoded explanations, every label and every review. Any
modality may be missing; a missing one is ``None`` / empty, never an error, so a case with only
a report renders as well as a complete one. Viewing case content needs ``case.view``; the
refusal of anyone else (researchers) is itself audited by the guard.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any, TypeVar

import numpy as np
import numpy.typing as npt
from PIL import Image, ImageOps
from sqlalchemy import select
from sqlalchemy.orm import Session

from clinic.audit.chain import AuditKey, canonical_time, record
from clinic.auth.guard import guard
from clinic.auth.roles import Permission, Principal
from clinic.inference.explain import Explanation, decode_artifact
from clinic.inference.records import prediction_json
from clinic.inference.service import CaseNotFoundError
from clinic.ingest.types import STANDARD_LEADS
from clinic.retrieval.search import RetrievalError, SimilarRequest, similar
from clinic.review.reviews import case_reviews
from clinic.review.worklist import newest_model
from clinic.store.blobs import BlobStore, decode_unit_image
from clinic.store.models import (
    ClinicalRecord,
    EcgRecord,
    Encounter,
    Label,
    Patient,
    Prediction,
    Report,
    XrayImage,
)
from clinic.store.store import Store
from schemas.clinical_record import CORE_FIELD_NAMES, load_record_schema
from schemas.modalities import MODALITIES
from schemas.reference_ranges import REFERENCE_RANGES, Flag, reference_flag

FloatArray = npt.NDArray[np.float32]
XRAY_META = ("Modality", "ViewPosition", "PhotometricInterpretation", "BitsStored", "Rows",
             "Columns", "PixelSpacing", "window_center", "window_width",
             "source_format")  # fmt: skip
THUMBNAIL_SIDE = 64
SNIPPET_LEAD = "II"
SNIPPET_SECONDS = 2.5
_Row = TypeVar("_Row", XrayImage, EcgRecord, ClinicalRecord)


@dataclass(frozen=True)
class RecordValue:
    """One record field with its unit and adult reference range (None where there is none)."""

    name: str
    value: float | str | None
    unit: str | None
    low: float | None
    high: float | None
    flag: Flag | None


@dataclass
class CaseView:
    case_id: str
    patient_id: str
    modalities: tuple[str, ...]
    xray: FloatArray | None  # (H, W) in [0, 1]
    xray_meta: dict[str, Any]
    ecg: FloatArray | None  # (12, T) mV, STANDARD_LEADS order
    ecg_rate_hz: int
    ecg_leads_present: tuple[str, ...]
    ecg_quality: dict[str, Any]  # lead → flags ("missing" for an absent lead); "record" → flags
    record: list[RecordValue]
    report: str | None
    prediction: dict[str, Any] | None  # clinic.inference.records.prediction_json shape
    explanations: dict[str, Explanation] = field(default_factory=dict)
    labels: list[dict[str, Any]] = field(default_factory=list)
    reviews: list[dict[str, Any]] = field(default_factory=list)


@dataclass
class _Rows:
    """The database rows behind one view (blobs are read after the session closes)."""

    encounter_id: int
    patient_id: str
    xray: XrayImage | None
    ecg: EcgRecord | None
    record: ClinicalRecord | None
    report: str | None
    prediction: Prediction | None


def case_view(
    store: Store, principal: Principal, case_id: str, *, model: str | None = None
) -> CaseView:
    """The case's content and its latest prediction (of ``model``, default any model)."""
    guard(store, principal, Permission.CASE_VIEW, "case.view", "case", case_id)
    with store.session() as session:
        rows = _read_rows(session, case_id, model)
        labels = _labels(session, rows.encounter_id)
        reviews = case_reviews(session, rows.encounter_id)
        view = _assemble(store.blobs, case_id, rows, labels, reviews)
        details = {"model": rows.prediction.model_name if rows.prediction else None,
                   "prediction_id": view.prediction["prediction_id"] if view.prediction else None,
                   "modalities": list(view.modalities)}  # fmt: skip
        record(session, AuditKey.from_settings(store.settings), principal, "case.view", "case",
               case_id, details=details)  # fmt: skip
        session.commit()
    return view


def _read_rows(session: Session, case_id: str, model: str | None) -> _Rows:
    found = session.execute(
        select(Encounter.id, Patient.pseudonym)
        .join(Patient, Patient.id == Encounter.patient_id)
        .where(Encounter.pseudonym == case_id)
    ).one_or_none()
    if found is None:
        raise CaseNotFoundError(f"no case with id {case_id!r} in the store")
    encounter_id = int(found[0])
    return _Rows(
        encounter_id=encounter_id,
        patient_id=str(found[1]),
        xray=_first(session, XrayImage, encounter_id),
        ecg=_first(session, EcgRecord, encounter_id),
        record=_first(session, ClinicalRecord, encounter_id),
        report=_report_text(session, encounter_id),
        prediction=_latest_prediction(session, encounter_id, model),
    )


def _first(session: Session, table: type[_Row], encounter_id: int) -> _Row | None:
    """The encounter's first row of ``table`` by id: the one case loading gives the model."""
    query = select(table).where(table.encounter_id == encounter_id).order_by(table.id).limit(1)
    return session.scalar(query)


def _report_text(session: Session, encounter_id: int) -> str | None:
    """The encounter's reports joined as case loading joins them (by kind, then id)."""
    texts = session.scalars(
        select(Report.text)
        .where(Report.encounter_id == encounter_id)
        .order_by(Report.kind, Report.id)
    ).all()
    parts = [text.strip() for text in texts if text.strip()]
    return "\n\n".join(parts) if parts else None


def _latest_prediction(session: Session, encounter_id: int, model: str | None) -> Prediction | None:
    query = select(Prediction).where(Prediction.encounter_id == encounter_id)
    if model is not None:
        query = query.where(Prediction.model_name == model)
    return session.scalar(query.order_by(Prediction.id.desc()).limit(1))


def _labels(session: Session, encounter_id: int) -> list[dict[str, Any]]:
    """Every label row of the case, by name, newest first within a name."""
    rows = session.scalars(
        select(Label)
        .where(Label.encounter_id == encounter_id)
        .order_by(Label.name, Label.id.desc())
    ).all()
    return [
        {"name": row.name, "state": row.state, "value": row.value, "source": row.source,
         "vocabulary": row.vocabulary, "created_by": row.created_by,
         "created_at": canonical_time(row.created_at)}
        for row in rows
    ]  # fmt: skip


def _assemble(
    blobs: BlobStore,
    case_id: str,
    rows: _Rows,
    labels: list[dict[str, Any]],
    reviews: list[dict[str, Any]],
) -> CaseView:
    ecg = rows.ecg
    prediction = rows.prediction
    return CaseView(
        case_id=case_id,
        patient_id=rows.patient_id,
        modalities=_modalities(rows),
        xray=_xray_pixels(blobs, rows.xray),
        xray_meta={key: getattr(rows.xray, key) for key in XRAY_META} if rows.xray else {},
        ecg=_ecg_signal(blobs, ecg),
        ecg_rate_hz=int(ecg.sampling_rate) if ecg else 0,
        ecg_leads_present=tuple(str(lead) for lead in ecg.leads_present) if ecg else (),
        ecg_quality=ecg_quality(ecg.quality_flags, ecg.leads_present) if ecg else {},
        record=record_values(rows.record),
        report=rows.report,
        prediction=prediction_json(prediction, case_id, rows.patient_id) if prediction else None,
        explanations=_explanations(blobs, prediction.explanations) if prediction else {},
        labels=labels,
        reviews=reviews,
    )


def _modalities(rows: _Rows) -> tuple[str, ...]:
    have = {"xray": rows.xray, "ecg": rows.ecg, "record": rows.record, "report": rows.report}
    return tuple(m for m in MODALITIES if have[m] is not None)


def _xray_pixels(blobs: BlobStore, row: XrayImage | None) -> FloatArray | None:
    return decode_unit_image(blobs.get_array(row.pixels_blob)) if row is not None else None


def _ecg_signal(blobs: BlobStore, row: EcgRecord | None) -> FloatArray | None:
    if row is None:
        return None
    return np.asarray(blobs.get_array(row.signal_blob), dtype=np.float32)


def ecg_quality(flags: Mapping[str, Any], leads_present: Sequence[str]) -> dict[str, Any]:
    """Per-lead quality flags as stored, plus ``"missing"`` for each standard lead not present,
    so one mapping answers "can I read this lead?" (``"record"`` keeps record-wide flags)."""
    out: dict[str, Any] = {str(key): list(value) for key, value in flags.items() if value}
    for lead in STANDARD_LEADS:
        if lead not in leads_present:
            out[lead] = [*out.get(lead, []), "missing"]
    return out


def record_values(row: ClinicalRecord | None) -> list[RecordValue]:
    """The record's core fields that have a value, in schema order, flagged against the adult
    reference ranges."""
    if row is None:
        return []
    schema = load_record_schema()
    out = []
    for name in CORE_FIELD_NAMES:
        value = getattr(row, name)
        if value is None:
            continue
        reference = REFERENCE_RANGES.get(name)
        number = value if isinstance(value, int | float) else None
        out.append(RecordValue(name=name, value=value, unit=schema.field(name).unit,
                               low=reference.low if reference else None,
                               high=reference.high if reference else None,
                               flag=reference_flag(name, number)))  # fmt: skip
    return out


def _explanations(blobs: BlobStore, stored: Mapping[str, Any]) -> dict[str, Explanation]:
    """Label → decoded artifacts (the prediction stores label → artifact name → blob hash)."""
    return {
        str(label): decode_artifact({name: blobs.get(sha) for name, sha in parts.items()}, label)
        for label, parts in stored.items()
    }


def similar_cases(
    store: Store,
    principal: Principal,
    case_id: str,
    *,
    model: str | None = None,
    k: int = 5,
) -> list[dict[str, Any]]:
    """The ``k`` most similar cases (:func:`clinic.retrieval.search.similar`, audited there),
    each with a 64×64 uint8 X-ray ``thumbnail`` and a lead II ``ecg_snippet`` (2.5 s, mV, at
    ``ecg_rate_hz``), None where the hit lacks the modality. Empty when no model has scored
    anything or the case has nothing the model reads."""
    guard(store, principal, Permission.CASE_VIEW, "case.view", "case", case_id)
    with store.session() as session:
        model = model or _case_model(session, case_id) or newest_model(session)
    if model is None:
        return []
    try:
        hits = similar(store, principal, SimilarRequest(model=model, case_id=case_id, k=k))["hits"]
    except RetrievalError:
        return []
    with store.session() as session:
        previews = _previews(session, store.blobs, [hit["case_id"] for hit in hits])
    return [{**hit, **previews.get(hit["case_id"], _NO_PREVIEW)} for hit in hits]


_NO_PREVIEW: dict[str, Any] = {"thumbnail": None, "ecg_snippet": None, "ecg_rate_hz": 0}


def _case_model(session: Session, case_id: str) -> str | None:
    """The model of the case's newest prediction."""
    query = (
        select(Prediction.model_name)
        .join(Encounter, Encounter.id == Prediction.encounter_id)
        .where(Encounter.pseudonym == case_id)
        .order_by(Prediction.id.desc())
        .limit(1)
    )
    return session.scalar(query)


def _previews(
    session: Session, blobs: BlobStore, case_ids: Sequence[str]
) -> dict[str, dict[str, Any]]:
    encounters = dict(
        session.execute(
            select(Encounter.id, Encounter.pseudonym).where(Encounter.pseudonym.in_(case_ids))
        ).all()
    )
    out: dict[str, dict[str, Any]] = {}
    for encounter_id, case_id in encounters.items():
        xray = _first(session, XrayImage, encounter_id)
        ecg = _first(session, EcgRecord, encounter_id)
        out[case_id] = {
            "thumbnail": thumbnail(_xray_pixels(blobs, xray)),
            "ecg_snippet": ecg_snippet(_ecg_signal(blobs, ecg), ecg) if ecg else None,
            "ecg_rate_hz": int(ecg.sampling_rate) if ecg else 0,
        }
    return out


def thumbnail(image: FloatArray | None, side: int = THUMBNAIL_SIDE) -> npt.NDArray[np.uint8] | None:
    """A ``side``×``side`` uint8 copy of a [0, 1] image, aspect kept, padded with black."""
    if image is None:
        return None
    grey = Image.fromarray(np.rint(np.clip(image, 0.0, 1.0) * 255.0).astype(np.uint8))
    padded = ImageOps.pad(grey, (side, side), method=Image.Resampling.BILINEAR, color=0)
    return np.asarray(padded, dtype=np.uint8)


def ecg_snippet(signal: FloatArray | None, row: EcgRecord) -> FloatArray | None:
    """The first 2.5 s of lead II (None when the lead is missing)."""
    if signal is None or SNIPPET_LEAD not in row.leads_present:
        return None
    samples = round(SNIPPET_SECONDS * int(row.sampling_rate))
    lead = STANDARD_LEADS.index(SNIPPET_LEAD)
    return np.asarray(signal[lead, :samples], dtype=np.float32)
