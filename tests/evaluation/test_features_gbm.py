"""FeaturesGbm: one gradient-boosting model per label, NaN features and NaN labels allowed."""

from __future__ import annotations

import numpy as np
import numpy.typing as npt
import pytest
from sklearn.metrics import roc_auc_score

from clinic.evaluation.features_gbm import FeaturesGbm, GbmParams

FAST = GbmParams(max_iter=40)
LABELS = ("first", "second")


def synthetic_problem(n: int, seed: int) -> tuple[npt.NDArray[np.float64], npt.NDArray[np.float64]]:
    """X (n, 6) noise except: label 0 ⇔ feature 0 > 0, label 1 ⇔ feature 3 < -0.5."""
    rng = np.random.default_rng(seed)
    X = rng.normal(size=(n, 6))
    Y = np.column_stack([X[:, 0] > 0, X[:, 3] < -0.5]).astype(np.float64)
    return X, Y


def test_learns_labels_each_set_by_one_feature_despite_nan_features_and_labels() -> None:
    X, Y = synthetic_problem(300, seed=0)
    rng = np.random.default_rng(1)
    X[rng.random(X.shape) < 0.1] = np.nan  # missing measurements (absent leads, no P wave)
    Y[rng.random(Y.shape) < 0.2] = np.nan  # unknown labels
    model = FeaturesGbm(FAST).fit(X, Y, LABELS, seed=0)
    X_test, Y_test = synthetic_problem(200, seed=2)
    probabilities = model.predict_proba(X_test)
    assert probabilities.shape == (200, 2)
    assert np.all((probabilities >= 0) & (probabilities <= 1))
    for k in range(2):
        assert roc_auc_score(Y_test[:, k], probabilities[:, k]) > 0.9
    assert model.label_names == LABELS


def test_rows_with_unknown_label_are_skipped_not_taken_as_negative() -> None:
    X, Y = synthetic_problem(300, seed=6)
    Y[X[:, 0] > 0.8, 0] = np.nan  # if NaN were read as 0, large feature 0 would look negative
    model = FeaturesGbm(FAST).fit(X, Y, LABELS)
    probe = np.zeros((1, 6))
    probe[0, 0] = 2.0
    assert model.predict_proba(probe)[0, 0] > 0.8


def test_nan_in_the_deciding_feature_at_prediction_time_still_predicts() -> None:
    X, Y = synthetic_problem(200, seed=3)
    model = FeaturesGbm(FAST).fit(X, Y, LABELS)
    X_test = X[:5].copy()
    X_test[:, 0] = np.nan
    assert np.isfinite(model.predict_proba(X_test)).all()


def test_label_with_one_known_class_predicts_its_prevalence() -> None:
    X, Y = synthetic_problem(100, seed=4)
    Y[:, 1] = np.nan
    Y[:10, 1] = 1.0
    probabilities = FeaturesGbm(FAST).fit(X, Y, LABELS).predict_proba(X[:3])
    np.testing.assert_allclose(probabilities[:, 1], 1.0)


def test_same_seed_same_predictions_and_shapes_are_checked() -> None:
    X, Y = synthetic_problem(120, seed=5)
    first = FeaturesGbm(FAST).fit(X, Y, LABELS, seed=7).predict_proba(X)
    second = FeaturesGbm(FAST).fit(X, Y, LABELS, seed=7).predict_proba(X)
    np.testing.assert_array_equal(first, second)
    with pytest.raises(ValueError, match="shape"):
        FeaturesGbm(FAST).fit(X, Y[:, :1], LABELS)
    with pytest.raises(RuntimeError, match="before fit"):
        FeaturesGbm(FAST).predict_proba(X)
