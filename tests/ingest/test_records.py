"""Clinical record tables: validation of single rows and reading of CSV / Parquet tables."""

from __future__ import annotations

import csv
import json
import math
from datetime import datetime
from pathlib import Path

import numpy as np
import pandas as pd
import pytest

from clinic.ingest.errors import IngestError, ReasonCode
from clinic.ingest.records import (
    RecordRow,
    ValidatedRecord,
    read_raw_table,
    read_record_table,
    validate_record,
)
from schemas import CORE_FIELD_NAMES, RecordSchema, load_record_schema


@pytest.fixture(scope="module")
def schema() -> RecordSchema:
    return load_record_schema()


def _warned(record: ValidatedRecord, field: str) -> list[str]:
    return [w for w in record.warnings if w.startswith(f"{field}:")]


# -- validate_record --------------------------------------------------------------------------


def test_every_core_field_is_present(schema: RecordSchema) -> None:
    record = validate_record({}, schema)
    assert list(record.core) == list(CORE_FIELD_NAMES)
    assert all(value is None for value in record.core.values())
    assert record.extras == {} and record.warnings == []


def test_canonical_values_pass(schema: RecordSchema) -> None:
    raw = {"age_years": "63", "sex": "Female", "heart_rate_bpm": "72", "spo2_percent": 97.0}
    record = validate_record(raw, schema)
    assert record.core["age_years"] == 63.0
    assert record.core["sex"] == "female"
    assert record.core["heart_rate_bpm"] == 72 and isinstance(record.core["heart_rate_bpm"], int)
    assert record.core["spo2_percent"] == 97.0
    assert record.warnings == []


@pytest.mark.parametrize(("column", "value"), [("age", "250"), ("spo2", "130"), ("age", -1)])
def test_out_of_range_becomes_none_with_a_warning(
    schema: RecordSchema, column: str, value: object
) -> None:
    record = validate_record({column: value}, schema)
    field = "age_years" if column == "age" else "spo2_percent"
    assert record.core[field] is None
    [warning] = _warned(record, field)
    assert "out of range" in warning
    assert str(value) not in warning  # the reason, not the patient's value


@pytest.mark.parametrize("value", ["n/a", "abc", "", "?", "NaN", "inf", "<5", "1,200", "12 kg"])
def test_unparseable_values_become_none_with_a_warning(schema: RecordSchema, value: str) -> None:
    record = validate_record({"crp": value, "age": "40"}, schema)
    assert record.core["crp_mg_l"] is None
    assert record.core["age_years"] == 40.0
    assert len(_warned(record, "crp_mg_l")) == 1


def test_warnings_never_quote_the_value(schema: RecordSchema) -> None:
    record = validate_record({"age": "John Smith", "sex": "Jane Doe"}, schema)
    assert record.core["age_years"] is None and record.core["sex"] is None
    assert len(record.warnings) == 2
    assert not any("John" in w or "Jane" in w for w in record.warnings)


def test_typed_nulls_are_absent_without_warning(schema: RecordSchema) -> None:
    raw = {"age": None, "weight": float("nan"), "height": pd.NA, "crp": np.float64("nan")}
    record = validate_record(raw, schema)
    assert all(value is None for value in record.core.values())
    assert record.warnings == []


def test_fahrenheit_column_alias_is_converted(schema: RecordSchema) -> None:
    assert validate_record({"temperature_f": "98.6"}, schema).core["temperature_c"] == (
        pytest.approx(37.0)
    )
    assert validate_record({"Temperature (°F)": 100.4}, schema).core["temperature_c"] == 38.0
    too_hot = validate_record({"temp_f": "212"}, schema)
    assert too_hot.core["temperature_c"] is None
    assert "out of range" in _warned(too_hot, "temperature_c")[0]


