"""Tabular clinical records (CSV / Parquet): one row per encounter, validated against a schema.

Record tables come from many hands: ``;``-separated Latin-1 exports from German hospital
systems, UCI-style CSVs, Parquet from data pipelines. A bad cell must never lose the whole row:
:func:`validate_record` turns every value it cannot trust (unparseable, implausible, ambiguous)
into None plus a warning that names the field and the reason - never the value, which may be
PHI. Columns the schema does not know are kept as typed extras.
"""

from __future__ import annotations

import csv
import importlib
import io
import json
import math
import re
from collections.abc import Iterator, Mapping, Sequence
from dataclasses import dataclass, field, replace
from datetime import date, datetime, time
from decimal import Decimal
from itertools import islice
from numbers import Integral, Real
from pathlib import Path
from typing import Any, TypeAlias

import numpy as np
import pandas as pd

from clinic.ingest.errors import IngestError, ReasonCode
from clinic.ingest.reports import decode_text
from schemas.clinical_record import (
    ColumnBinding,
    FieldSpec,
    RecordSchema,
    UnitConversion,
    normalize_column_name,
)

__all__ = [
    "JsonValue",
    "RecordRow",
    "ValidatedRecord",
    "read_raw_table",
    "read_record_table",
    "validate_record",
]

JsonValue: TypeAlias = "bool | int | float | str | list[JsonValue] | dict[str, JsonValue] | None"
CoreValue: TypeAlias = float | str | None

#: Cell contents that mean "no value" (compared case-folded, after stripping).
_MISSING_MARKERS = frozenset(
    {"", "na", "n/a", "n.a.", "nan", "null", "none", "nil", "?", "-", "--", ".", "missing"}
)
_TRUE_TOKENS = frozenset({"true", "t", "yes", "y", "1", "ja", "j"})
_FALSE_TOKENS = frozenset({"false", "f", "no", "n", "0", "nein"})
_NUMBER_WITH_UNIT = re.compile(
    r"(?P<number>[+-]?(?:\d+(?:[.,]\d*)?|[.,]\d+)(?:[eE][+-]?\d+)?)\s*(?P<unit>\S.*)?"
)
_THOUSANDS_OR_DECIMAL = re.compile(r"[+-]?\d{1,3},\d{3}")
_EXTRA_INT = re.compile(r"[+-]?(?:0|[1-9]\d{0,14})")
_EXTRA_FLOAT = re.compile(r"[+-]?(?:\d+\.\d*|\.\d+|\d+(?:\.\d*)?[eE][+-]?\d+)")
_PARQUET_MAGIC = b"PAR1"
_DELIMITERS: tuple[str, ...] = (",", ";", "\t")
_SNIFF_CHARS = 65_536
_SNIFF_ROWS = 50
_PARQUET_BATCH_ROWS = 4096


@dataclass(frozen=True)
class ValidatedRecord:
    """One row after validation.

    ``core``: every field of the schema (None where absent or refused), canonical units.
    ``extras``: columns the schema does not know, JSON-serialisable and typed where obvious.
    ``warnings``: why values were refused or changed, naming fields, never values.
    """

    core: dict[str, CoreValue]
    extras: dict[str, JsonValue] = field(default_factory=dict)
    warnings: list[str] = field(default_factory=list)


@dataclass(frozen=True)
class RecordRow:
    """One data row of a table: where it was, whose it is, and its validated content.

    ``row_number`` is 1-based over data rows (the header is row 0; skipped blank rows still
    count), so ``file.csv#row=N`` points at the same row for everyone. ``patient_key`` is None
    when the row has no patient id - the engine quarantines it as RECORD_MISSING_ID.
    """

    row_number: int
    patient_key: str | None
    encounter_key: str | None
    record: ValidatedRecord


@dataclass(frozen=True)
class _Parsed:
    """The outcome of reading one cell for one field: a value, or the reason there is none."""

    value: CoreValue = None
    reason: str | None = None
    note: str | None = None  # a warning that does not refuse the value (e.g. rounding)
    empty: bool = False


