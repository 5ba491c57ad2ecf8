"""The clinical record contract (shipped JSON) and the label vocabulary."""

from __future__ import annotations

import json
import subprocess
import sys
from importlib import resources

import pytest
from pydantic import ValidationError

from schemas import (
    CHEXPERT_OBSERVATIONS,
    CORE_FIELD_NAMES,
    PHANTOM_CONDITIONS,
    PTBXL_SUPERCLASSES,
    VOCABULARIES,
    ChexpertObservation,
    FieldSpec,
    RecordSchema,
    get_vocabulary,
    load_record_schema,
    normalize_column_name,
)

EXPECTED_RANGES: dict[str, tuple[float, float]] = {
    "age_years": (0, 120),
    "height_cm": (30, 250),
    "weight_kg": (1, 400),
    "heart_rate_bpm": (20, 300),
    "systolic_bp_mmhg": (40, 300),
    "diastolic_bp_mmhg": (20, 200),
    "respiratory_rate_per_min": (4, 80),
    "temperature_c": (30, 45),
    "spo2_percent": (40, 100),
    "bnp_pg_ml": (0, 50000),
    "troponin_ng_l": (0, 100000),
    "wbc_10e9_l": (0, 200),
    "crp_mg_l": (0, 1000),
}


@pytest.fixture(scope="module")
def schema() -> RecordSchema:
    return load_record_schema()


def test_core_fields_are_exactly_the_database_columns(schema: RecordSchema) -> None:
    assert schema.name == "clinical_record_v1"
    assert schema.version == 1
    assert schema.field_names == CORE_FIELD_NAMES
    assert set(CORE_FIELD_NAMES) == {"sex", *EXPECTED_RANGES}


@pytest.mark.parametrize(("name", "bounds"), sorted(EXPECTED_RANGES.items()))
def test_numeric_ranges(schema: RecordSchema, name: str, bounds: tuple[float, float]) -> None:
    spec = schema.field(name)
    assert spec.dtype in ("float", "int")
    assert (spec.min, spec.max) == bounds
    assert spec.unit


def test_sex_is_a_category_accepting_words_and_letters_but_not_codes(
    schema: RecordSchema,
) -> None:
    spec = schema.field("sex")
    assert spec.dtype == "category"
    assert spec.allowed == ("female", "male", "other", "unknown")
    lookup = spec.category_lookup()
    assert lookup["f"] == lookup["female"] == "female"
    assert lookup["m"] == lookup["male"] == "male"
    assert "0" not in lookup and "1" not in lookup  # PTB-XL: 0 = male; others differ


def test_shipped_json_is_exactly_the_model(schema: RecordSchema) -> None:
    text = resources.files("schemas").joinpath("clinical_record_v1.json").read_text("utf-8")
    assert RecordSchema.model_validate_json(text) == schema
    assert RecordSchema.model_validate_json(schema.model_dump_json()) == schema
    assert [f["name"] for f in json.loads(text)["fields"]] == list(CORE_FIELD_NAMES)


@pytest.mark.parametrize(
    ("column", "field"),
    [
        ("age", "age_years"),
        ("Age", "age_years"),
        ("AGE_YEARS", "age_years"),
        ("Age (years)", "age_years"),
        ("SpO2 (%)", "spo2_percent"),
        ("Heart Rate", "heart_rate_bpm"),
        ("Temperature (°F)", "temperature_c"),
        ("Körpergröße", "height_cm"),
        ("trestbps", "systolic_bp_mmhg"),
    ],
)
def test_column_aliases_resolve_case_insensitively(
    schema: RecordSchema, column: str, field: str
) -> None:
    binding = schema.resolve_column(column)
    assert binding is not None
    assert binding.field.name == field


def test_unknown_columns_and_ambiguous_abbreviations_do_not_resolve(schema: RecordSchema) -> None:
    for column in ("chol", "RR", "nt_probnp", "thalch", "patient_id"):
        assert schema.resolve_column(column) is None


def test_fahrenheit_alias_converts(schema: RecordSchema) -> None:
    binding = schema.resolve_column("temperature_f")
    assert binding is not None and binding.conversion is not None
    assert binding.conversion.to_canonical(98.6) == pytest.approx(37.0)
    assert binding.conversion.to_canonical(212.0) == pytest.approx(100.0)
    assert binding.conversion.to_canonical(100.4) == 38.0  # no float noise
    assert schema.resolve_column("temperature_c") is not None
    assert schema.resolve_column("temperature_c").conversion is None  # type: ignore[union-attr]


