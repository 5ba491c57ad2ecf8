from __future__ import annotations

import json
import math
import time

import numpy as np
import pytest
from sklearn.metrics import average_precision_score, roc_auc_score

from clinic.evaluation import metrics
from clinic.evaluation.metrics import (
    FloatArray,
    auprc,
    auroc,
    bootstrap_ci,
    expected_calibration_error,
    multilabel_metrics,
    reliability_curve,
    to_jsonable,
)


def _random_binary_task(seed: int, n: int = 200) -> tuple[FloatArray, FloatArray]:
    rng = np.random.default_rng(seed)
    y = (rng.random(n) < 0.3).astype(np.float64)
    y[:2] = [0.0, 1.0]  # both classes always present
    s = np.round(0.4 * y + rng.random(n), 2)  # rounding makes ties
    return y, s


@pytest.mark.parametrize("seed", range(5))
def test_auroc_and_auprc_equal_sklearn_including_ties(seed: int) -> None:
    y, s = _random_binary_task(seed)
    assert auroc(y, s) == pytest.approx(roc_auc_score(y, s), abs=1e-12)
    assert auprc(y, s) == pytest.approx(average_precision_score(y, s), abs=1e-12)


def test_masked_entries_are_ignored() -> None:
    y, s = _random_binary_task(0)
    y_masked, s_masked = y.copy(), s.copy()
    y_masked[10:20] = np.nan
    s_masked[30:35] = np.nan
    keep = np.ones(len(y), dtype=bool)
    keep[10:20] = keep[30:35] = False
    assert auroc(y_masked, s_masked) == pytest.approx(roc_auc_score(y[keep], s[keep]))
    assert auprc(y_masked, s_masked) == pytest.approx(average_precision_score(y[keep], s[keep]))


def test_single_known_class_is_nan_not_half() -> None:
    y = np.array([1.0, 1.0, np.nan, 1.0])
    s = np.array([0.2, 0.9, 0.1, 0.5])
    assert math.isnan(auroc(y, s))
    assert math.isnan(auprc(y, s))
    assert math.isnan(auroc([], []))


def test_labels_other_than_zero_one_nan_are_rejected() -> None:
    with pytest.raises(ValueError, match="0 or 1"):
        auroc([0.0, 2.0], [0.1, 0.2])


def test_ece_small_when_calibrated_large_when_not() -> None:
    rng = np.random.default_rng(0)
    p = rng.random(20_000)
    y = (rng.random(20_000) < p).astype(np.float64)
    assert expected_calibration_error(y, p) < 0.02
    overconfident = np.where(p > 0.5, 1.0, 0.0)
    assert expected_calibration_error(y, overconfident) > 0.2


def test_reliability_curve_bins_and_json() -> None:
    y = np.array([0.0, 1.0, 1.0, np.nan])
    p = np.array([0.1, 0.1, 1.0, 0.5])
    data = reliability_curve(y, p, n_bins=2)
    assert data.bin_edges == (0.0, 0.5, 1.0)
    assert data.counts == (2, 1)  # 1.0 falls in the last bin; the NaN label is dropped
    assert data.mean_predicted == pytest.approx((0.1, 1.0))
    assert data.observed_frequency == pytest.approx((0.5, 1.0))
    assert data.ece == pytest.approx((2 * 0.4 + 0.0) / 3)
    empty_bin = reliability_curve([0.0], [0.1], n_bins=2).to_json()
    assert empty_bin["mean_predicted"] == [0.1, None]
    json.dumps(empty_bin, allow_nan=False)


def test_bootstrap_ci_contains_estimate_and_is_deterministic() -> None:
    y, s = _random_binary_task(1)
    low, high = bootstrap_ci(auroc, y, s, n_resamples=300, seed=3)
    assert low < auroc(y, s) < high
    assert bootstrap_ci(auroc, y, s, n_resamples=300, seed=3) == (low, high)
    assert bootstrap_ci(auroc, y, s, n_resamples=300, seed=4) != (low, high)


def test_vectorised_bootstrap_matches_the_generic_path() -> None:
    y, s = _random_binary_task(2, n=60)
    y[5:9] = np.nan
    groups = np.arange(60) // 3
    for metric in (auroc, auprc):

        def generic(a: FloatArray, b: FloatArray, m: object = metric) -> float:
            return auroc(a, b) if m is auroc else auprc(a, b)

        for by in (None, groups):
            fast = bootstrap_ci(metric, y, s, groups=by, n_resamples=50, seed=1)
            slow = bootstrap_ci(generic, y, s, groups=by, n_resamples=50, seed=1)
            assert fast == pytest.approx(slow, abs=1e-12)


