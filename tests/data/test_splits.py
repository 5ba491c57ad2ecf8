"""Patient-level splits: disjoint by patient, stored folds and names kept, hashes stable."""

from __future__ import annotations

import pytest

from clinic.data.cases import Case
from clinic.data.splits import SPLITS, SplitPlan, assign_splits, hashed_split, patients_of


def case(patient: str, number: int = 0, split: str | None = None) -> Case:
    return Case(case_id=f"{patient}-{number}", patient_id=patient, split=split)


def many_patients(count: int, cases_each: int = 1) -> list[Case]:
    return [case(f"P{p:05d}", n) for p in range(count) for n in range(cases_each)]


def split_of(splits: dict[str, list[Case]], case_id: str) -> str:
    return next(name for name, cases in splits.items() if any(c.case_id == case_id for c in cases))


def test_every_case_lands_in_exactly_one_split() -> None:
    cases = many_patients(200, cases_each=3)
    splits = assign_splits(cases, SplitPlan())
    assert set(splits) == set(SPLITS)
    assigned = [c.case_id for name in SPLITS for c in splits[name]]
    assert sorted(assigned) == sorted(c.case_id for c in cases)


def test_splits_are_patient_disjoint_even_with_conflicting_stored_splits() -> None:
    cases = many_patients(100, cases_each=2)
    cases += [case("P00001", 7, "test"), case("P00002", 7, "train"), case("P00003", 7, "9")]
    splits = assign_splits(cases, SplitPlan())
    patients = {name: patients_of(splits[name]) for name in SPLITS}
    assert not patients["train"] & patients["val"]
    assert not patients["train"] & patients["test"]
    assert not patients["val"] & patients["test"]


def test_a_patients_first_case_decides_its_split() -> None:
    cases = [case("A", 0, "test"), case("A", 1, None), case("A", 2, "train")]
    splits = assign_splits(cases, SplitPlan())
    assert [c.case_id for c in splits["test"]] == ["A-0", "A-1", "A-2"]


@pytest.mark.parametrize(
    ("stored", "expected"),
    [("1", "train"), ("8", "train"), ("9", "val"), ("10", "test"), (" 10 ", "test")],
)
def test_stored_folds_are_kept(stored: str, expected: str) -> None:
    splits = assign_splits([case("X", 0, stored)], SplitPlan())
    assert split_of(splits, "X-0") == expected


def test_fold_numbers_follow_the_plan() -> None:
    plan = SplitPlan(val_folds=frozenset({1, 2}), test_folds=frozenset({3}))
    cases = [case(f"P{fold}", 0, str(fold)) for fold in range(1, 6)]
    splits = assign_splits(cases, plan)
    assert [c.patient_id for c in splits["val"]] == ["P1", "P2"]
    assert [c.patient_id for c in splits["test"]] == ["P3"]
    assert [c.patient_id for c in splits["train"]] == ["P4", "P5"]


@pytest.mark.parametrize(
    ("stored", "expected"),
    [("train", "train"), ("Training", "train"), ("valid", "val"), ("VALIDATION", "val"),
     ("validate", "val"), ("val", "val"), ("test", "test"), ("Test ", "test")],
)  # fmt: skip
def test_named_splits_are_kept(stored: str, expected: str) -> None:
    # A plan that would hash nobody into val/test shows the stored name, not the hash, decides.
    plan = SplitPlan(val_fraction=0.0, test_fraction=0.0)
    splits = assign_splits([case("X", 0, stored)], plan)
    assert split_of(splits, "X-0") == expected


def test_unknown_stored_split_falls_back_to_the_hash() -> None:
    plan = SplitPlan(seed=4)
    for patient in ("A", "B", "C", "D", "E", "F"):
        splits = assign_splits([case(patient, 0, "holdout-x")], plan)
        assert split_of(splits, f"{patient}-0") == hashed_split(patient, plan)


def test_hashed_split_is_stable_when_the_cohort_grows() -> None:
    plan = SplitPlan(seed=7)
    small = assign_splits(many_patients(50), plan)
    large = assign_splits(many_patients(500), plan)
    for name in SPLITS:
        assert patients_of(small[name]) <= patients_of(large[name])
    assert assign_splits(many_patients(50), plan) == small


def test_hashed_split_depends_on_the_seed() -> None:
    patients = [f"P{p}" for p in range(200)]
    first = [hashed_split(p, SplitPlan(seed=0)) for p in patients]
    second = [hashed_split(p, SplitPlan(seed=1)) for p in patients]
    assert first != second
    assert first == [hashed_split(p, SplitPlan(seed=0)) for p in patients]


def test_hashed_split_respects_the_fractions() -> None:
    plan = SplitPlan(val_fraction=0.2, test_fraction=0.1)
    splits = assign_splits(many_patients(4000), plan)
    assert len(splits["val"]) / 4000 == pytest.approx(0.2, abs=0.03)
    assert len(splits["test"]) / 4000 == pytest.approx(0.1, abs=0.03)
    nothing_held_out = assign_splits(
        many_patients(300), SplitPlan(val_fraction=0.0, test_fraction=0.0)
    )
    assert len(nothing_held_out["train"]) == 300


def test_plan_json_lists_sorted_folds() -> None:
    plan = SplitPlan(val_folds=frozenset({9, 8}), test_folds=frozenset({10}), seed=3)
    assert plan.to_json() == {"val_folds": [8, 9], "test_folds": [10], "val_fraction": 0.15,
                              "test_fraction": 0.15, "seed": 3}  # fmt: skip
