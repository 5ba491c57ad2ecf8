"""Helpers shared by the dataset importers: tables, value parsing, label states and row errors.

Importers never raise for one bad row, because the engine consumes one lazy iterator and an
exception would lose every row after it. A row (or one item of a row) that cannot be turned into a
well-formed item is yielded as an *error item*: an :class:`IngestItem` flagged with the engine's
refusal field (``fields["_refusal"] = [reason, message]``, see
:func:`clinic.ingest.discover.refused_item`), which the engine quarantines under that reason.
Layout problems (a required table missing) are raised at once as :class:`IngestError` with
``IMPORT_LAYOUT_INVALID``: nothing could be imported.
"""

from __future__ import annotations

import csv
import gzip
import io
import math
from collections.abc import Callable, Iterator, Mapping, Sequence
from pathlib import Path
from typing import TextIO, TypeVar

from clinic.ingest.discover import REFUSAL_FIELD
from clinic.ingest.errors import IngestError, ReasonCode
from clinic.ingest.types import IngestItem, ItemKind, LabelIn, LabelSource, LabelState
from schemas.labels import CHEXPERT_OBSERVATIONS

AGE_CAP_YEARS = 90.0
"""HIPAA Safe Harbor aggregates ages over 89 into one "90 or older" category."""

AGE_CAPPED_FIELD = "age_90_or_over"

RowT = TypeVar("RowT")

_MISSING_TOKENS = frozenset({"", "nan"})
_MISSING_NUMBER_TOKENS = frozenset({"na", "n/a", "none", "null", "?"})


class RowError(Exception):
    """One item of one row could not be built; becomes an error item, never aborts the import."""

    def __init__(self, reason: ReasonCode, message: str) -> None:
        super().__init__(f"{reason.value}: {message}")
        self.reason = reason
        self.message = message


def error_item(
    kind: ItemKind,
    source: str,
    error: RowError,
    patient_key: str | None = None,
    encounter_key: str | None = None,
) -> IngestItem:
    """An item the engine quarantines under ``error.reason`` (the row is kept visible, not lost)."""
    return IngestItem(
        kind=kind,
        source=source,
        patient_key=patient_key,
        encounter_key=encounter_key,
        fields={REFUSAL_FIELD: [error.reason.value, error.message]},
    )


def import_error_of(item: IngestItem) -> tuple[ReasonCode, str] | None:
    """The reason and message an error item carries, or None for a normal item."""
    refusal = item.fields.get(REFUSAL_FIELD)
    if not refusal:
        return None
    return ReasonCode(refusal[0]), str(refusal[1])


def guarded(
    kind: ItemKind,
    build: Callable[[RowT], IngestItem],
    row: RowT,
    source: str,
    patient_key: str | None = None,
    encounter_key: str | None = None,
) -> IngestItem:
    """``build(row)``, turning a :class:`RowError` into an error item so the import continues."""
    try:
        return build(row)
    except RowError as error:
        return error_item(kind, source, error, patient_key, encounter_key)


Builder = tuple[ItemKind, Callable[[RowT], IngestItem]]


def items_per_row(
    table: Path,
    rows: Iterator[tuple[int, dict[str, str]]],
    resolve: Callable[[str, dict[str, str]], RowT],
    builders: Sequence[Builder[RowT]],
    keys: Callable[[RowT], tuple[str | None, str | None]],
) -> Iterator[IngestItem]:
    """Every builder's item for each table row (patient and encounter ids from ``keys``).

    A row whose ids cannot be resolved yields one error item (of the first builder's kind); a
    builder that fails yields an error item in its place; either way the import goes on.
    """
    for number, values in rows:
        source = row_source(table, number)
        try:
            row = resolve(source, values)
        except RowError as error:
            yield error_item(builders[0][0], source, error)
            continue
        patient_key, encounter_key = keys(row)
        for kind, build in builders:
            yield guarded(kind, build, row, source, patient_key, encounter_key)


