"""UCI Heart Disease (Cleveland, Hungary, Switzerland, VA Long Beach): one CSV, one row a patient.

``root`` is the CSV itself or a folder holding ``heart_disease_uci.csv``. Each row is one patient
seen once: ``patient_key = encounter_key = "<dataset>-<id>"`` (ids are only unique within the
combined file, the prefix keeps them readable per centre).

* RECORD: age, sex, ``trestbps`` → ``systolic_bp_mmhg`` (resting systolic pressure). ``thalch`` is
  the *maximum heart rate reached during exercise*, not a resting rate, so it is the extra
  ``max_heart_rate_bpm`` and never ``heart_rate_bpm``. The other attributes are extras with
  descriptive names. A 0 for resting blood pressure or cholesterol is the source's missing-value
  code (Switzerland reports every cholesterol as 0), so it becomes None.
* LABELS (vocabulary "uci_heart_disease", ground truth: angiographic diagnosis): ``heart_disease``
  (``num > 0``, positive or negative) and ``heart_disease_grade`` carrying ``num`` (0–4) as value.
"""

from __future__ import annotations

from collections.abc import Iterator, Mapping
from dataclasses import dataclass
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
    parse_bool,
    parse_float,
    parse_id,
    read_rows,
)
from clinic.ingest.types import IngestItem, ItemKind, LabelIn, LabelSource, LabelState

DATASET = "heart-disease"
FILE_NAME = "heart_disease_uci.csv"
VOCABULARY = "uci_heart_disease"
_SEX = {"male": "male", "female": "female", "m": "male", "f": "female", "1": "male", "0": "female"}
_TEXT_EXTRAS = {
    "cp": "chest_pain_type",
    "restecg": "resting_ecg",
    "slope": "st_slope",
    "thal": "thallium_scan",
}
_NUMBER_EXTRAS = {
    "thalch": "max_heart_rate_bpm",
    "oldpeak": "st_depression_mm",
    "ca": "fluoroscopy_vessels",
}
_BOOL_EXTRAS = {"fbs": "fasting_glucose_over_120_mg_dl", "exang": "exercise_angina"}
_ZERO_IS_MISSING = {"trestbps", "chol"}
_REQUIRED = ("id", "dataset", "age", "sex", "num")


@dataclass(frozen=True)
class _Row:
    """One patient row with its key resolved."""

    source: str
    values: Mapping[str, str]
    key: str


def import_heart_disease(root: Path) -> Iterator[IngestItem]:
    """RECORD and LABELS items for every row of the CSV (``root`` is the file or its folder)."""
    table = root / FILE_NAME if root.is_dir() else root
    if not table.is_file():
        raise layout_error(DATASET, f"{FILE_NAME} not found at the import root")
    return _iter_items(table, read_rows(table, _REQUIRED, DATASET))


def _iter_items(table: Path, rows: Iterator[tuple[int, dict[str, str]]]) -> Iterator[IngestItem]:
    """Two items per row; a row without id yields one error item."""
    builders: list[Builder[_Row]] = [
        (ItemKind.RECORD, record_item),
        (ItemKind.LABELS, labels_item),
    ]
    yield from items_per_row(table, rows, _resolve_row, builders, _keys)


def _resolve_row(source: str, values: dict[str, str]) -> _Row:
    return _Row(source, values, patient_key(values))


def _keys(row: _Row) -> tuple[str | None, str | None]:
    return row.key, row.key


def patient_key(values: Mapping[str, str]) -> str:
    """``"<dataset>-<id>"``, e.g. ``Cleveland-1``."""
    dataset = values["dataset"]
    if is_missing(dataset):
        raise RowError(ReasonCode.RECORD_MISSING_ID, "column dataset is empty")
    return f"{dataset}-{parse_id(values['id'], 'id')}"


def _measure(values: Mapping[str, str], column: str) -> float | None:
    """A measurement, with the source's 0-as-missing code undone where it applies."""
    value = parse_float(values.get(column, ""), column)
    if column in _ZERO_IS_MISSING and value == 0.0:
        return None
    return value


def record_item(row: _Row) -> IngestItem:
    """Core fields (age, sex, resting systolic BP) and the study's attributes as extras."""
    values = row.values
    fields: dict[str, object] = age_fields(values["age"], "age")
    fields["sex"] = map_sex(values["sex"], _SEX)
    fields["systolic_bp_mmhg"] = _measure(values, "trestbps")
    fields["cholesterol_mg_dl"] = _measure(values, "chol")
    fields["dataset"] = values["dataset"]
    for column, name in _NUMBER_EXTRAS.items():
        fields[name] = _measure(values, column)
    for column, name in _BOOL_EXTRAS.items():
        fields[name] = parse_bool(values.get(column, ""), column)
    for column, name in _TEXT_EXTRAS.items():
        text = values.get(column, "")
        fields[name] = None if is_missing(text) else text
    return IngestItem(
        kind=ItemKind.RECORD,
        source=row.source,
        patient_key=row.key,
        encounter_key=row.key,
        fields=fields,
    )


def disease_labels(raw: str) -> tuple[LabelIn, ...]:
    """``num`` → binary ``heart_disease`` and graded ``heart_disease_grade`` (0–4)."""
    grade = parse_float(raw, "num")
    if grade is None:
        return ()
    if grade not in {0.0, 1.0, 2.0, 3.0, 4.0}:
        raise RowError(ReasonCode.IMPORT_LABELS_INVALID, "column num is not a grade 0-4")
    present = grade > 0
    graded = LabelIn(
        name="heart_disease_grade",
        value=grade,
        state=LabelState.POSITIVE if present else LabelState.NEGATIVE,
        source=LabelSource.GROUND_TRUTH,
        vocabulary=VOCABULARY,
    )
    return binary_label("heart_disease", present, VOCABULARY), graded


def labels_item(row: _Row) -> IngestItem:
    """The diagnosis labels of one patient (none when ``num`` is empty)."""
    try:
        labels = disease_labels(row.values["num"])
    except RowError as error:
        if error.reason is ReasonCode.IMPORT_ROW_INVALID:
            raise RowError(ReasonCode.IMPORT_LABELS_INVALID, error.message) from None
        raise
    return IngestItem(
        kind=ItemKind.LABELS,
        source=row.source,
        patient_key=row.key,
        encounter_key=row.key,
        labels=labels,
    )
