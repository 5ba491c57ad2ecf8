"""Hannover Medical School COVID-19 image repository: ``data.csv`` + ``png/<image_id>.png``.

Each row is one radiograph of one patient, so the exam is the encounter
(``patient_key = patient_id``, ``encounter_key = image_id``). Per row:

* XRAY: ``png/<image_id>.png`` with ViewPosition (``ap``/``pa`` → AP/PA) and Modality (CR/DX). A
  row whose PNG is absent still yields the item, pointing at the expected path, so the engine
  quarantines it as ``MANIFEST_FILE_MISSING``.
* RECORD: sex (m/w/f), age/size/weight when the source publishes them (currently redacted: an
  interval such as ``61-70`` is kept as the extra ``age_bin`` rather than invented as a number),
  and as extras every admission/ICU/death offset (days relative to the exam) and every binned lab
  value with the day offset of its measurement. Labs are *not* mapped to core fields such as
  ``crp_mg_l``: they are interval-coded and may be days away from the exam. Values below/above the
  detection limit (``-inf``/``inf``) become None plus ``<lab>_censored``.
* LABELS (vocabulary "hannover"): ``icu_admission`` (an ICU admission offset is recorded) and
  ``death`` (a death offset is recorded), each positive or explicitly negative: the source uses
  an empty offset for "did not happen".

``acquired_offset_days`` is the exam's day relative to hospital admission (``-admission_offset``):
a per-patient anchor, never a calendar date.
"""

from __future__ import annotations

import math
import re
from collections.abc import Iterator, Mapping
from dataclasses import dataclass
from functools import partial
from pathlib import Path

from clinic.ingest.errors import ReasonCode
from clinic.ingest.importers._common import (
    Builder,
    RowError,
    age_fields,
    binary_label,
    is_missing,
    items_per_row,
    layout_error,
    map_sex,
    parse_float,
    read_rows,
    require_dir,
    require_table,
)
from clinic.ingest.types import IngestItem, ItemKind

DATASET = "hannover"
VOCABULARY = "hannover"
_SEX = {"m": "male", "f": "female", "w": "female", "male": "male", "female": "female"}
_VIEWS = {"ap": "AP", "pa": "PA", "ll": "LL", "rl": "RL", "lat": "LATERAL", "lateral": "LATERAL"}
_EVENT_OFFSETS = ("admission_offset", "icu_admission_offset", "icu_release_offset", "death_offset")
_LABS = ("crp", "d-dimer", "factor_xii", "ldh", "lymphocytes", "neutrophils", "pco2", "po2")
_REQUIRED = ("patient_id", "image_id")
_AGE_BIN = re.compile(r"^\s*(\d+)\s*-\s*(\d+)\s*$")


@dataclass(frozen=True)
class _Row:
    """One data.csv row with its keys resolved."""

    root: Path
    source: str
    values: Mapping[str, str]
    patient_key: str
    encounter_key: str
    offset_days: float | None


def import_hannover(root: Path) -> Iterator[IngestItem]:
    """Items for every row of ``root/data.csv`` (layout checked before iterating)."""
    require_dir(root, DATASET)
    table = require_table(root, "data", DATASET)
    if not (root / "png").is_dir():
        raise layout_error(DATASET, "png/ folder not found in the import root")
    return _iter_items(root, table, read_rows(table, _REQUIRED, DATASET))


def _iter_items(
    root: Path, table: Path, rows: Iterator[tuple[int, dict[str, str]]]
) -> Iterator[IngestItem]:
    """XRAY, RECORD and LABELS per row; a row without ids yields one error item."""
    builders: list[Builder[_Row]] = [
        (ItemKind.XRAY, xray_item),
        (ItemKind.RECORD, record_item),
        (ItemKind.LABELS, labels_item),
    ]
    resolve = partial(_resolve_row, root)
    yield from items_per_row(table, rows, resolve, builders, _keys)


def _keys(row: _Row) -> tuple[str | None, str | None]:
    return row.patient_key, row.encounter_key


def _resolve_row(root: Path, source: str, values: Mapping[str, str]) -> _Row:
    """Keys and the exam's day since admission for one row."""
    patient_key = _text_id(values["patient_id"], "patient_id")
    encounter_key = _text_id(values["image_id"], "image_id")
    admission = parse_float(values.get("admission_offset", ""), "admission_offset")
    offset = None if admission is None else 0.0 - admission
    return _Row(root, source, values, patient_key, encounter_key, offset)


