"""Patient-level train / validation / test splits.

A patient's cases always land in one split: a model must never see a test patient's other
encounters in training. Sources that ship folds keep them (PTB-XL's ``strat_fold`` is stored as
the encounter's split), sources that name splits keep the names, and the rest are assigned by a
keyed hash of the patient pseudonym, so a patient keeps its split when the cohort grows.
"""

from __future__ import annotations

import hashlib
from collections.abc import Collection, Sequence
from dataclasses import dataclass

from clinic.data.cases import Case

SPLITS = ("train", "val", "test")
_NAMED = {"train": "train", "training": "train", "val": "val", "valid": "val",
          "validate": "val", "validation": "val", "test": "test"}  # fmt: skip


@dataclass(frozen=True)
class SplitPlan:
    """How cases are assigned: by stored fold numbers when present, else by patient hash."""

    val_folds: frozenset[int] = frozenset({9})
    test_folds: frozenset[int] = frozenset({10})
    val_fraction: float = 0.15
    test_fraction: float = 0.15
    seed: int = 0

    def to_json(self) -> dict[str, object]:
        return {
            "val_folds": sorted(self.val_folds),
            "test_folds": sorted(self.test_folds),
            "val_fraction": self.val_fraction,
            "test_fraction": self.test_fraction,
            "seed": self.seed,
        }


def assign_splits(cases: Sequence[Case], plan: SplitPlan) -> dict[str, list[Case]]:
    """``{"train": [...], "val": [...], "test": [...]}``, patient-disjoint by construction."""
    by_patient: dict[str, str] = {}
    for case in cases:
        if case.patient_id not in by_patient:
            by_patient[case.patient_id] = _split_of(case, plan)
    out: dict[str, list[Case]] = {name: [] for name in SPLITS}
    for case in cases:
        out[by_patient[case.patient_id]].append(case)
    return out


def _split_of(case: Case, plan: SplitPlan) -> str:
    stored = (case.split or "").strip().lower()
    if stored in _NAMED:
        return _NAMED[stored]
    if stored.isdigit():
        fold = int(stored)
        if fold in plan.test_folds:
            return "test"
        return "val" if fold in plan.val_folds else "train"
    return hashed_split(case.patient_id, plan)


def hashed_split(patient_id: str, plan: SplitPlan) -> str:
    """Stable split from a hash of (seed, patient): the same patient, the same split."""
    digest = hashlib.sha256(f"{plan.seed}:{patient_id}".encode()).digest()
    unit = int.from_bytes(digest[:8], "big") / 2**64
    if unit < plan.test_fraction:
        return "test"
    return "val" if unit < plan.test_fraction + plan.val_fraction else "train"


def patients_of(cases: Collection[Case]) -> set[str]:
    return {case.patient_id for case in cases}
