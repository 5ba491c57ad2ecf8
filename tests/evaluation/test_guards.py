from __future__ import annotations

import numpy as np
import pytest

from clinic.evaluation.guards import (
    LabelOrderError,
    PatientLeakError,
    align_label_columns,
    assert_patient_disjoint,
)


def test_align_reorders_and_selects_by_name() -> None:
    matrix = np.array([[1, 2, 3], [4, 5, 6]])
    aligned = align_label_columns(matrix, ["a", "b", "c"], ["c", "a"])
    np.testing.assert_array_equal(aligned, [[3, 1], [6, 4]])


def test_align_names_missing_labels() -> None:
    with pytest.raises(LabelOrderError, match=r"missing.*'effusion'"):
        align_label_columns(np.zeros((2, 2)), ["a", "b"], ["a", "effusion"])


def test_align_names_duplicates_on_either_side() -> None:
    with pytest.raises(LabelOrderError, match=r"duplicate column names: \['a'\]"):
        align_label_columns(np.zeros((2, 3)), ["a", "b", "a"], ["a"])
    with pytest.raises(LabelOrderError, match=r"duplicate wanted names: \['b'\]"):
        align_label_columns(np.zeros((2, 2)), ["a", "b"], ["b", "b"])


def test_align_rejects_a_name_count_that_does_not_match_the_columns() -> None:
    with pytest.raises(LabelOrderError, match="3 columns but 2 names"):
        align_label_columns(np.zeros((2, 3)), ["a", "b"], ["a"])


def test_disjoint_patients_pass() -> None:
    assert_patient_disjoint(["p1", "p2"], ["p3"])


def test_leak_names_up_to_five_ids_and_the_count() -> None:
    shared = [f"p{i}" for i in range(7)]
    with pytest.raises(PatientLeakError) as caught:
        assert_patient_disjoint([*shared, "only-train"], [*shared, "only-test"])
    message = str(caught.value)
    assert message.startswith("7 patient id(s)")
    assert sum(f"'p{i}'" in message for i in range(7)) == 5
    assert "and 2 more" in message
    assert "only-train" not in message and "only-test" not in message
