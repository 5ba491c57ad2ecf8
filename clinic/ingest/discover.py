"""Turn paths and manifests into :class:`IngestItem` values.

Tables (clinical records, labels) are expanded here into one item per row, so every item concerns
exactly one encounter and is committed (or quarantined) on its own. A folder holding a
``manifest.csv`` is read through its manifest, which is what links files to patients.
"""

from __future__ import annotations

import csv
from collections.abc import Iterator
from pathlib import Path

from clinic.ingest.errors import IngestError, ReasonCode
from clinic.ingest.types import IngestItem, ItemKind, LabelIn, LabelSource, LabelState, ReportKind

MANIFEST_NAME = "manifest.csv"
MANIFEST_COLUMNS = ("patient_id", "encounter_id", "kind", "path")
DICOM_SUFFIXES = {".dcm", ".dicom"}
RASTER_SUFFIXES = {".png", ".jpg", ".jpeg"}
TABLE_SUFFIXES = {".csv", ".parquet", ".tsv"}
TEXT_SUFFIXES = {".txt"}
TableRows = list[tuple[int, dict[str, str]]]  # (row number, cells as text)


def iter_items_from_paths(paths: list[Path]) -> Iterator[IngestItem]:
    """Items for files and folders given on the command line, in a stable order."""
    for path in paths:
        if not path.exists():
            raise IngestError(ReasonCode.FILE_UNREADABLE, f"{path} does not exist")
        if path.is_dir() and (path / MANIFEST_NAME).is_file():
            yield from iter_manifest_items(path / MANIFEST_NAME)
        elif path.is_file() and path.name == MANIFEST_NAME:
            yield from iter_manifest_items(path)
        elif path.is_dir():
            for file in sorted(p for p in path.rglob("*") if p.is_file()):
                yield from _items_for_file(file)
        else:
            yield from _items_for_file(path)


def _items_for_file(path: Path) -> Iterator[IngestItem]:
    suffix = path.suffix.lower()
    stem_key = f"file:{path.stem}"
    if path.name == MANIFEST_NAME:
        return
    if suffix in DICOM_SUFFIXES or (suffix == "" and _has_dicom_preamble(path)):
        yield IngestItem(kind=ItemKind.XRAY, source=str(path), path=path)
    elif suffix == ".hea":
        yield IngestItem(kind=ItemKind.ECG, source=str(path), path=path, patient_key=stem_key)
    elif suffix in RASTER_SUFFIXES:
        yield IngestItem(kind=ItemKind.XRAY, source=str(path), path=path, patient_key=stem_key)
    elif suffix in TEXT_SUFFIXES:
        fields = {"report_kind": _report_kind_from_name(path.name).value}
        yield IngestItem(
            kind=ItemKind.REPORT, source=str(path), path=path, patient_key=stem_key, fields=fields
        )
    elif suffix in TABLE_SUFFIXES:
        yield from iter_table_items(path)


def _has_dicom_preamble(path: Path) -> bool:
    with path.open("rb") as handle:
        return handle.read(132)[128:132] == b"DICM"


def _report_kind_from_name(name: str) -> ReportKind:
    lowered = name.lower()
    if "ecg" in lowered or "ekg" in lowered:
        return ReportKind.ECG
    if any(word in lowered for word in ("radiology", "cxr", "xray", "x-ray", "chest")):
        return ReportKind.RADIOLOGY
    return ReportKind.CLINICAL_NOTE


def iter_table_items(path: Path, kind: ItemKind | None = None) -> Iterator[IngestItem]:
    """One item per row of a records or labels table (labels: one item per encounter).

    A table that is missing or unreadable becomes one item carrying the refusal, so it is
    quarantined with its reason like any other input instead of stopping the run.
    """
    from clinic.ingest.records import read_raw_table

    try:
        rows = list(read_raw_table(path))  # read (and decoded) once, whatever the table holds
    except (IngestError, OSError) as error:
        yield refused_item(kind or ItemKind.RECORD, path, error)
        return
    columns = {column.strip().lower() for column in rows[0][1]} if rows else set()
    if kind is ItemKind.LABELS or "label" in columns:
        yield from _iter_label_items(path, rows)
    elif kind is ItemKind.REPORT or columns & REPORT_TEXT_COLUMNS:
        yield from _iter_report_rows(path, rows)
    else:
        yield from _iter_record_items(path, rows)


def _iter_record_items(path: Path, rows: TableRows) -> Iterator[IngestItem]:
    for row_number, row in rows:
        patient = (row.pop("patient_id", None) or "").strip() or None
        encounter = (row.pop("encounter_id", None) or "").strip() or None
        yield IngestItem(
            kind=ItemKind.RECORD,
            source=f"{path}#row={row_number}",
            patient_key=patient,
            encounter_key=encounter,
            fields=dict(row),
        )


REPORT_TEXT_COLUMNS = frozenset(
    {"report", "report_text", "text", "indication", "findings", "impression"}
)
# Section columns are joined under headings so the report splitter finds them again.
_SECTION_COLUMNS = ("indication", "comparison", "technique", "findings", "impression")