# --------------------------------------------------------------------------------------------
# cell parsing


def _is_missing(value: object) -> bool:
    """Whether a typed cell is a null (None, NaN, pandas NA/NaT): absent, not wrong."""
    if value is None:
        return True
    if isinstance(value, str | bytes | list | tuple | dict | Mapping):
        return False
    try:
        return bool(pd.isna(value))  # type: ignore[call-overload]
    except (TypeError, ValueError):
        return False


def _plain(value: object) -> object:
    """NumPy scalars to Python scalars, so the rest of the code sees one set of types."""
    if isinstance(value, np.generic):
        return value.item()
    return value


def _normalize_unit(unit: str) -> str:
    """Fold a unit spelling for comparison ("° C", "°c", "C" all become "c")."""
    return re.sub(r"[\s°]+", "", unit.replace("µ", "u").replace("μ", "u")).casefold()


def _unit_conversion(spec: FieldSpec, unit: str) -> tuple[bool, UnitConversion | None]:
    """Match an in-cell unit: (known, conversion) - conversion None for the canonical unit."""
    key = _normalize_unit(unit)
    if spec.unit is not None and key == _normalize_unit(spec.unit):
        return True, None
    for conversion in spec.conversions:
        if key == _normalize_unit(conversion.unit):
            return True, conversion
    return False, None


def _parse_number_text(text: str) -> tuple[float | None, str | None, str | None]:
    """Parse "37,5", "98.6 °F", "1e3": (number, unit text, refusal reason)."""
    if text[:1] in ("<", ">", "≤", "≥"):
        return None, None, "censored value (beyond a detection limit)"
    if text.casefold().lstrip("+-") in ("inf", "infinity"):
        return None, None, "not a finite number"
    match = _NUMBER_WITH_UNIT.fullmatch(text)
    if match is None:
        return None, None, "not a number"
    number = match["number"]
    if "," in number:
        if _THOUSANDS_OR_DECIMAL.fullmatch(number):
            return None, None, "ambiguous decimal separator"
        number = number.replace(",", ".")
    return float(number), match["unit"], None


def _bound(limit: float | None) -> str:
    """A range bound for a warning ("120", or "" when open)."""
    return "" if limit is None else f"{limit:g}"


def _parse_numeric(spec: FieldSpec, value: object, conversion: UnitConversion | None) -> _Parsed:
    """Read a number for a float/int field, convert its unit, round ints, check the range."""
    unit: str | None = None
    if isinstance(value, bool) or not isinstance(value, Real | Decimal | str):
        return _Parsed(reason="not a number")
    if isinstance(value, str):
        number, unit, reason = _parse_number_text(value.strip())
        if number is None:
            return _Parsed(reason=reason)
    else:
        number = float(value)
    if not math.isfinite(number):
        return _Parsed(reason="not a finite number")
    if unit is not None:
        known, conversion = _unit_conversion(spec, unit)
        if not known:
            return _Parsed(reason="unexpected unit")
    if conversion is not None:
        number = conversion.to_canonical(number)
    note = None
    if spec.dtype == "int" and not float(number).is_integer():
        number, note = float(round(number)), "rounded to an integer"
    if (spec.min is not None and number < spec.min) or (spec.max is not None and number > spec.max):
        return _Parsed(reason=f"out of range [{_bound(spec.min)}, {_bound(spec.max)}]")
    result: float = int(number) if spec.dtype == "int" else number
    return _Parsed(value=result, note=note)


def _parse_category(spec: FieldSpec, value: object) -> _Parsed:
    """Map a spelling to a canonical category; numeric codes are refused as ambiguous."""
    text = str(value).strip()
    canonical = spec.category_lookup().get(text.casefold())
    if canonical is not None:
        return _Parsed(value=canonical)
    if text.lstrip("+-").replace(".", "", 1).isdigit():
        return _Parsed(reason="numeric code not accepted (map codes in the importer)")
    return _Parsed(reason="not an allowed value")


