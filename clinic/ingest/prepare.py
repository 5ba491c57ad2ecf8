"""Worker side of ingestion: decode, validate and de-identify one item, write its blobs.

Runs in a worker process. Returns plain, picklable values: a :class:`Prepared` with the rows to
insert (foreign keys resolved later by the writer) or a :class:`Refused` with a specific reason.
Blobs are written here, before any row that references them can be committed.

The readers are imported inside the functions that use them: they pull in scipy, pydicom's
decoders and wfdb, which the worker processes preload once (``engine.WORKER_PRELOAD``) but which
``clinic status`` and the other light commands should not pay for at start-up.
"""

from __future__ import annotations

import datetime as dt
import hashlib
import json
from collections.abc import Callable
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

from clinic.ingest.discover import REFUSAL_FIELD
from clinic.ingest.errors import IngestError, ReasonCode
from clinic.ingest.pseudonym import Pseudonymizer
from clinic.ingest.types import (
    STANDARD_LEADS,
    DecodedEcg,
    IngestItem,
    ItemKind,
    LabelIn,
    SourceIdentity,
)
from clinic.store.blobs import BlobStore, encode_unit_image

DEFAULT_ENCOUNTER = "default"


@dataclass(frozen=True)
class PrepareContext:
    """Everything a worker needs; built once per worker process."""

    pseudonymizer: Pseudonymizer
    blobs: BlobStore
    ecg_sampling_rate: int = 500
    ecg_duration_s: float = 10.0
    record_schema: str = "clinical_record_v1"
    crash_contained: bool = False  # decoding runs in a supervised worker (see supervisor.py)


@dataclass(frozen=True)
class Prepared:
    """An item ready to be written: one encounter, at most one modality row, its labels."""

    item_sha256: str
    kind: ItemKind
    source: str
    patient: str
    encounter: str
    split: str | None
    study_date_shifted: dt.date | None
    table: str | None
    row: dict[str, Any]
    labels: tuple[dict[str, Any], ...] = ()
    blobs: tuple[str, ...] = field(default=())


@dataclass(frozen=True)
class Refused:
    item_sha256: str
    kind: ItemKind
    source: str
    reason: str
    message: str


Outcome = Prepared | Refused


def content_sha256(item: IngestItem) -> str:
    """The idempotency key of an item: sha256 of its file's bytes, or of its canonical content.

    A file that *is* the item (an image, an ECG record, a report file) is keyed by its bytes
    alone, so the same bytes under another name or linked to another patient are "already
    stored", never a second copy. Rows (records, labels, inline reports, refusals) are keyed by
    their canonical JSON, source ids included.
    """
    digest = hashlib.sha256(item.kind.value.encode())
    whole_file = (
        item.path is not None
        and item.text is None
        and REFUSAL_FIELD not in item.fields
        and item.kind in (ItemKind.XRAY, ItemKind.ECG, ItemKind.REPORT)
        and item.path.is_file()
    )
    if whole_file:
        for path in _content_files(item):
            digest.update(path.read_bytes())
        return digest.hexdigest()
    inline = {
        "patient": item.patient_key,
        "encounter": item.encounter_key,
        "text": item.text,
        "fields": item.fields,
        "labels": [asdict(label) for label in item.labels],
        "path": None if item.path is None else str(item.path),
    }
    digest.update(json.dumps(inline, sort_keys=True, default=str).encode())
    return digest.hexdigest()


def _content_files(item: IngestItem) -> list[Path]:
    assert item.path is not None
    if item.path.suffix.lower() == ".hea":
        return [item.path, *wfdb_data_files(item.path)]
    return [item.path]


def wfdb_data_files(header: Path) -> list[Path]:
    """The signal files a WFDB header names (first token of each signal line), that exist."""
    names: list[str] = []
    lines = [ln for ln in header.read_text(errors="replace").splitlines() if ln.strip()]
    for line in lines[1:]:
        if line.startswith("#"):
            continue
        name = line.split()[0]
        if name not in names and name != "~":
            names.append(name)
    return [header.parent / name for name in names if (header.parent / name).is_file()]


