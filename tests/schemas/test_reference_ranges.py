"""Reference ranges: inclusive bounds, canonical units of the record schema, no flag without one."""

from __future__ import annotations

import math

import pytest

from schemas.clinical_record import CORE_FIELD_NAMES, load_record_schema
from schemas.reference_ranges import REFERENCE_RANGES, ReferenceRange, reference_flag


def test_every_range_is_a_core_field_in_its_canonical_unit() -> None:
    schema = load_record_schema()
    for name, reference in REFERENCE_RANGES.items():
        assert name == reference.field and name in CORE_FIELD_NAMES
        assert reference.unit == schema.field(name).unit
        assert reference.low is not None or reference.high is not None
        if reference.low is not None and reference.high is not None:
            assert reference.low < reference.high


def test_every_range_lies_within_the_plausible_values() -> None:
    schema = load_record_schema()
    for name, reference in REFERENCE_RANGES.items():
        spec = schema.field(name)
        for bound in (reference.low, reference.high):
            if bound is not None:
                assert spec.min is not None and spec.max is not None
                assert spec.min <= bound <= spec.max


@pytest.mark.parametrize(
    ("field", "value", "expected"),
    [
        ("heart_rate_bpm", 59.0, "low"),
        ("heart_rate_bpm", 60.0, None),
        ("heart_rate_bpm", 100.0, None),
        ("heart_rate_bpm", 101.0, "high"),
        ("systolic_bp_mmhg", 140.0, "high"),
        ("diastolic_bp_mmhg", 59.0, "low"),
        ("respiratory_rate_per_min", 21.0, "high"),
        ("temperature_c", 36.0, "low"),
        ("temperature_c", 37.8, None),
        ("temperature_c", 38.5, "high"),
        ("spo2_percent", 94.0, "low"),
        ("spo2_percent", 100.0, None),
        ("bnp_pg_ml", 0.0, None),
        ("bnp_pg_ml", 100.0, None),
        ("bnp_pg_ml", 450.0, "high"),
        ("troponin_ng_l", 14.0, None),
        ("troponin_ng_l", 15.0, "high"),
        ("wbc_10e9_l", 3.9, "low"),
        ("wbc_10e9_l", 11.5, "high"),
        ("crp_mg_l", 4.9, None),
        ("crp_mg_l", 80.0, "high"),
    ],
)
def test_values_strictly_outside_the_bounds_are_flagged(
    field: str, value: float, expected: str | None
) -> None:
    assert reference_flag(field, value) == expected


@pytest.mark.parametrize("field", ["age_years", "sex", "height_cm", "weight_kg", "unknown"])
def test_fields_without_an_adult_range_are_never_flagged(field: str) -> None:
    assert field not in REFERENCE_RANGES
    assert reference_flag(field, 0.0) is None and reference_flag(field, 1e6) is None


def test_missing_or_non_finite_values_are_not_flagged() -> None:
    assert reference_flag("heart_rate_bpm", None) is None
    assert reference_flag("heart_rate_bpm", math.nan) is None
    assert ReferenceRange("x", "u", 1.0, 2.0).flag(math.inf) is None
