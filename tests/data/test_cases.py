"""Cases: presence in canonical order, label matrices by name, and loading from the phantom store.

Most tests build :class:`Case` objects in code; the loading tests read the session's tiny phantom
store without writing to it.
"""

from __future__ import annotations

import math
from collections.abc import Iterator

import numpy as np
import pytest

from clinic.data.cases import (
    RECORD_FIELDS,
    Case,
    CohortNotFoundError,
    common_label_names,
    label_matrix,
    load_cases,
    record_values,
)
from clinic.settings import Settings
from clinic.store.store import Store
from schemas.modalities import MODALITIES
from tests.modelkit import TINY_COHORT, TINY_PATIENTS


def make_case(
    case_id: str,
    labels: dict[str, float] | None = None,
    *,
    xray_blob: str | None = None,
    ecg_blob: str | None = None,
    record: dict[str, float] | None = None,
    report: str | None = None,
) -> Case:
    return Case(
        case_id=case_id,
        patient_id=f"P-{case_id}",
        split=None,
        xray_blob=xray_blob,
        ecg_blob=ecg_blob,
        record=record,
        report=report,
        labels=labels or {},
    )


# --- Case.present ----------------------------------------------------------------------------


def test_present_lists_modalities_in_canonical_order() -> None:
    case = make_case("a", report="text", record={"age_years": 50.0}, ecg_blob="e", xray_blob="x")
    assert case.present == MODALITIES


def test_present_omits_absent_modalities_and_blank_reports() -> None:
    assert make_case("a").present == ()
    assert make_case("b", ecg_blob="e", report="").present == ("ecg",)
    assert make_case("c", record={}, report="seen").present == ("record", "report")


# --- label_matrix / common_label_names -------------------------------------------------------


def test_label_matrix_follows_the_order_of_names_with_nan_for_unknown() -> None:
    cases = [make_case("a", {"MI": 1.0, "AF": 0.0}), make_case("b", {"AF": 1.0})]
    matrix = label_matrix(cases, ["AF", "MI", "HF"])
    assert matrix.shape == (2, 3)
    assert matrix.dtype == np.float32
    np.testing.assert_array_equal(matrix[0], [0.0, 1.0, np.nan])
    np.testing.assert_array_equal(matrix[1], [1.0, np.nan, np.nan])


def test_label_matrix_of_no_cases_is_empty() -> None:
    assert label_matrix([], ["AF"]).shape == (0, 1)


def test_common_label_names_counts_positives_per_name() -> None:
    cases = [
        make_case("a", {"AF": 1.0, "MI": 0.0, "HF": 1.0}),
        make_case("b", {"AF": 1.0, "MI": 0.0, "HF": 0.2}),
        make_case("c", {"AF": 0.0, "PE": 0.7}),
    ]
    assert common_label_names(cases) == ["AF", "HF", "PE"]
    assert common_label_names(cases, min_positive=2) == ["AF"]
    assert common_label_names(cases, min_positive=0) == ["AF", "HF", "MI", "PE"]


def test_record_values_maps_sex_and_missing_values() -> None:
    values: list[float | None] = [float(i) for i in range(len(RECORD_FIELDS))]
    values[1] = None
    out = record_values("Female", values)
    assert out["is_female"] == 1.0
    assert out[RECORD_FIELDS[0]] == 0.0
    assert math.isnan(out[RECORD_FIELDS[1]])
    assert record_values("male", values)["is_female"] == 0.0
    assert math.isnan(record_values(None, values)["is_female"])


# --- load_cases on the tiny phantom store ----------------------------------------------------


@pytest.fixture(scope="module")
def phantom(tiny_phantom: Settings) -> Iterator[Store]:
    opened = Store.open(tiny_phantom, migrate=False)
    yield opened
    opened.close()


@pytest.fixture(scope="module")
def phantom_cases(phantom: Store) -> list[Case]:
    with phantom.session() as session:
        return load_cases(session, cohort=TINY_COHORT)