def prepare_item(item: IngestItem, sha256: str, context: PrepareContext) -> Outcome:
    """Decode one item into rows and blobs, or refuse it with a specific reason."""
    try:
        _refuse_if_flagged(item)
        if item.path is not None and not item.path.is_file():
            raise IngestError(ReasonCode.MANIFEST_FILE_MISSING, f"{item.path} does not exist")
        return PREPARERS[item.kind](item, sha256, context)
    except IngestError as error:
        return Refused(sha256, item.kind, item.source, error.reason.value, error.message)
    except Exception as error:  # a reader bug must not stop the run; keep the kind's own code
        reason = UNEXPECTED_FAILURE_REASON[item.kind]
        message = f"the {item.kind.value} reader failed unexpectedly ({type(error).__name__})"
        return Refused(sha256, item.kind, item.source, reason.value, message)


def _refuse_if_flagged(item: IngestItem) -> None:
    refusal = item.fields.get(REFUSAL_FIELD)
    if refusal:
        raise IngestError(ReasonCode(refusal[0]), str(refusal[1]))


@dataclass(frozen=True)
class _Link:
    patient: str
    encounter: str
    patient_source_keys: tuple[str, ...]
    date_shift_days: int


def _link(item: IngestItem, context: PrepareContext, identity: SourceIdentity) -> _Link:
    """Pseudonyms for the item's patient and encounter (header ids when the item has none)."""
    patient_key = item.patient_key or identity.patient_id
    if not patient_key:
        if item.path is None:
            raise IngestError(ReasonCode.RECORD_MISSING_ID, f"{item.source}: no patient id")
        patient_key = f"file:{item.path.stem}"
    encounter_key = item.encounter_key or identity.study_uid or DEFAULT_ENCOUNTER
    pseudonyms = context.pseudonymizer
    patient = pseudonyms.patient(patient_key)
    return _Link(
        patient=patient,
        encounter=pseudonyms.encounter(patient_key, encounter_key),
        patient_source_keys=tuple(k for k in (patient_key, item.encounter_key) if k),
        date_shift_days=pseudonyms.date_shift_days(patient),
    )


def _shifted_date(dicom_date: str | None, shift_days: int) -> dt.date | None:
    if not dicom_date or len(dicom_date) < 8 or not dicom_date[:8].isdigit():
        return None
    try:
        parsed = dt.date(int(dicom_date[:4]), int(dicom_date[4:6]), int(dicom_date[6:8]))
    except ValueError:
        return None
    return parsed + dt.timedelta(days=shift_days)


def _label_rows(labels: tuple[LabelIn, ...], sha256: str) -> tuple[dict[str, Any], ...]:
    return tuple(
        {
            "name": label.name,
            "value": label.value,
            "state": label.state.value,
            "uncertainty": label.uncertainty,
            "source": label.source.value,
            "vocabulary": label.vocabulary,
            "source_sha256": sha256,
        }
        for label in labels
    )


def _prepared(
    item: IngestItem,
    sha256: str,
    link: _Link,
    table: str | None,
    row: dict[str, Any],
    *,
    kind: ItemKind | None = None,
    study_date: dt.date | None = None,
) -> Prepared:
    return Prepared(
        item_sha256=sha256,
        kind=kind or item.kind,
        source=item.source,
        patient=link.patient,
        encounter=link.encounter,
        split=item.split,
        study_date_shifted=study_date,
        table=table,
        row={"source_sha256": sha256, **row} if table else {},
        labels=_label_rows(item.labels, sha256),
    )


def _prepare_xray(item: IngestItem, sha256: str, context: PrepareContext) -> Prepared:
    assert item.path is not None
    if item.path.suffix.lower() in {".png", ".jpg", ".jpeg"}:
        return _prepare_raster_xray(item, sha256, context)
    return _prepare_dicom(item, sha256, context)


def _prepare_raster_xray(item: IngestItem, sha256: str, context: PrepareContext) -> Prepared:
    from clinic.ingest.xray import read_raster_xray

    assert item.path is not None
    decoded = read_raster_xray(item.path)
    link = _link(item, context, decoded.identity)
    file_blob = context.blobs.put(item.path.read_bytes())
    pixels_blob = context.blobs.put_array(encode_unit_image(decoded.pixels))
    attributes = {**decoded.attributes, **_attribute_overrides(item)}
    return _prepared(
        item, sha256, link, "xray_images", _xray_row(decoded, attributes, file_blob, pixels_blob)
    )