def test_in_cell_units(schema: RecordSchema) -> None:
    record = validate_record({"temperature": "98.6 °F", "sbp": "120 mmHg", "spo2": "97 %"}, schema)
    assert record.core["temperature_c"] == pytest.approx(37.0)
    assert record.core["systolic_bp_mmhg"] == 120.0
    assert record.core["spo2_percent"] == 97.0
    wrong = validate_record({"weight": "150 mmHg"}, schema)
    assert wrong.core["weight_kg"] is None
    assert "unexpected unit" in _warned(wrong, "weight_kg")[0]


def test_other_unit_aliases(schema: RecordSchema) -> None:
    record = validate_record(
        {"height_m": "1.80", "weight_lb": "154", "crp_mg_dl": "1.5", "troponin_ng_ml": "0.05"},
        schema,
    )
    assert record.core["height_cm"] == pytest.approx(180.0)
    assert record.core["weight_kg"] == pytest.approx(69.853225, rel=1e-6)
    assert record.core["crp_mg_l"] == pytest.approx(15.0)
    assert record.core["troponin_ng_l"] == pytest.approx(50.0)


def test_decimal_comma(schema: RecordSchema) -> None:
    record = validate_record({"temperatur": "37,5", "crp": "12,25"}, schema)
    assert record.core["temperature_c"] == 37.5
    assert record.core["crp_mg_l"] == 12.25


def test_integer_fields_are_rounded_with_a_warning(schema: RecordSchema) -> None:
    record = validate_record({"hr": "72.4", "respiratory_rate": 16.0}, schema)
    assert record.core["heart_rate_bpm"] == 72
    assert record.core["respiratory_rate_per_min"] == 16
    assert _warned(record, "heart_rate_bpm") == ["heart_rate_bpm: rounded to an integer"]
    assert _warned(record, "respiratory_rate_per_min") == []


@pytest.mark.parametrize(
    ("value", "expected"),
    [
        ("F", "female"),
        ("m", "male"),
        ("MALE", "male"),
        (" weiblich ", "female"),
        ("unknown", "unknown"),
    ],
)
def test_sex_spellings(schema: RecordSchema, value: str, expected: str) -> None:
    assert validate_record({"sex": value}, schema).core["sex"] == expected


@pytest.mark.parametrize("value", ["0", "1", 1, 0.0, "x"])
def test_sex_codes_are_refused(schema: RecordSchema, value: object) -> None:
    record = validate_record({"sex": value}, schema)
    assert record.core["sex"] is None
    assert len(_warned(record, "sex")) == 1


def test_numpy_and_bool_inputs(schema: RecordSchema) -> None:
    record = validate_record({"age": np.int64(40), "hr": np.float32(60.0), "crp": True}, schema)
    assert record.core["age_years"] == 40.0
    assert record.core["heart_rate_bpm"] == 60
    assert record.core["crp_mg_l"] is None and _warned(record, "crp_mg_l")


def test_exact_column_beats_alias_and_conflicts_are_reported(schema: RecordSchema) -> None:
    record = validate_record({"age": "50", "age_years": "60"}, schema)
    assert record.core["age_years"] == 60.0
    assert any("conflicting" in w for w in _warned(record, "age_years"))
    agree = validate_record({"temperature_c": "37.0", "temperature_f": "98.6"}, schema)
    assert agree.core["temperature_c"] == 37.0 and agree.warnings == []
    fallback = validate_record({"temperature_c": "", "temperature_f": "98.6"}, schema)
    assert fallback.core["temperature_c"] == pytest.approx(37.0)
    assert fallback.warnings == []


