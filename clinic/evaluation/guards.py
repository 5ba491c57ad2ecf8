"""Evaluation guards: checks that fail loudly where a silent mistake would inflate a result.

Two mistakes make a model look better or worse than it is without any error: comparing label
columns in different orders (a positional mix-up scores one finding's predictions against
another finding's labels), and letting a patient appear in both training and test data (the
model recognises the patient, not the finding). Each has its own exception class so callers
and tests can tell them apart from ordinary ``ValueError`` input problems.
"""

from __future__ import annotations

from collections import Counter
from collections.abc import Hashable, Iterable, Sequence
from typing import TypeVar

import numpy as np
import numpy.typing as npt

ScalarT = TypeVar("ScalarT", bound=np.generic)

_SHOWN_IDS = 5


class LabelOrderError(ValueError):
    """Label columns cannot be matched by name (missing, duplicated or miscounted names)."""


class PatientLeakError(ValueError):
    """A patient appears on both sides of a train / test boundary."""


def _duplicates(names: Sequence[str]) -> list[str]:
    return sorted(name for name, count in Counter(names).items() if count > 1)


def align_label_columns(
    matrix: npt.NDArray[ScalarT], names: Sequence[str], wanted_names: Sequence[str]
) -> npt.NDArray[ScalarT]:
    """Columns of matrix (N, K) named ``names``, reordered (and selected) to ``wanted_names``.

    Label order is checked by name, never by position: a column that is missing, a name that
    appears twice, or a name count that does not match the columns raises LabelOrderError
    naming the offenders. Columns not wanted are dropped. Returns (N, len(wanted_names)).
    """
    if matrix.ndim != 2:
        raise LabelOrderError(f"expected an (N, K) label matrix, got shape {matrix.shape}")
    if matrix.shape[1] != len(names):
        raise LabelOrderError(f"{matrix.shape[1]} columns but {len(names)} names: {list(names)}")
    for side, given in (("column names", names), ("wanted names", wanted_names)):
        repeated = _duplicates(given)
        if repeated:
            raise LabelOrderError(f"duplicate {side}: {repeated}")
    position = {name: index for index, name in enumerate(names)}
    missing = [name for name in wanted_names if name not in position]
    if missing:
        raise LabelOrderError(f"wanted labels missing from the columns: {missing}")
    return matrix[:, [position[name] for name in wanted_names]]


def assert_patient_disjoint(
    train_patients: Iterable[Hashable], test_patients: Iterable[Hashable]
) -> None:
    """Raise PatientLeakError naming up to five shared patient ids and how many there are."""
    shared = set(train_patients) & set(test_patients)
    if not shared:
        return
    shown = sorted(shared, key=str)[:_SHOWN_IDS]
    more = f" (and {len(shared) - len(shown)} more)" if len(shared) > len(shown) else ""
    raise PatientLeakError(
        f"{len(shared)} patient id(s) in both train and test: "
        f"{', '.join(repr(patient) for patient in shown)}{more}"
    )