def _attribute_overrides(item: IngestItem) -> dict[str, Any]:
    """DICOM-keyword fields an importer knows better than the file (e.g. ViewPosition of a PNG)."""
    return {k: v for k, v in item.fields.items() if k[:1].isupper()}


def _xray_row(
    decoded: Any, attributes: dict[str, Any], file_blob: str, pixels_blob: str
) -> dict[str, Any]:
    window = decoded.window
    spacing = attributes.get("PixelSpacing") or attributes.get("ImagerPixelSpacing")
    return {
        "file_blob": file_blob,
        "pixels_blob": pixels_blob,
        "raw_pixel_sha256": decoded.raw_sha256,
        "source_format": decoded.source_format,
        "Modality": attributes.get("Modality"),
        "ViewPosition": attributes.get("ViewPosition"),
        "PhotometricInterpretation": attributes.get("PhotometricInterpretation"),
        "BitsStored": attributes.get("BitsStored"),
        "Rows": int(decoded.pixels.shape[0]),
        "Columns": int(decoded.pixels.shape[1]),
        "PixelSpacing": list(spacing) if spacing else None,
        "TransferSyntaxUID": attributes.get("TransferSyntaxUID"),
        "window_center": window[0] if window else None,
        "window_width": window[1] if window else None,
        "attributes": attributes,
    }


def _prepare_dicom(item: IngestItem, sha256: str, context: PrepareContext) -> Prepared:
    """A DICOM file is routed by content: a waveform object is an ECG, anything else an X-ray."""
    from clinic.ingest.dicom_io import is_waveform, load_dicom
    from clinic.ingest.ecg import read_dicom_ecg
    from clinic.ingest.xray import decode_dicom_xray

    assert item.path is not None
    dataset = load_dicom(item.path)
    if is_waveform(dataset):
        ecg = read_dicom_ecg(
            dataset, target_rate=context.ecg_sampling_rate, duration_s=context.ecg_duration_s
        )
        link = _link(item, context, ecg.identity)
        source_blob = _store_deidentified(dataset, link, context)
        study_date = _shifted_date(ecg.identity.study_date, link.date_shift_days)
        row = _ecg_row(ecg, context, [source_blob])
        return _prepared(
            item, sha256, link, "ecg_records", row, kind=ItemKind.ECG, study_date=study_date
        )
    decoded = decode_dicom_xray(dataset, crash_contained=context.crash_contained)
    link = _link(item, context, decoded.identity)
    file_blob = _store_deidentified(dataset, link, context)
    pixels_blob = context.blobs.put_array(encode_unit_image(decoded.pixels))
    attributes = {**decoded.attributes, **_attribute_overrides(item)}
    study_date = _shifted_date(decoded.identity.study_date, link.date_shift_days)
    row = _xray_row(decoded, attributes, file_blob, pixels_blob)
    return _prepared(
        item, sha256, link, "xray_images", row, kind=ItemKind.XRAY, study_date=study_date
    )


def _store_deidentified(dataset: Any, link: _Link, context: PrepareContext) -> str:
    """Write the de-identified DICOM (never the original) as a blob; return its hash."""
    from clinic.ingest.dicom_deid import deidentify_dicom, dicom_to_bytes

    clean = deidentify_dicom(
        dataset,
        patient_pseudonym=link.patient,
        date_shift_days=link.date_shift_days,
        uid_secret=context.pseudonymizer.uid_secret(),
        in_place=True,  # the dataset has been read; nothing uses the original afterwards
    )
    return context.blobs.put(dicom_to_bytes(clean))