def _text_id(raw: str, column: str) -> str:
    """A random hex identifier kept exactly as given (it is also the PNG's file name).

    Not parsed as a number: leading zeros matter. A value that could escape ``png/`` is refused.
    """
    text = raw.strip()
    if is_missing(text):
        raise RowError(ReasonCode.RECORD_MISSING_ID, f"column {column} is empty")
    if "/" in text or "\\" in text or text.startswith("."):
        raise RowError(ReasonCode.IMPORT_ROW_INVALID, f"column {column} is not a plain name")
    return text


def xray_item(row: _Row) -> IngestItem:
    """The PNG with its projection and modality as DICOM-keyword overrides."""
    path = row.root / "png" / f"{row.encounter_key}.png"
    fields: dict[str, object] = {}
    projection = row.values.get("projection", "").lower()
    if projection:
        fields["ViewPosition"] = _VIEWS.get(projection, projection.upper())
    modality = row.values.get("modality", "")
    if modality:
        fields["Modality"] = modality.upper()
    return IngestItem(
        kind=ItemKind.XRAY,
        source=str(path),
        path=path,
        patient_key=row.patient_key,
        encounter_key=row.encounter_key,
        fields=fields,
        acquired_offset_days=row.offset_days,
    )


def record_item(row: _Row) -> IngestItem:
    """Sex, (redacted) body measures, event offsets and binned labs with their offsets."""
    values = row.values
    fields: dict[str, object] = {"sex": map_sex(values.get("sex", ""), _SEX)}
    fields.update(_age(values.get("age", "")))
    for column, name in (("size", "height_cm"), ("weight", "weight_kg")):
        fields[name] = _number_or_bin(values.get(column, ""), column, fields, f"{column}_bin")
    for column in _EVENT_OFFSETS:
        fields[f"{column}_days"] = parse_float(values.get(column, ""), column)
    for lab in _LABS:
        fields.update(lab_fields(lab, values))
    return IngestItem(
        kind=ItemKind.RECORD,
        source=row.source,
        patient_key=row.patient_key,
        encounter_key=row.encounter_key,
        fields=fields,
        acquired_offset_days=row.offset_days,
    )


def _age(raw: str) -> dict[str, object]:
    """Age in years when given as a number; an interval is kept verbatim as ``age_bin``."""
    if _AGE_BIN.match(raw):
        return {"age_years": None, "age_bin": raw.replace(" ", "")}
    return age_fields(raw, "age")


def _number_or_bin(raw: str, column: str, fields: dict[str, object], bin_name: str) -> float | None:
    """A number, or None with the interval text stored under ``bin_name``."""
    if _AGE_BIN.match(raw):
        fields[bin_name] = raw.replace(" ", "")
        return None
    return parse_float(raw, column)


def lab_fields(lab: str, values: Mapping[str, str]) -> dict[str, object]:
    """``<lab>_val`` and ``<lab>_offset_days`` for one lab (names made identifier-safe).

    ``-inf``/``inf`` mean below/above the detection limit: JSON cannot carry them, so the value
    is None and ``<lab>_censored`` says which side.
    """
    name = lab.replace("-", "_")
    raw = values.get(f"{lab}_val", "")
    if is_missing(raw):
        return {}
    fields: dict[str, object] = {}
    try:
        number = float(raw)
    except ValueError:
        raise RowError(ReasonCode.IMPORT_ROW_INVALID, f"column {lab}_val is not a number") from None
    if math.isinf(number):
        fields[f"{name}_val"] = None
        side = "below" if number < 0 else "above"
        fields[f"{name}_censored"] = f"{side}_detection_limit"
    elif math.isnan(number):
        return {}
    else:
        fields[f"{name}_val"] = number
    fields[f"{name}_offset_days"] = parse_float(values.get(f"{lab}_offset", ""), f"{lab}_offset")
    return fields


def labels_item(row: _Row) -> IngestItem:
    """ICU admission and death during the stay, from whether their offsets are recorded."""
    icu = not is_missing(row.values.get("icu_admission_offset", ""))
    died = not is_missing(row.values.get("death_offset", ""))
    labels = (
        binary_label("icu_admission", icu, VOCABULARY),
        binary_label("death", died, VOCABULARY),
    )
    return IngestItem(
        kind=ItemKind.LABELS,
        source=row.source,
        patient_key=row.patient_key,
        encounter_key=row.encounter_key,
        labels=labels,
        acquired_offset_days=row.offset_days,
    )