def _parse_bool(value: object) -> _Parsed:
    """Read a yes/no value from bools, 0/1 and common English / German tokens."""
    if isinstance(value, bool):
        return _Parsed(value=value)
    if isinstance(value, Integral) and int(value) in (0, 1):
        return _Parsed(value=bool(value))
    token = str(value).strip().casefold()
    if token in _TRUE_TOKENS:
        return _Parsed(value=True)
    if token in _FALSE_TOKENS:
        return _Parsed(value=False)
    return _Parsed(reason="not a yes/no value")


def _parse_cell(binding: ColumnBinding, raw: object) -> _Parsed:
    """Parse one cell for the field its column is bound to; never raises."""
    value = _plain(raw)
    if _is_missing(value):
        return _Parsed(empty=True)
    if isinstance(value, str) and value.strip().casefold() in _MISSING_MARKERS:
        reason = "empty value" if not value.strip() else "missing-value marker"
        return _Parsed(reason=reason, empty=True)
    spec = binding.field
    if spec.dtype == "category":
        return _parse_category(spec, value)
    if spec.dtype == "bool":
        return _parse_bool(value)
    return _parse_numeric(spec, value, binding.conversion)


# --------------------------------------------------------------------------------------------
# extras


def _extra_text(text: str) -> JsonValue:
    """Type a free cell where it is obvious: bools, plain ints, plain floats; else the text.

    Leading zeros ("007"), very long digit strings and non-finite numbers stay text: they are
    codes, identifiers or detection limits ("-inf"), and a number would lose information.
    """
    stripped = text.strip()
    folded = stripped.casefold()
    if folded in _MISSING_MARKERS:
        return None
    if folded in ("true", "false"):
        return folded == "true"
    if _EXTRA_INT.fullmatch(stripped):
        return int(stripped)
    if _EXTRA_FLOAT.fullmatch(stripped) and math.isfinite(number := float(stripped)):
        return number
    return stripped


def _extra_value(raw: object) -> JsonValue:
    """Any cell as a JSON-serialisable value (NaN / NA → None; dates → ISO text)."""
    value = _plain(raw)
    if isinstance(value, list | tuple):
        return [_extra_value(item) for item in value]
    if isinstance(value, Mapping):
        return {str(key): _extra_value(item) for key, item in value.items()}
    if _is_missing(value):
        return None
    if isinstance(value, str):
        return _extra_text(value)
    if isinstance(value, bool | int):
        return value
    if isinstance(value, float | Decimal):
        number = float(value)
        return number if math.isfinite(number) else str(number)
    if isinstance(value, datetime | date | time):
        return value.isoformat()
    if isinstance(value, bytes):
        return value.decode("utf-8", errors="replace")
    return str(value)


# --------------------------------------------------------------------------------------------
# validation


def _pick(spec: FieldSpec, parsed: list[_Parsed], warnings: list[str]) -> CoreValue:
    """Choose a field's value from the cells of all columns bound to it, warning as needed.

    The first valid cell wins (columns named exactly as the field come first). Refusals are
    reported, except "empty" when another column supplied the value; disagreeing valid cells
    are reported as a conflict.
    """
    valid = [item for item in parsed if item.reason is None and not item.empty]
    chosen = valid[0].value if valid else None
    for item in parsed:
        if item.reason is not None and not (item.empty and valid):
            warnings.append(f"{spec.name}: {item.reason}")
    if valid and valid[0].note is not None:
        warnings.append(f"{spec.name}: {valid[0].note}")
    if any(not _same(item.value, chosen) for item in valid[1:]):
        warnings.append(f"{spec.name}: conflicting values in several columns; kept the first")
    return chosen