def test_load_cases_reads_every_encounter_of_the_cohort(phantom_cases: list[Case]) -> None:
    assert len(phantom_cases) >= TINY_PATIENTS
    assert len({case.case_id for case in phantom_cases}) == len(phantom_cases)
    assert len({case.patient_id for case in phantom_cases}) == TINY_PATIENTS
    assert all(case.present for case in phantom_cases)
    assert {m for case in phantom_cases for m in case.present} == set(MODALITIES)


def test_loaded_cases_reference_stored_blobs(phantom: Store, phantom_cases: list[Case]) -> None:
    for case in phantom_cases:
        for blob in (case.xray_blob, case.ecg_blob):
            assert blob is None or phantom.blobs.exists(blob)
        if case.ecg_blob is not None:
            assert case.ecg_rate_hz > 0
            assert case.ecg_leads
        if case.record is not None:
            assert set(case.record) == {*RECORD_FIELDS, "is_female"}


def test_loaded_labels_are_known_zero_or_one(phantom_cases: list[Case]) -> None:
    names = common_label_names(phantom_cases)
    assert names
    matrix = label_matrix(phantom_cases, names)
    known = matrix[np.isfinite(matrix)]
    assert known.size
    assert set(np.unique(known).tolist()) <= {0.0, 1.0}


def test_load_cases_is_stable_and_whole_store_includes_the_cohort(
    phantom: Store, phantom_cases: list[Case]
) -> None:
    with phantom.session() as session:
        again = load_cases(session, cohort=TINY_COHORT)
        everything = load_cases(session)
    assert [c.case_id for c in again] == [c.case_id for c in phantom_cases]
    assert {c.case_id for c in phantom_cases} <= {c.case_id for c in everything}


def test_label_vocabulary_restricts_labels(phantom: Store, phantom_cases: list[Case]) -> None:
    with phantom.session() as session:
        none = load_cases(session, cohort=TINY_COHORT, label_vocabulary="no-such-vocabulary")
    assert [c.case_id for c in none] == [c.case_id for c in phantom_cases]
    assert all(not case.labels for case in none)


def test_unknown_cohort_raises_and_names_the_known_ones(phantom: Store) -> None:
    with phantom.session() as session, pytest.raises(CohortNotFoundError, match=TINY_COHORT):
        load_cases(session, cohort="no-such-cohort")
    assert issubclass(CohortNotFoundError, LookupError)


# --- record extras ----------------------------------------------------------------------------


def test_extra_fields_add_numeric_extras_to_the_record_and_nan_otherwise(store: Store) -> None:
    from clinic.ingest.engine import IngestOptions, ingest
    from clinic.ingest.types import IngestItem, ItemKind

    def record_item(key: str, fields: dict[str, object]) -> IngestItem:
        return IngestItem(kind=ItemKind.RECORD, source=f"t#{key}", patient_key=key,
                          encounter_key=key, fields=fields)  # fmt: skip

    items = [
        record_item("a", {"sex": "female", "crp_val": 3.5, "pco2_val": 40, "note": "text"}),
        record_item("b", {"sex": "male", "crp_val": None}),
    ]
    ingest(store, items, IngestOptions(cohort="extras"))
    names = ("crp_val", "pco2_val", "note", "never_stored")
    with store.session() as session:
        plain = load_cases(session, cohort="extras")
        loaded = load_cases(session, cohort="extras", extra_fields=names)
    assert all(set(case.record or {}) == {*RECORD_FIELDS, "is_female"} for case in plain)
    by_sex = {(case.record or {})["is_female"]: case.record or {} for case in loaded}
    assert by_sex[1.0]["crp_val"] == 3.5 and by_sex[1.0]["pco2_val"] == 40.0
    assert math.isnan(by_sex[1.0]["note"]) and math.isnan(by_sex[1.0]["never_stored"])
    assert all(math.isnan(by_sex[0.0][name]) for name in names)
