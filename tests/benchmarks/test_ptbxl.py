"""The PTB-XL benchmark's split: patient-disjoint, superclass cases only, no test reports."""

from __future__ import annotations

from pathlib import Path

import pytest

from clinic.benchmarks.ptbxl import PtbxlOptions, _split, run_ptbxl_benchmark, superclass_matrix
from clinic.data.cases import Case
from clinic.data.splits import patients_of
from clinic.ingest.importers.ptbxl import SUPERCLASSES


def ecg_case(case_id: str, patient: str, labels: dict[str, float], fold: str = "1") -> Case:
    return Case(case_id, patient, fold, ecg_blob=f"blob-{case_id}", ecg_leads=("I",),
                ecg_rate_hz=100, report=f"sinusrhythmus {case_id}", labels=labels)  # fmt: skip


MI = {"MI": 1.0, "NORM": 0.0}
NONE = {"NORM": 0.0}  # annotated, but no superclass


def training_cases() -> list[Case]:
    """60 patients with one usable ECG each, plus the awkward ones."""
    cases = [ecg_case(f"t{i}", f"P{i}", MI) for i in range(60)]
    cases += [
        ecg_case("shared-a", "SHARED", MI),  # this patient also has a test ECG
        ecg_case("shared-b", "SHARED", {"NORM": 1.0}),
        ecg_case("no-class", "P100", NONE),
        Case("no-ecg", "P101", "1", labels=MI),  # no ECG: not usable, not counted
    ]
    return cases


def test_split_drops_training_cases_of_test_patients_and_counts_them() -> None:
    test = [ecg_case("x1", "SHARED", MI, "10"), ecg_case("x2", "Q1", {"NORM": 1.0}, "10")]
    split = _split(training_cases(), test)
    assert split.dropped_overlap == 2
    training_patients = patients_of(split.train) | patients_of(split.val)
    assert "SHARED" not in training_patients
    assert not training_patients & patients_of(split.test)
    assert len(split.train) + len(split.val) == 60
    assert split.val and len(split.val) < len(split.train)


def test_split_leaves_out_cases_without_a_superclass_and_counts_them() -> None:
    test = [ecg_case("x1", "Q1", MI, "10"), ecg_case("x2", "Q2", NONE, "10")]
    split = _split(training_cases(), test)
    kept = {c.case_id for c in split.train + split.val + split.test}
    assert "no-class" not in kept and "x2" not in kept and "no-ecg" not in kept
    assert [c.case_id for c in split.test] == ["x1"]
    assert split.dropped_no_superclass == 2


def test_test_cases_lose_their_reports_and_keep_everything_else() -> None:
    original = ecg_case("x1", "Q1", MI, "10")
    split = _split(training_cases(), [original])
    assert split.test[0].report is None
    assert split.test[0].ecg_blob == original.ecg_blob and split.test[0].labels == MI
    assert original.report is not None, "the caller's case must not be modified"
    assert all(c.report for c in split.train)


def test_one_folder_split_by_folds_counts_each_left_out_case_once() -> None:
    """With one folder the test cases are also in the training list (import_and_split)."""
    test_folder = [ecg_case("x1", "Q1", MI, "10"), ecg_case("x2", "Q2", NONE, "10")]
    everything = [*training_cases(), *test_folder]
    test = [c for c in everything if c.split == "10"]
    split = _split(everything, test)
    assert [c.case_id for c in split.test] == ["x1"]
    assert "x1" not in {c.case_id for c in split.train + split.val}
    assert split.dropped_no_superclass == 2  # "no-class" and "x2", each once


def test_split_needs_training_and_test_ecgs() -> None:
    with pytest.raises(ValueError, match="need training and test ECGs"):
        _split(training_cases(), [ecg_case("x2", "Q2", NONE, "10")])


def test_superclass_matrix_follows_the_official_order() -> None:
    matrix = superclass_matrix([ecg_case("a", "P", {"MI": 1.0, "NORM": 0.0})])
    assert matrix.shape == (1, len(SUPERCLASSES))
    assert matrix[0, SUPERCLASSES.index("MI")] == 1.0
    assert matrix[0, SUPERCLASSES.index("NORM")] == 0.0


def test_one_folder_without_test_folds_is_refused(tmp_path: Path) -> None:
    folder = tmp_path / "ptbxl"
    folder.mkdir()
    options = PtbxlOptions(train_dir=folder, test_dir=folder / ".", home=tmp_path / "home")
    with pytest.raises(ValueError, match="--test-folds"):
        run_ptbxl_benchmark(options)