def _same(a: CoreValue, b: CoreValue) -> bool:
    """Equality with a tolerance for floats (unit conversions are not exact)."""
    if isinstance(a, int | float) and isinstance(b, int | float):
        return math.isclose(a, b, rel_tol=1e-6, abs_tol=1e-9)
    return a == b


def validate_record(raw: Mapping[str, object], schema: RecordSchema) -> ValidatedRecord:
    """Validate one row against ``schema``; never raises for bad values.

    Columns are matched to fields by name, alias or unit alias (case- and punctuation-
    insensitive, see :func:`~schemas.clinical_record.normalize_column_name`); unit aliases and
    in-cell units ("98.6 °F") are converted to the canonical unit. Unparseable, missing-marker
    ("n/a", "?", "NaN", ""), out-of-range, ambiguous or non-finite values become None with a
    warning "<field>: <reason>". Typed nulls (None, NaN from Parquet / pandas) are simply absent.
    Identifier columns of the schema are skipped; direct-identifier columns (``drop_columns``)
    are dropped with a warning; all other columns go to ``extras`` under their original name.
    """
    cells: dict[str, list[tuple[int, _Parsed]]] = {}
    extras: dict[str, JsonValue] = {}
    warnings: list[str] = []
    for position, (column_raw, value) in enumerate(raw.items()):
        column = str(column_raw)
        role = schema.column_role(column)
        if role == "id":
            continue
        if role == "drop":
            warnings.append(f"column {normalize_column_name(column)!r} dropped: identifier")
            continue
        if role is None:
            extras[column] = _extra_value(value)
            continue
        exact = normalize_column_name(column) == role.field.name
        priority = position if exact else len(raw) + position
        cells.setdefault(role.field.name, []).append((priority, _parse_cell(role, value)))
    core: dict[str, CoreValue] = {}
    for spec in schema.fields:
        parsed = [item for _priority, item in sorted(cells.get(spec.name, []), key=_first)]
        core[spec.name] = _pick(spec, parsed, warnings)
    return ValidatedRecord(core=core, extras=extras, warnings=warnings)


def _first(item: tuple[int, _Parsed]) -> int:
    """Sort key: a cell's column priority."""
    return item[0]


# --------------------------------------------------------------------------------------------
# tables


@dataclass(frozen=True)
class _Table:
    """An opened table: its header, and its data rows as (row number, cells, overflowed).

    Every row has exactly ``len(columns)`` cells: short rows are padded with "", cells beyond
    the header are cut off and flagged, so callers can warn.
    """

    columns: list[str]
    rows: Iterator[tuple[int, list[object], bool]]


def _unreadable(why: str) -> IngestError:
    """The refusal for a table that cannot be read at all (never names the path: PHI risk)."""
    return IngestError(ReasonCode.RECORD_UNREADABLE, why)


def _unique_header(header: Sequence[str]) -> list[str]:
    """Header names made usable as keys: blanks named by position, duplicates numbered."""
    names: list[str] = []
    seen: set[str] = set()
    for index, raw in enumerate(header):
        base = raw.strip() or f"column_{index + 1}"
        name, counter = base, 2
        while name in seen:
            name, counter = f"{base}_{counter}", counter + 1
        seen.add(name)
        names.append(name)
    return names


def _sniff_delimiter(text: str) -> str:
    """Choose ``,``, ``;`` or tab: the one that splits the header into the most columns while
    the following rows keep that width. (csv.Sniffer guesses wildly on German decimals such as
    "37,5" in ``;`` files.)"""
    sample = text[:_SNIFF_CHARS]
    if len(text) > _SNIFF_CHARS and "\n" in sample:
        sample = sample[: sample.rindex("\n")]
    best, best_score = ",", (False, 0.0, 0)
    for delimiter in _DELIMITERS:
        reader = csv.reader(io.StringIO(sample, newline=""), delimiter=delimiter)
        try:
            rows = [row for row in islice(reader, _SNIFF_ROWS) if row]
        except csv.Error:
            continue
        if not rows:
            continue
        width, body = len(rows[0]), rows[1:]
        consistent = sum(len(row) == width for row in body) / len(body) if body else 1.0
        score = (width > 1, round(consistent, 2), width)
        if score > best_score:
            best, best_score = delimiter, score
    return best