def _iter_report_rows(path: Path, rows: TableRows) -> Iterator[IngestItem]:
    """One report per row of a table with a text column (or indication/findings/impression)."""
    for row_number, raw in rows:
        row = {key.strip().lower(): value for key, value in raw.items()}
        yield IngestItem(
            kind=ItemKind.REPORT,
            source=f"{path}#row={row_number}",
            text=compose_report_text(row),
            patient_key=(row.get("patient_id") or "").strip() or None,
            encounter_key=(row.get("encounter_id") or "").strip() or None,
            fields={"report_kind": (row.get("report_kind") or "").strip() or "clinical_note"},
        )


def compose_report_text(row: dict[str, str]) -> str:
    """The row's free text, or its section columns joined under their headings."""
    for column in ("report_text", "report", "text"):
        if (row.get(column) or "").strip():
            return row[column]
    sections = [
        f"{name.upper()}: {row[name].strip()}"
        for name in _SECTION_COLUMNS
        if (row.get(name) or "").strip()
    ]
    return "\n".join(sections)


def _iter_label_items(path: Path, rows: TableRows) -> Iterator[IngestItem]:
    grouped: dict[tuple[str, str], list[LabelIn]] = {}
    first_row: dict[tuple[str, str], int] = {}
    for row_number, row in rows:
        source = f"{path}#row={row_number}"
        key = ((row.get("patient_id") or "").strip(), (row.get("encounter_id") or "").strip())
        try:
            label = parse_label_row(row, source)
        except IngestError as error:
            yield refused_item(ItemKind.LABELS, path, error, source=source, fields=dict(row))
            continue
        grouped.setdefault(key, []).append(label)
        first_row.setdefault(key, row_number)
    for (patient, encounter), labels in grouped.items():
        yield IngestItem(
            kind=ItemKind.LABELS,
            source=f"{path}#row={first_row[(patient, encounter)]}",
            patient_key=patient or None,
            encounter_key=encounter or None,
            labels=tuple(labels),
        )


def parse_label_row(row: dict[str, str], source: str) -> LabelIn:
    """A label from a ``label,value,state,uncertainty,source,vocabulary`` row."""
    try:
        value_text = (row.get("value") or "").strip()
        uncertainty_text = (row.get("uncertainty") or "").strip()
        return LabelIn(
            name=row["label"].strip(),
            value=float(value_text) if value_text else None,
            state=LabelState((row.get("state") or "positive").strip() or "positive"),
            uncertainty=float(uncertainty_text) if uncertainty_text else None,
            source=LabelSource((row.get("source") or "ground_truth").strip() or "ground_truth"),
            vocabulary=(row.get("vocabulary") or "clinic").strip() or "clinic",
        )
    except (KeyError, ValueError) as error:
        raise IngestError(
            ReasonCode.IMPORT_ROW_INVALID, f"{source}: invalid label row ({error})"
        ) from error


def iter_manifest_items(manifest: Path) -> Iterator[IngestItem]:
    """Items from a manifest: ``patient_id,encounter_id,kind,path[,report_kind][,split]``."""
    base = manifest.parent
    with manifest.open(newline="", encoding="utf-8-sig") as handle:
        reader = csv.DictReader(handle)
        missing = [c for c in MANIFEST_COLUMNS if c not in (reader.fieldnames or [])]
        if missing:
            raise IngestError(
                ReasonCode.MANIFEST_INVALID,
                f"{manifest} lacks the column(s) {', '.join(missing)}",
            )
        for row_number, row in enumerate(reader, start=2):
            yield from _manifest_row_items(base, row, f"{manifest}#row={row_number}")


def _manifest_row_items(base: Path, row: dict[str, str], source: str) -> Iterator[IngestItem]:
    try:
        kind = ItemKind(row["kind"].strip().lower())
    except ValueError as error:
        raise IngestError(
            ReasonCode.MANIFEST_INVALID, f"{source}: unknown kind {row['kind']!r}"
        ) from error
    path = base / row["path"].strip()
    if kind in (ItemKind.RECORD, ItemKind.LABELS) or (
        kind is ItemKind.REPORT and path.suffix.lower() in TABLE_SUFFIXES
    ):
        yield from iter_table_items(path, kind)
        return
    fields: dict[str, object] = {}
    if kind is ItemKind.REPORT:
        fields["report_kind"] = (row.get("report_kind") or "").strip() or "clinical_note"
    yield IngestItem(
        kind=kind,
        source=str(path),
        path=path,
        patient_key=(row.get("patient_id") or "").strip() or None,
        encounter_key=(row.get("encounter_id") or "").strip() or None,
        fields=fields,
        split=(row.get("split") or "").strip() or None,
    )


REFUSAL_FIELD = "_refusal"


def refused_item(
    kind: ItemKind,
    path: Path,
    error: IngestError | OSError,
    *,
    source: str | None = None,
    fields: dict[str, object] | None = None,
) -> IngestItem:
    """An item that is already known to be bad; the engine quarantines it with this reason."""
    if isinstance(error, IngestError):
        reason, message = error.reason, error.message
    elif isinstance(error, FileNotFoundError):
        reason, message = ReasonCode.MANIFEST_FILE_MISSING, f"{path} does not exist"
    else:
        reason, message = ReasonCode.FILE_UNREADABLE, f"{path} cannot be read ({error.strerror})"
    content = dict(fields or {})
    content[REFUSAL_FIELD] = [reason.value, message]
    return IngestItem(kind=kind, source=source or str(path), path=path, fields=content)