def test_extras_are_kept_and_typed(schema: RecordSchema) -> None:
    raw: dict[str, object] = {
        "chol": "233",
        "oldpeak": "2.3",
        "fbs": "TRUE",
        "code": "007",
        "limit": "-inf",
        "huge": "1e400",
        "long_id": "12345678901234567890",
        "blank": "",
        "note": " chest pain ",
        "nan": float("nan"),
        "count": np.int64(3),
        "when": datetime(2021, 3, 12, 8, 30),
        "tags": ["a", 1],
    }
    record = validate_record(raw, schema)
    assert record.extras == {
        "chol": 233,
        "oldpeak": 2.3,
        "fbs": True,
        "code": "007",
        "limit": "-inf",
        "huge": "1e400",
        "long_id": "12345678901234567890",
        "blank": None,
        "note": "chest pain",
        "nan": None,
        "count": 3,
        "when": "2021-03-12T08:30:00",
        "tags": ["a", 1],
    }
    json.dumps(record.extras, allow_nan=False)
    assert record.warnings == []


def test_id_and_identifier_columns_never_become_extras(schema: RecordSchema) -> None:
    raw = {"patient_id": "P1", "Encounter ID": "E1", "Patient Name": "Jane Doe", "age": "40"}
    record = validate_record(raw, schema)
    assert record.extras == {}
    assert not any("Jane" in w for w in record.warnings)
    assert any("dropped" in w for w in record.warnings)


# -- real tables ------------------------------------------------------------------------------


def _unknown_columns(columns: list[str], schema: RecordSchema, ids: set[str]) -> set[str]:
    return {
        c
        for c in columns
        if c not in ids and schema.resolve_column(c) is None and not schema.is_drop_column(c)
    }


def _check_rows(rows: list[RecordRow], schema: RecordSchema) -> None:
    for row in rows:
        for name in CORE_FIELD_NAMES:
            value = row.record.core[name]
            spec = schema.field(name)
            if value is not None and spec.dtype in ("float", "int"):
                assert isinstance(value, int | float) and math.isfinite(value)
                assert spec.min is not None and spec.max is not None
                assert spec.min <= value <= spec.max
        json.dumps(row.record.extras, allow_nan=False)


def test_heart_disease_uci_reads(shared_data: Path, schema: RecordSchema) -> None:
    path = shared_data / "heart-disease-uci" / "heart_disease_uci.csv"
    frame = pd.read_csv(path, dtype=str, keep_default_na=False)
    rows = list(read_record_table(path, schema, patient_column="id", encounter_column=None))
    assert len(rows) == len(frame)
    assert [row.row_number for row in rows] == list(range(1, len(frame) + 1))
    assert [row.patient_key for row in rows] == frame["id"].str.strip().tolist()
    _check_rows(rows, schema)
    unknown = _unknown_columns(list(frame.columns), schema, {"id"})
    assert unknown and "chol" in unknown
    assert all(set(row.record.extras) == unknown for row in rows)
    assert {row.record.core["sex"] for row in rows} <= {"female", "male", None}
    assert sum(row.record.core["age_years"] is not None for row in rows) > len(rows) // 2


def test_hannover_table_reads(shared_data: Path, schema: RecordSchema) -> None:
    path = shared_data / "hannover-cxr" / "data.csv"
    frame = pd.read_csv(path, dtype=str, keep_default_na=False)
    rows = list(read_record_table(path, schema, encounter_column="image_id"))
    assert len(rows) == len(frame)
    assert [row.patient_key for row in rows] == frame["patient_id"].tolist()
    assert [row.encounter_key for row in rows] == frame["image_id"].tolist()
    _check_rows(rows, schema)
    unknown = _unknown_columns(list(frame.columns), schema, {"patient_id", "image_id"})
    assert all(set(row.record.extras) == unknown for row in rows)
    assert {row.record.core["sex"] for row in rows} <= {"female", "male", None}


def test_ptbxl_table_reads_with_sex_codes_refused(shared_data: Path, schema: RecordSchema) -> None:
    path = shared_data / "ptbxl" / "ptbxl_database.csv"
    rows = list(read_record_table(path, schema, encounter_column="ecg_id"))
    assert rows
    _check_rows(rows, schema)
    # PTB-XL codes sex as 0/1: the schema refuses codes, the PTB-XL importer maps them.
    assert all(row.record.core["sex"] is None for row in rows)
    assert all("nurse" not in row.record.extras for row in rows)