def _read_text(path: Path) -> str:
    """The file's text, whatever its encoding; refusals carry a record reason code."""
    try:
        data = path.read_bytes()
    except OSError as exc:
        raise _unreadable(f"cannot read file ({type(exc).__name__})") from None
    if not data.strip():
        raise IngestError(ReasonCode.FILE_EMPTY, "record table is empty")
    try:
        text, _encoding = decode_text(data)
    except IngestError:
        raise _unreadable("not text in a known encoding") from None
    return text


def _open_csv(path: Path) -> _Table:
    """Decode, sniff the delimiter and read the header now, so bad files fail at the call."""
    text = _read_text(path)
    reader = csv.reader(io.StringIO(text, newline=""), delimiter=_sniff_delimiter(text))
    try:
        header = next((row for row in reader if any(cell.strip() for cell in row)), None)
    except csv.Error:
        raise _unreadable("malformed CSV header") from None
    if header is None:
        raise IngestError(ReasonCode.FILE_EMPTY, "record table has no header")
    columns = _unique_header(header)
    return _Table(columns, _iter_csv(reader, len(columns)))


def _iter_csv(reader: Iterator[list[str]], width: int) -> Iterator[tuple[int, list[object], bool]]:
    """Data rows of a CSV, blank rows skipped (but counted)."""
    row_number = 0
    while True:
        try:
            row = next(reader)
        except StopIteration:
            return
        except csv.Error:
            raise _unreadable(f"malformed CSV after data row {row_number}") from None
        row_number += 1
        if any(cell.strip() for cell in row):
            cells: list[object] = [*row[:width], *[""] * (width - len(row))]
            yield row_number, cells, len(row) > width


def _open_parquet(path: Path) -> _Table:
    """Read a Parquet file's schema now; rows follow batch by batch.

    pyarrow ships without type information, hence the ``Any``-typed module handles.
    """
    pa: Any = importlib.import_module("pyarrow")
    pq: Any = importlib.import_module("pyarrow.parquet")
    errors: tuple[type[BaseException], ...] = (OSError, ValueError, pa.ArrowException)
    try:
        parquet = pq.ParquetFile(path)
        names = [str(name) for name in parquet.schema_arrow.names]
    except errors:
        raise _unreadable("not a readable Parquet file") from None
    return _Table(_unique_header(names), _iter_parquet(parquet, errors, len(names)))


def _iter_parquet(
    parquet: Any, errors: tuple[type[BaseException], ...], width: int
) -> Iterator[tuple[int, list[object], bool]]:
    """Rows of a Parquet file in batches, so large tables never sit in memory whole."""
    row_number = 0
    batches = iter(parquet.iter_batches(batch_size=_PARQUET_BATCH_ROWS))
    while True:
        try:
            batch = next(batches, None)
            if batch is None:
                return
            columns: list[list[object]] = [column.to_pylist() for column in batch.columns]
        except errors:
            raise _unreadable(f"corrupt Parquet data after row {row_number}") from None
        for cells in zip(*columns, strict=True):
            row_number += 1
            yield row_number, list(cells[:width]), False


def _open_table(path: Path) -> _Table:
    """Open a CSV or Parquet table (Parquet recognised by its magic bytes, not its name)."""
    try:
        with path.open("rb") as handle:
            magic = handle.read(len(_PARQUET_MAGIC))
    except OSError as exc:
        raise _unreadable(f"cannot open file ({type(exc).__name__})") from None
    return _open_parquet(path) if magic == _PARQUET_MAGIC else _open_csv(path)