def layout_error(dataset: str, message: str) -> IngestError:
    """The error raised when a root does not have the source's layout (nothing to import)."""
    return IngestError(ReasonCode.IMPORT_LAYOUT_INVALID, f"{dataset}: {message}")


def find_table(root: Path, stem: str) -> Path | None:
    """``stem.csv`` or ``stem.csv.gz`` under ``root``: the sources ship either form."""
    for name in (f"{stem}.csv", f"{stem}.csv.gz"):
        candidate = root / name
        if candidate.is_file():
            return candidate
    return None


def require_dir(root: Path, dataset: str) -> Path:
    """The root as a directory, or a layout error naming only the dataset (no local paths)."""
    if not root.is_dir():
        raise layout_error(dataset, "the import root is not a directory")
    return root


def require_table(root: Path, stem: str, dataset: str) -> Path:
    """A table every import of ``dataset`` needs; a layout error when it is absent."""
    table = find_table(root, stem)
    if table is None:
        raise layout_error(dataset, f"{stem}.csv (or .csv.gz) not found in the import root")
    return table


def _open_text(path: Path) -> TextIO:
    """Open a CSV as text, transparently gunzipping ``.gz`` (MIMIC ships its tables gzipped)."""
    if path.name.endswith(".gz"):
        return io.TextIOWrapper(gzip.open(path, "rb"), encoding="utf-8-sig", newline="")
    return path.open(encoding="utf-8-sig", newline="")


def read_rows(
    path: Path, required: tuple[str, ...], dataset: str
) -> Iterator[tuple[int, dict[str, str]]]:
    """Rows of a CSV as ``(row_number, {column: stripped text})``, row numbers from 1.

    Every value is a string ("" when empty) so that parsing, and its errors, stay per row. A
    missing required column is a layout error, raised before the first row is returned.
    """
    handle = _open_text(path)
    try:
        reader = csv.DictReader(handle)
        columns = set(reader.fieldnames or ())
        missing = [name for name in required if name not in columns]
        if missing:
            raise layout_error(dataset, f"{path.name} lacks column(s) {', '.join(missing)}")
        for number, row in enumerate(reader, start=1):
            yield number, {key: _cell(value) for key, value in row.items() if key is not None}
    finally:
        handle.close()


def _cell(value: object) -> str:
    """A cell as stripped text; csv gives a list for surplus cells, joined back here."""
    if isinstance(value, list):
        return ",".join(str(part) for part in value).strip()
    return str(value or "").strip()


def row_source(path: Path, number: int) -> str:
    """The quarantine locator of one table row, ``file.csv#row=12``."""
    return f"{path}#row={number}"


def is_missing(raw: str) -> bool:
    """Whether a cell holds no value: empty, or the "nan" that pandas-written tables contain."""
    return raw.strip().lower() in _MISSING_TOKENS


def _is_missing_number(raw: str) -> bool:
    """Missing for a numeric or boolean column, where "NA", "null" or UCI's "?" also mean empty.

    Kept apart from :func:`is_missing` because in free text "None" is a real answer.
    """
    return is_missing(raw) or raw.strip().lower() in _MISSING_NUMBER_TOKENS


def parse_float(raw: str, column: str) -> float | None:
    """A finite number, None when the cell is empty; a :class:`RowError` for anything else.

    The message names the column only, never the value, which may be patient data.
    """
    if _is_missing_number(raw):
        return None
    try:
        value = float(raw)
    except ValueError:
        raise RowError(ReasonCode.IMPORT_ROW_INVALID, f"column {column} is not a number") from None
    if not math.isfinite(value):
        raise RowError(ReasonCode.IMPORT_ROW_INVALID, f"column {column} is not finite")
    return value