def test_id_and_identifier_columns(schema: RecordSchema) -> None:
    assert schema.is_id_column("Patient ID") and schema.is_id_column("encounter_id")
    assert schema.is_drop_column("Patient Name") and schema.is_drop_column("DOB")
    assert not schema.is_drop_column("age")


def test_models_are_frozen(schema: RecordSchema) -> None:
    with pytest.raises(ValidationError):
        schema.version = 2  # type: ignore[misc]


@pytest.mark.parametrize("name", ["no_such_schema", "../pyproject", "Clinical_Record_V1", ""])
def test_load_refuses_unknown_or_unsafe_names(name: str) -> None:
    with pytest.raises(ValueError, match="record schema"):
        load_record_schema(name)


def _field(**overrides: object) -> dict[str, object]:
    base: dict[str, object] = {"name": "x", "dtype": "float", "min": 0, "max": 1}
    return {**base, **overrides}


@pytest.mark.parametrize(
    "bad",
    [
        _field(min=2, max=1),
        _field(dtype="category"),
        _field(dtype="category", allowed=["a"], value_aliases={"b": "c"}),
        _field(allowed=["a"]),
        _field(dtype="bool", conversions=[{"unit": "u", "aliases": ["x_u"], "factor": 2}]),
        _field(dtype="text"),
        _field(name="Bad Name"),
        _field(surprise=True),
    ],
)
def test_invalid_field_specs_are_refused(bad: dict[str, object]) -> None:
    with pytest.raises(ValidationError):
        FieldSpec.model_validate(bad)


def test_an_alias_claimed_by_two_fields_is_refused() -> None:
    fields = [_field(name="a", aliases=["shared"]), _field(name="b", aliases=["Shared"])]
    with pytest.raises(ValidationError, match="claimed twice"):
        RecordSchema.model_validate({"name": "s", "version": 1, "fields": fields})


def test_normalize_column_name() -> None:
    assert normalize_column_name("  Temperature (°F) ") == "temperature_f"
    assert normalize_column_name("SpO2 [%]") == "spo2"
    assert normalize_column_name("d-dimer_val") == "d_dimer_val"


def test_schemas_package_imports_neither_torch_nor_sqlalchemy() -> None:
    code = (
        "import sys, schemas; schemas.load_record_schema(); "
        "heavy = {'torch', 'sqlalchemy'} & set(sys.modules); "
        "sys.exit(f'imported {sorted(heavy)}' if heavy else 0)"
    )
    result = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True)
    assert result.returncode == 0, result.stderr


# -- labels -----------------------------------------------------------------------------------


def test_ptbxl_superclasses() -> None:
    assert PTBXL_SUPERCLASSES == ("NORM", "MI", "STTC", "CD", "HYP")


def test_chexpert_observations_match_the_csv_headers() -> None:
    assert CHEXPERT_OBSERVATIONS == (
        "No Finding",
        "Enlarged Cardiomediastinum",
        "Cardiomegaly",
        "Lung Opacity",
        "Lung Lesion",
        "Edema",
        "Consolidation",
        "Pneumonia",
        "Atelectasis",
        "Pneumothorax",
        "Pleural Effusion",
        "Pleural Other",
        "Fracture",
        "Support Devices",
    )
    assert ChexpertObservation("Pleural Effusion") is ChexpertObservation.PLEURAL_EFFUSION


def test_phantom_conditions() -> None:
    assert set(PHANTOM_CONDITIONS) == {
        "heart_failure",
        "atrial_fibrillation",
        "myocardial_infarction",
        "pneumonia",
        "pleural_effusion",
        "left_ventricular_hypertrophy",
        "no_finding",
    }


def test_vocabularies() -> None:
    assert set(VOCABULARIES) == {"ptbxl_superclass", "chexpert", "clinic"}
    clinic = get_vocabulary("clinic")
    assert clinic.labels == PHANTOM_CONDITIONS
    assert "pneumonia" in clinic and "Pneumonia" not in clinic
    assert get_vocabulary("chexpert").index("No Finding") == 0
    with pytest.raises(KeyError, match="unknown label vocabulary"):
        get_vocabulary("icd10")
