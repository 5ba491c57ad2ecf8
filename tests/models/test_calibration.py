"""Per-subset Platt calibration: recovery of known parameters, ECE, JSON, abstention."""

from __future__ import annotations

import json

import numpy as np
import numpy.typing as npt
import pytest

from clinic.evaluation.metrics import expected_calibration_error
from clinic.models.calibration import CalibrationMap, fit_calibration, fit_platt, fit_subset

FloatArray = npt.NDArray[np.float64]
NAMES = ("heart_failure", "pneumonia")


def sigmoid(values: FloatArray) -> FloatArray:
    return np.asarray(1.0 / (1.0 + np.exp(-values)), dtype=np.float64)


def logistic_data(
    n: int, slope: float, intercept: float, seed: int
) -> tuple[FloatArray, FloatArray]:
    """Scores and 0/1 labels drawn with P(y = 1 | s) = sigmoid(slope·s + intercept)."""
    rng = np.random.default_rng(seed)
    scores = rng.normal(0.0, 2.0, n)
    labels = (rng.random(n) < sigmoid(slope * scores + intercept)).astype(np.float64)
    return scores, labels


def test_fit_platt_recovers_a_known_slope_and_intercept() -> None:
    scores, labels = logistic_data(20_000, slope=0.4, intercept=-0.7, seed=0)
    slope, intercept = fit_platt(scores, labels, l2=1e-6)
    assert slope == pytest.approx(0.4, abs=0.03)
    assert intercept == pytest.approx(-0.7, abs=0.05)


def test_fit_platt_is_the_identity_with_too_few_cases_or_one_class() -> None:
    assert fit_platt(np.arange(5.0), np.array([0.0, 1.0, 0.0, 1.0, 1.0])) == (1.0, 0.0)
    assert fit_platt(np.arange(50.0), np.ones(50)) == (1.0, 0.0)


def test_the_l2_pull_keeps_small_subsets_near_the_identity() -> None:
    scores, labels = logistic_data(40, slope=0.3, intercept=1.0, seed=1)
    free, _ = fit_platt(scores, labels, l2=0.0)
    pulled, pulled_intercept = fit_platt(scores, labels, l2=10.0)
    assert abs(pulled - 1.0) < abs(free - 1.0)
    assert abs(pulled_intercept) < 0.2


def overconfident_logits(n: int, seed: int) -> tuple[FloatArray, FloatArray]:
    """(N, 2) logits three times too sure and shifted, with their (N, 2) labels."""
    columns = [logistic_data(n, 1.0, 0.0, seed + k) for k in range(len(NAMES))]
    true_logits = np.stack([scores for scores, _ in columns], axis=1)
    labels = np.stack([labels for _, labels in columns], axis=1)
    return 3.0 * true_logits + 1.0, labels


def test_calibration_lowers_the_ece_of_miscalibrated_logits() -> None:
    val_logits, val_labels = overconfident_logits(3000, seed=10)
    test_logits, test_labels = overconfident_logits(3000, seed=20)
    calibration = fit_calibration({"ecg": val_logits}, {"ecg": val_labels}, NAMES)
    calibrated = calibration.probabilities(test_logits, "ecg")
    for k in range(len(NAMES)):
        raw_ece = expected_calibration_error(test_labels[:, k], sigmoid(test_logits[:, k]))
        new_ece = expected_calibration_error(test_labels[:, k], calibrated[:, k])
        assert new_ece < 0.5 * raw_ece and new_ece < 0.04, (raw_ece, new_ece)
    fitted = calibration.subsets["ecg"]
    assert fitted.slope == pytest.approx([1 / 3, 1 / 3], abs=0.05)
    assert fitted.n == 3000 and set(fitted.reliability) == {"0", "1"}


def test_unknown_labels_are_left_out_of_the_fit() -> None:
    logits, labels = overconfident_logits(600, seed=30)
    with_nan = labels.copy()
    with_nan[::2, 1] = np.nan
    fitted = fit_subset(logits, with_nan)
    assert all(np.isfinite(fitted.slope)) and fitted.auroc[1] is not None
    assert fitted.slope[1] == pytest.approx(fit_platt(logits[1::2, 1], labels[1::2, 1])[0])
    assert fitted.slope[0] == pytest.approx(fit_platt(logits[:, 0], labels[:, 0])[0])


def two_subset_map(min_auroc: float = 0.6) -> CalibrationMap:
    """ "ecg": label 0 informative, label 1 pure noise; "xray": label 1 has one class only."""
    rng = np.random.default_rng(40)
    informative, labels0 = logistic_data(400, 3.0, 0.0, seed=41)
    labels1 = (rng.random(400) < 0.5).astype(np.float64)
    ecg_logits = np.stack([informative, rng.normal(size=400)], axis=1)
    xray_labels = np.stack([labels0, np.zeros(400)], axis=1)
    return fit_calibration(
        {"ecg": ecg_logits, "xray": ecg_logits},
        {"ecg": np.stack([labels0, labels1], axis=1), "xray": xray_labels},
        NAMES,
        min_auroc=min_auroc,
    )


def test_abstention_follows_min_auroc() -> None:
    calibration = two_subset_map()
    auroc = calibration.subsets["ecg"].auroc
    assert auroc[0] is not None and auroc[0] > 0.8
    assert auroc[1] is not None and 0.35 < auroc[1] < 0.65
    assert calibration.abstains("ecg") == [False, True]
    assert two_subset_map(min_auroc=0.99).abstains("ecg") == [True, True]
    assert two_subset_map(min_auroc=0.0).abstains("ecg") == [False, False]


def test_an_undefined_auroc_abstains_whatever_the_threshold() -> None:
    calibration = two_subset_map(min_auroc=0.0)
    assert calibration.subsets["xray"].auroc[1] is None
    assert calibration.abstains("xray") == [False, True]


def test_an_unseen_subset_keeps_the_raw_sigmoid_and_abstains() -> None:
    calibration = two_subset_map()
    logits = np.array([[-2.0, 0.0], [3.0, 1.5]])
    np.testing.assert_allclose(calibration.probabilities(logits, "record+report"), sigmoid(logits))
    assert calibration.abstains("record+report") == [True, True]
    assert not np.allclose(calibration.probabilities(logits, "ecg"), sigmoid(logits))


def test_json_round_trip_keeps_content_and_hash() -> None:
    calibration = two_subset_map()
    text = json.dumps(calibration.to_json(), allow_nan=False)
    restored = CalibrationMap.from_json(json.loads(text))
    assert restored.to_json() == calibration.to_json()
    assert restored.content_hash() == calibration.content_hash()
    assert restored.label_names == NAMES
    logits = np.random.default_rng(0).normal(size=(7, 2))
    np.testing.assert_array_equal(
        restored.probabilities(logits, "ecg"), calibration.probabilities(logits, "ecg")
    )
    assert restored.abstains("xray") == calibration.abstains("xray")


def test_the_content_hash_changes_with_the_content() -> None:
    calibration = two_subset_map()
    original = calibration.content_hash()
    assert two_subset_map(min_auroc=0.7).content_hash() != original
    calibration.subsets["ecg"].slope[0] += 1e-9
    assert calibration.content_hash() != original


def test_empty_subsets_are_not_fitted() -> None:
    calibration = fit_calibration(
        {"ecg": np.zeros((0, 2)), "xray": np.zeros((12, 2))},
        {"ecg": np.zeros((0, 2)), "xray": np.zeros((12, 2))},
        NAMES,
    )
    assert set(calibration.subsets) == {"xray"}