def test_raw_rows_match_the_file(shared_data: Path) -> None:
    path = shared_data / "hannover-cxr" / "data.csv"
    frame = pd.read_csv(path, dtype=str, keep_default_na=False)
    raw = list(read_raw_table(path))
    assert [number for number, _row in raw] == list(range(1, len(frame) + 1))
    assert [row for _number, row in raw] == frame.to_dict("records")


# -- formats and encodings --------------------------------------------------------------------


def test_parquet_round_trip(tmp_path: Path, schema: RecordSchema) -> None:
    frame = pd.DataFrame(
        {
            "patient_id": ["P1", None, "1'; DROP TABLE patients;--"],
            "encounter_id": ["E1", "E2", None],
            "age": [63.0, None, 250.0],
            "sex": ["F", "m", None],
            "temperature_f": [98.6, 100.4, None],
            "hr": pd.array([72, None, 80], dtype="Int64"),
            "smoker": [True, False, None],
            "seen_at": [pd.Timestamp("2021-03-12 08:30"), pd.NaT, pd.Timestamp("2021-03-14")],
            "code": ["007", "x", None],
        }
    )
    path = tmp_path / "records.parquet"
    frame.to_parquet(path, index=False)
    rows = list(read_record_table(path, schema))
    assert [row.row_number for row in rows] == [1, 2, 3]
    assert [row.patient_key for row in rows] == ["P1", None, "1'; DROP TABLE patients;--"]
    assert [row.encounter_key for row in rows] == ["E1", "E2", None]
    first, second, third = (row.record for row in rows)
    assert first.core["age_years"] == 63.0 and first.core["sex"] == "female"
    assert first.core["temperature_c"] == pytest.approx(37.0)
    assert first.core["heart_rate_bpm"] == 72
    assert first.extras == {"smoker": True, "seen_at": "2021-03-12T08:30:00", "code": "007"}
    assert first.warnings == []
    assert second.core["temperature_c"] == 38.0 and second.core["age_years"] is None
    assert second.warnings == []
    assert third.core["age_years"] is None and _warned(third, "age_years")

    csv_path = tmp_path / "records.csv"
    frame.to_csv(csv_path, index=False)
    from_csv = [row.record.core for row in read_record_table(csv_path, schema)]
    assert from_csv == [row.record.core for row in rows]


def test_raw_rows_of_parquet_are_text(tmp_path: Path) -> None:
    frame = pd.DataFrame(
        {"patient_id": ["P1", None], "age": [63.5, None], "flag": [True, None], "n": [1, 2]}
    )
    path = tmp_path / "raw.parquet"
    frame.to_parquet(path, index=False)
    assert list(read_raw_table(path)) == [
        (1, {"patient_id": "P1", "age": "63.5", "flag": "true", "n": "1"}),
        (2, {"patient_id": "", "age": "", "flag": "", "n": "2"}),
    ]


def test_semicolon_latin1_csv(tmp_path: Path, schema: RecordSchema) -> None:
    text = (
        "Patient_ID;Alter;Geschlecht;Temperatur;Größe;Bemerkung\n"
        "A-1;63;weiblich;37,5;;Rückenschmerzen, Übelkeit\n"
        "A-2;71;männlich;38,2;181;keine Beschwerden\n"
    )
    path = tmp_path / "export.csv"
    path.write_bytes(text.encode("latin-1"))
    rows = list(read_record_table(path, schema))
    assert [row.patient_key for row in rows] == ["A-1", "A-2"]
    assert [row.encounter_key for row in rows] == [None, None]
    first, second = (row.record for row in rows)
    assert first.core["age_years"] == 63.0 and first.core["sex"] == "female"
    assert first.core["temperature_c"] == 37.5
    assert first.extras == {"Größe": None, "Bemerkung": "Rückenschmerzen, Übelkeit"}
    assert second.core["sex"] == "male" and second.extras["Größe"] == 181