def _cell_text(raw: object) -> str:
    """A cell as text for raw rows: nulls become "", structures JSON, dates ISO 8601."""
    value = _plain(raw)
    if isinstance(value, str):
        return value
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, list | tuple | Mapping):
        return json.dumps(_extra_value(value), ensure_ascii=False)
    converted = _extra_value(value)
    return "" if converted is None else str(converted)


def read_raw_table(path: Path) -> Iterator[tuple[int, dict[str, str]]]:
    """Every data row of a CSV / Parquet table as ``(row_number, {column: cell text})``.

    The untyped view for importers and discovery, which decide per column themselves: cells are
    text exactly as in the file (Parquet values rendered as text, nulls as ""), rows are padded
    to the header's width and cut at it. Same file handling and refusals as
    :func:`read_record_table`; the file is opened and its header read at the call.
    """
    table = _open_table(path)
    return (
        (row_number, dict(zip(table.columns, map(_cell_text, cells), strict=True)))
        for row_number, cells, _overflow in table.rows
    )


def _key(raw: object) -> str | None:
    """A patient / encounter key exactly as the source wrote it (outer whitespace stripped).

    Nothing is escaped or normalised: keys are pseudonymised by the engine and only ever bound
    as parameters. Blanks and missing markers are no key at all - "n/a" as a patient id would
    merge unrelated rows into one patient.
    """
    value = _plain(raw)
    if _is_missing(value):
        return None
    if isinstance(value, bytes):
        value = value.decode("utf-8", errors="replace")
    text = str(value).strip()
    return None if text.casefold() in _MISSING_MARKERS else text


def _find_column(columns: Sequence[str], wanted: str | None) -> int | None:
    """Index of column ``wanted`` (case- and punctuation-insensitive), None when absent."""
    if wanted is None:
        return None
    key = normalize_column_name(wanted)
    return next(
        (i for i, column in enumerate(columns) if normalize_column_name(column) == key), None
    )


def _record_rows(
    table: _Table, schema: RecordSchema, patient_index: int, encounter_index: int | None
) -> Iterator[RecordRow]:
    """Validate each row; the id columns never reach the record (nor its extras)."""
    id_indices = {patient_index, encounter_index}
    for row_number, cells, overflow in table.rows:
        raw = {
            column: cell
            for index, (column, cell) in enumerate(zip(table.columns, cells, strict=True))
            if index not in id_indices
        }
        record = validate_record(raw, schema)
        if overflow:
            note = "row has more fields than the header; extra fields ignored"
            record = replace(record, warnings=[note, *record.warnings])
        encounter = None if encounter_index is None else _key(cells[encounter_index])
        yield RecordRow(row_number, _key(cells[patient_index]), encounter, record)


def read_record_table(
    path: Path,
    schema: RecordSchema,
    *,
    patient_column: str = "patient_id",
    encounter_column: str | None = "encounter_id",
) -> Iterator[RecordRow]:
    """Read a CSV or Parquet table of records, one validated :class:`RecordRow` per data row.

    Parquet is recognised by its magic bytes; anything else is read as delimited text in any
    encoding (see :func:`~clinic.ingest.reports.decode_text`) with ``,``, ``;`` or tab as the
    delimiter. The file is opened and its header checked *at the call*, so a bad file raises
    here rather than at the first ``next()``: RECORD_UNREADABLE (unreadable, undecodable,
    malformed), FILE_EMPTY, or RECORD_MISSING_ID when the header has no ``patient_column`` -
    one refusal for the table, rather than every row quarantined for a wrong column name. A
    row with a blank patient id is still yielded, with ``patient_key`` None. A missing
    ``encounter_column`` leaves ``encounter_key`` None. Id columns are matched like aliases
    (case- and punctuation-insensitive).
    """
    table = _open_table(path)
    patient_index = _find_column(table.columns, patient_column)
    if patient_index is None:
        raise IngestError(ReasonCode.RECORD_MISSING_ID, "no patient id column in the header")
    encounter_index = _find_column(table.columns, encounter_column)
    return _record_rows(table, schema, patient_index, encounter_index)