def _ecg_row(ecg: DecodedEcg, context: PrepareContext, source_blobs: list[str]) -> dict[str, Any]:
    leads_present = [lead for lead, ok in zip(STANDARD_LEADS, ecg.lead_mask, strict=True) if ok]
    return {
        "signal_blob": context.blobs.put_array(ecg.signal),
        "source_blobs": source_blobs,
        "source_format": ecg.source_format,
        "sampling_rate": ecg.sampling_rate,
        "source_sampling_rate": float(ecg.source_sampling_rate),
        "duration_s": ecg.duration_s,
        "source_duration_s": float(ecg.source_duration_s),
        "leads_present": leads_present,
        "dropped_leads": list(ecg.dropped_leads),
        "quality_flags": {lead: list(flags) for lead, flags in ecg.quality_flags.items()},
        "has_quality_issue": any(ecg.quality_flags.values()),
    }


def _prepare_ecg(item: IngestItem, sha256: str, context: PrepareContext) -> Prepared:
    from clinic.ingest.ecg import read_wfdb_ecg

    assert item.path is not None
    if item.path.suffix.lower() in {".dcm", ".dicom"}:
        return _prepare_dicom(item, sha256, context)
    ecg = read_wfdb_ecg(
        item.path, target_rate=context.ecg_sampling_rate, duration_s=context.ecg_duration_s
    )
    link = _link(item, context, ecg.identity)
    source_blobs = [context.blobs.put(_header_without_comments(item.path))]
    source_blobs += [context.blobs.put(path.read_bytes()) for path in wfdb_data_files(item.path)]
    row = _ecg_row(ecg, context, source_blobs)
    return _prepared(item, sha256, link, "ecg_records", row)


def _header_without_comments(header: Path) -> bytes:
    """WFDB header comments may carry patient details; the stored copy drops them."""
    lines = header.read_bytes().splitlines(keepends=True)
    return b"".join(line for line in lines if not line.lstrip().startswith(b"#"))


def _prepare_report(item: IngestItem, sha256: str, context: PrepareContext) -> Prepared:
    from clinic.ingest.reports import read_report

    data = item.path.read_bytes() if item.path is not None else (item.text or "").encode()
    link = _link(item, context, SourceIdentity())
    known = [*link.patient_source_keys, *item.fields.get("known_identifiers", [])]
    report = read_report(data, known_identifiers=known)
    row = {
        "kind": str(item.fields.get("report_kind") or "clinical_note"),
        "text": report.text,
        "sections": dict(report.sections),
        "encoding": report.encoding,
        "language": item.fields.get("language"),
        "scrubbed_count": report.scrubbed_count,
    }
    return _prepared(item, sha256, link, "reports", row)


def _prepare_record(item: IngestItem, sha256: str, context: PrepareContext) -> Prepared:
    from clinic.ingest.records import validate_record
    from schemas.clinical_record import load_record_schema

    if not item.patient_key:
        raise IngestError(ReasonCode.RECORD_MISSING_ID, f"{item.source}: the row has no patient id")
    schema = load_record_schema(context.record_schema)
    record = validate_record(item.fields, schema)
    link = _link(item, context, SourceIdentity())
    row = {
        "schema_name": f"{schema.name}",
        **record.core,
        "extras": record.extras,
        "warnings": list(record.warnings),
    }
    return _prepared(item, sha256, link, "clinical_records", row)


def _prepare_labels(item: IngestItem, sha256: str, context: PrepareContext) -> Prepared:
    if not item.patient_key:
        raise IngestError(ReasonCode.RECORD_MISSING_ID, f"{item.source}: labels without patient id")
    link = _link(item, context, SourceIdentity())
    return _prepared(item, sha256, link, None, {})


PREPARERS: dict[ItemKind, Callable[[IngestItem, str, PrepareContext], Prepared]] = {
    ItemKind.XRAY: _prepare_xray,
    ItemKind.ECG: _prepare_ecg,
    ItemKind.REPORT: _prepare_report,
    ItemKind.RECORD: _prepare_record,
    ItemKind.LABELS: _prepare_labels,
}

UNEXPECTED_FAILURE_REASON: dict[ItemKind, ReasonCode] = {
    ItemKind.XRAY: ReasonCode.DICOM_DECODE_FAILED,
    ItemKind.ECG: ReasonCode.ECG_DECODE_FAILED,
    ItemKind.REPORT: ReasonCode.REPORT_UNDECODABLE,
    ItemKind.RECORD: ReasonCode.RECORD_UNREADABLE,
    ItemKind.LABELS: ReasonCode.IMPORT_ROW_INVALID,
}