@pytest.mark.parametrize(("delimiter", "encoding"), [("\t", "utf-8"), (",", "utf-16")])
def test_tab_and_utf16_csv(
    tmp_path: Path, schema: RecordSchema, delimiter: str, encoding: str
) -> None:
    lines = [["patient_id", "age", "note"], ["p1", "40", "a; b, c"]]
    text = "\n".join(delimiter.join(line) for line in lines) + "\n"
    if delimiter == ",":
        text = 'patient_id,age,note\np1,40,"a; b, c"\n'
    path = tmp_path / "table.csv"
    path.write_bytes(text.encode(encoding))
    [row] = read_record_table(path, schema)
    assert row.patient_key == "p1"
    assert row.record.core["age_years"] == 40.0
    assert row.record.extras == {"note": "a; b, c"}


def test_hostile_patient_id_passes_verbatim(tmp_path: Path, schema: RecordSchema) -> None:
    hostile = "1'; DROP TABLE patients;--"
    path = tmp_path / "hostile.csv"
    with path.open("w", newline="", encoding="utf-8") as handle:
        writer = csv.writer(handle)
        writer.writerows([["patient_id", "age"], [hostile, "40"], ['Robert"); --', "41"]])
    rows = list(read_record_table(path, schema))
    assert [row.patient_key for row in rows] == [hostile, 'Robert"); --']


def test_rows_without_patient_id_are_yielded_with_none(
    tmp_path: Path, schema: RecordSchema
) -> None:
    path = tmp_path / "ids.csv"
    path.write_text("patient_id,encounter_id,age\n,e1,40\n  ,e2,41\nn/a,e3,42\np4,,43\n\n")
    rows = list(read_record_table(path, schema))
    assert [row.patient_key for row in rows] == [None, None, None, "p4"]
    assert [row.encounter_key for row in rows] == ["e1", "e2", "e3", None]
    assert [row.record.core["age_years"] for row in rows] == [40.0, 41.0, 42.0, 43.0]


def test_ragged_rows(tmp_path: Path, schema: RecordSchema) -> None:
    path = tmp_path / "ragged.csv"
    path.write_text("patient_id,age,note\np1,40\np2,41,x,surplus\n\np3,42,y\n")
    rows = list(read_record_table(path, schema))
    assert [row.row_number for row in rows] == [1, 2, 4]
    assert rows[0].record.extras == {"note": None}
    assert rows[1].record.warnings == ["row has more fields than the header; extra fields ignored"]
    assert rows[2].record.extras == {"note": "y"}


def test_missing_patient_column_refuses_the_table_at_the_call(
    tmp_path: Path, schema: RecordSchema
) -> None:
    path = tmp_path / "no_ids.csv"
    path.write_text("name_of_thing,age\nx,40\n")
    with pytest.raises(IngestError) as caught:
        read_record_table(path, schema)  # no iteration needed: checked at the call
    assert caught.value.reason is ReasonCode.RECORD_MISSING_ID


def test_unreadable_files(tmp_path: Path, schema: RecordSchema) -> None:
    garbage = tmp_path / "garbage.csv"
    garbage.write_bytes(bytes(np.random.default_rng(0).integers(0, 256, 4096, dtype=np.uint8)))
    broken_parquet = tmp_path / "broken.parquet"
    broken_parquet.write_bytes(b"PAR1" + b"\x00\x01" * 100)
    for path in (garbage, broken_parquet, tmp_path / "missing.csv", tmp_path):
        with pytest.raises(IngestError) as caught:
            read_record_table(path, schema)
        assert caught.value.reason is ReasonCode.RECORD_UNREADABLE
        assert str(tmp_path) not in str(caught.value)
    empty = tmp_path / "empty.csv"
    empty.write_bytes(b"")
    with pytest.raises(IngestError) as caught:
        read_record_table(empty, schema)
    assert caught.value.reason is ReasonCode.FILE_EMPTY