def test_chunked_resampling_gives_the_same_interval(monkeypatch: pytest.MonkeyPatch) -> None:
    y, s = _random_binary_task(3, n=60)
    whole = bootstrap_ci(auroc, y, s, n_resamples=100, seed=2)
    monkeypatch.setattr(metrics, "_CELLS_PER_CHUNK", 60 * 7)  # 7 resamples per chunk
    assert bootstrap_ci(auroc, y, s, n_resamples=100, seed=2) == whole


def test_group_resampling_moves_a_patients_cases_together() -> None:
    groups = np.repeat(np.arange(20), 3)  # 20 patients × 3 cases
    y = groups.astype(np.float64)  # the metric reads the patient id from y

    def all_patients_complete(a: FloatArray, _: FloatArray) -> float:
        """1 when every drawn patient's cases all came along (3 per draw), else 0."""
        _, cases_per_patient = np.unique(a, return_counts=True)
        return float((cases_per_patient % 3 == 0).all())

    by_patient = bootstrap_ci(all_patients_complete, y, y, groups=groups, n_resamples=50)
    by_row = bootstrap_ci(all_patients_complete, y, y, n_resamples=50)
    assert by_patient == (1.0, 1.0)
    assert by_row == (0.0, 0.0)


def test_resamples_with_undefined_metric_are_skipped() -> None:
    y = np.zeros(30)
    y[0] = 1.0  # one positive: many resamples miss it
    s = np.linspace(0.0, 1.0, 30)
    low, high = bootstrap_ci(auroc, y, s, n_resamples=200)
    assert math.isfinite(low) and math.isfinite(high)
    assert bootstrap_ci(auroc, np.zeros(5), s[:5]) == pytest.approx(
        (math.nan, math.nan), nan_ok=True
    )


def _label_table(seed: int, n: int = 300) -> tuple[FloatArray, FloatArray]:
    rng = np.random.default_rng(seed)
    y = (rng.random((n, 3)) < 0.4).astype(np.float64)
    p = np.clip(0.3 * y + 0.7 * rng.random((n, 3)), 0.0, 1.0)
    y[rng.random((n, 3)) < 0.1] = np.nan
    y[:, 2] = np.where(np.isnan(y[:, 2]), np.nan, 0.0)  # label "c": one known class only
    return y, p


def test_multilabel_metrics_excludes_single_class_labels_from_macros() -> None:
    y, p = _label_table(0)
    report = multilabel_metrics(y, p, ["a", "b", "c"], n_resamples=100)
    json.dumps(report, allow_nan=False)
    a, b, c = (report["labels"][name] for name in "abc")
    assert c["auroc"] is None and c["auroc_ci"] == [None, None] and c["auprc"] is None
    assert report["n_labels_averaged"] == 2
    assert report["macro_auroc"] == pytest.approx((a["auroc"] + b["auroc"]) / 2)
    assert report["macro_auprc"] == pytest.approx((a["auprc"] + b["auprc"]) / 2)
    assert report["ece"] == pytest.approx((a["ece"] + b["ece"]) / 2)
    known = ~np.isnan(y[:, 0])
    assert a["n"] == int(known.sum()) and a["n_positive"] == int(y[known, 0].sum())
    assert a["auroc"] == pytest.approx(roc_auc_score(y[known, 0], p[known, 0]))
    low, high = report["macro_auroc_ci"]
    assert low < report["macro_auroc"] < high


def test_multilabel_per_label_ci_uses_the_shared_resamples() -> None:
    y, p = _label_table(1)
    groups = np.arange(len(y)) // 2
    report = multilabel_metrics(y, p, ["a", "b", "c"], groups=groups, n_resamples=100, seed=7)
    alone = bootstrap_ci(auroc, y[:, 1], p[:, 1], groups=groups, n_resamples=100, seed=7)
    assert report["labels"]["b"]["auroc_ci"] == pytest.approx(list(alone))


def test_multilabel_bootstrap_is_fast() -> None:
    rng = np.random.default_rng(0)
    y = (rng.random((1000, 5)) < 0.3).astype(np.float64)
    p = rng.random((1000, 5))
    start = time.perf_counter()
    multilabel_metrics(y, p, list("abcde"), n_resamples=1000)
    assert time.perf_counter() - start < 5.0


def test_multilabel_rejects_mismatched_names() -> None:
    y, p = _label_table(0)
    with pytest.raises(ValueError, match="label names"):
        multilabel_metrics(y, p, ["a", "b"])


def test_to_jsonable_turns_nan_into_none() -> None:
    value = {"x": np.float32(np.nan), "y": (np.int64(2), np.array([1.5, np.inf])), 3: True}
    assert to_jsonable(value) == {"x": None, "y": [2, [1.5, None]], "3": True}