def parse_bool(raw: str, column: str) -> bool | None:
    """TRUE/FALSE, True/False, 1/0, yes/no as a bool; None when empty."""
    if _is_missing_number(raw):
        return None
    lowered = raw.strip().lower()
    if lowered in {"true", "1", "1.0", "yes", "t", "y"}:
        return True
    if lowered in {"false", "0", "0.0", "no", "f", "n"}:
        return False
    raise RowError(ReasonCode.IMPORT_ROW_INVALID, f"column {column} is not a boolean")


def parse_id(raw: str, column: str) -> str:
    """An integer identifier as a canonical string (``15709.0`` → ``15709``).

    pandas-written CSVs turn integer ids into floats; linking needs one spelling per id.
    """
    if is_missing(raw):
        raise RowError(ReasonCode.RECORD_MISSING_ID, f"column {column} is empty")
    text = raw.strip()
    try:
        number = float(text)
    except ValueError:
        return text
    if not math.isfinite(number) or not number.is_integer():
        raise RowError(ReasonCode.IMPORT_ROW_INVALID, f"column {column} is not an identifier")
    return str(int(number))


def cap_age(age: float | None) -> tuple[float | None, bool]:
    """Ages of 90 and over (including sentinels such as PTB-XL's 300) become 90.

    Returns ``(age, capped)``; the flag is kept as an extra so "90" can be read as "90 or older".
    """
    if age is None or age < AGE_CAP_YEARS:
        return age, False
    return AGE_CAP_YEARS, True


def age_fields(raw: str, column: str) -> dict[str, object]:
    """``age_years`` (capped at 90) plus the capping flag when it applied."""
    age, capped = cap_age(parse_float(raw, column))
    fields: dict[str, object] = {"age_years": age}
    if capped:
        fields[AGE_CAPPED_FIELD] = True
    return fields


def map_sex(raw: str, mapping: Mapping[str, str]) -> str | None:
    """The schema's sex value (female/male/other/unknown); None when the cell is empty.

    An unrecognised code becomes "unknown" rather than failing the record: sex is then simply not
    usable, while the rest of the record still is.
    """
    if is_missing(raw):
        return None
    return mapping.get(raw.strip().lower(), "unknown")


def binary_label(
    name: str, present: bool, vocabulary: str, source: LabelSource = LabelSource.GROUND_TRUTH
) -> LabelIn:
    """A positive (1.0) or explicit negative (0.0) label: absence is information here."""
    return LabelIn(
        name=name,
        value=1.0 if present else 0.0,
        state=LabelState.POSITIVE if present else LabelState.NEGATIVE,
        source=source,
        vocabulary=vocabulary,
    )


def chexpert_label(name: str, raw: str, source: LabelSource) -> LabelIn:
    """One CheXpert observation with its state kept as it arrives.

    1 → positive (1.0), 0 → negative (0.0), -1 → uncertain (value None), blank → not mentioned
    (value None): the uncertainty policy (U-ones, U-zeros, ...) is a training-time choice.
    """
    text = raw.strip()
    if is_missing(text):
        return LabelIn(name, None, LabelState.NOT_MENTIONED, source=source, vocabulary="chexpert")
    try:
        code = float(text)
    except ValueError:
        code = math.nan
    if code == 1.0:
        return LabelIn(name, 1.0, LabelState.POSITIVE, source=source, vocabulary="chexpert")
    if code == 0.0:
        return LabelIn(name, 0.0, LabelState.NEGATIVE, source=source, vocabulary="chexpert")
    if code == -1.0:
        return LabelIn(name, None, LabelState.UNCERTAIN, source=source, vocabulary="chexpert")
    raise RowError(ReasonCode.IMPORT_LABELS_INVALID, f"label {name} is not one of 1, 0, -1, blank")


def chexpert_labels(row: Mapping[str, str], source: LabelSource) -> tuple[LabelIn, ...]:
    """The 14 observations of a CheXpert-style row (absent columns count as not mentioned)."""
    return tuple(chexpert_label(name, row.get(name, ""), source) for name in CHEXPERT_OBSERVATIONS)
