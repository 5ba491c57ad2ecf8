"""Handcrafted ECG features on synthetic beats with known truth and on real PTB-XL records."""

from __future__ import annotations

import math
from pathlib import Path

import numpy as np
import numpy.typing as npt
import pytest
import wfdb
from scipy.special import expit

from clinic.data.ecg_features import (
    PER_LEAD_FEATURES,
    ecg_feature_matrix,
    ecg_feature_names,
    ecg_features,
)
from clinic.ingest.types import STANDARD_LEADS

FS = 500.0
Signal = npt.NDArray[np.float32]
# Per lead: QRS gain and T gain (aVR inverted, V1 mostly negative, like a normal ECG).
QRS_GAIN = (1.0, 1.2, 0.4, -1.0, 0.5, 0.8, -0.6, -0.2, 0.5, 1.0, 1.2, 1.0)
T_GAIN = (0.8, 1.0, 0.3, -0.8, 0.4, 0.7, 0.2, 0.9, 1.0, 1.0, 0.9, 0.8)
# (centre s after R, width s, amplitude mV, which gain): a Gaussian-bump P-Q-R-S-T template;
# P and T share the "t" gains.
WAVES = (
    (-0.17, 0.022, 0.12, "t"),
    (-0.028, 0.008, -0.12, "qrs"),
    (0.0, 0.010, 1.2, "qrs"),
    (0.028, 0.009, -0.3, "qrs"),
    (0.30, 0.045, 0.35, "t"),
)


def synthetic_ecg(
    rr_s: list[float], duration_s: float = 10.0, st_mv: dict[str, float] | None = None
) -> Signal:
    """(12, T) ECG with R peaks at the cumulative sum of ``rr_s`` (starting at 0.4 s).

    ``st_mv`` adds, per lead, a flat ST shift from J (R + 50 ms) into the T wave: a smooth
    plateau, as in ST elevation.
    """
    t = np.arange(int(duration_s * FS)) / FS
    x = np.zeros((12, len(t)))
    r_times = 0.4 + np.concatenate([[0.0], np.cumsum(rr_s)])
    gains = {"qrs": np.array(QRS_GAIN)[:, None], "t": np.array(T_GAIN)[:, None]}
    shifts = np.zeros((12, 1))
    for lead, mv in (st_mv or {}).items():
        shifts[STANDARD_LEADS.index(lead)] = mv
    for r in r_times[r_times < duration_s - 0.1]:
        for centre, width, amplitude, gain in WAVES:
            x += gains[gain] * amplitude * np.exp(-0.5 * ((t - r - centre) / width) ** 2)
        plateau = expit((t - r - 0.05) / 0.004) - expit((t - r - 0.3) / 0.02)
        x += shifts * plateau
    rng = np.random.default_rng(0)
    wander = 0.2 * np.sin(2 * np.pi * 0.15 * t)  # baseline wander the filter must remove
    return (x + wander + rng.normal(0, 0.01, x.shape)).astype(np.float32)


def named(values: npt.NDArray[np.float32]) -> dict[str, float]:
    return dict(zip(ecg_feature_names(), values.tolist(), strict=True))


@pytest.mark.parametrize("bpm", [60.0, 100.0])
def test_heart_rate_of_regular_beats_is_recovered(bpm: float) -> None:
    features = named(ecg_features(synthetic_ecg([60.0 / bpm] * 20), FS))
    assert abs(features["hr_bpm"] - bpm) < 2.0
    assert features["rr_std_ms"] < 5.0
    # The template's QRS spans about ±50 ms, P starts ~200 ms and T ends ~390 ms after R.
    assert 70.0 <= features["qrs_dur_ms"] <= 110.0
    assert 130.0 <= features["pr_ms"] <= 200.0
    assert 380.0 <= features["qt_ms"] <= 470.0
    assert features["II_r_amp"] == pytest.approx(1.2 * 1.2, abs=0.15)
    assert features["aVR_s_amp"] < -1.0 and features["aVR_r_amp"] < 0.4  # inverted QRS


def test_irregular_rhythm_scores_higher_variability_than_regular() -> None:
    rr_s = list(np.random.default_rng(1).uniform(0.5, 1.1, 20))
    irregular = named(ecg_features(synthetic_ecg(rr_s), FS))
    r_times = 0.4 + np.concatenate([[0.0], np.cumsum(rr_s)])
    true_rr_ms = 1000.0 * np.diff(r_times[r_times < 9.9])
    # Every beat found and none added: shortest, longest and mean RR match the truth.
    assert irregular["rr_min_ms"] == pytest.approx(true_rr_ms.min(), abs=10.0)
    assert irregular["rr_max_ms"] == pytest.approx(true_rr_ms.max(), abs=10.0)
    assert irregular["rr_mean_ms"] == pytest.approx(true_rr_ms.mean(), abs=5.0)
    regular = named(ecg_features(synthetic_ecg([0.8] * 20), FS))
    for name in ("rr_std_ms", "rr_rmssd_ms", "rr_cv", "rr_irregularity"):
        assert irregular[name] > regular[name] + 0.01, name
    assert irregular["rr_irregularity"] > 0.1 > regular["rr_irregularity"]


def test_st_elevation_in_v2_raises_its_st_level_only() -> None:
    base = named(ecg_features(synthetic_ecg([0.8] * 20), FS))
    raised = named(ecg_features(synthetic_ecg([0.8] * 20, st_mv={"V2": 0.25}), FS))
    assert raised["V2_st_j60"] - base["V2_st_j60"] > 0.15
    assert abs(raised["V5_st_j60"] - base["V5_st_j60"]) < 0.03
    assert raised["anterior_st_max"] > base["anterior_st_max"] + 0.1


def test_missing_leads_give_nan_for_their_features_and_finite_rhythm() -> None:
    signal = synthetic_ecg([0.75] * 20)
    signal[STANDARD_LEADS.index("aVL")] = 0.0  # flat: masked or disconnected
    signal[STANDARD_LEADS.index("V3")] = np.nan  # absent
    features = named(ecg_features(signal, FS))
    for lead in ("aVL", "V3"):
        assert all(math.isnan(features[f"{lead}_{name}"]) for name in PER_LEAD_FEATURES)
    assert all(math.isfinite(features[f"V2_{name}"]) for name in PER_LEAD_FEATURES)
    assert abs(features["hr_bpm"] - 80.0) < 2.0
    assert features["flat_lead_fraction"] == pytest.approx(2 / 12)
    assert math.isnan(features["cornell_mv"])  # needs aVL and V3


def test_output_is_float32_with_one_value_per_name() -> None:
    names = ecg_feature_names()
    values = ecg_features(synthetic_ecg([0.9] * 12), FS)
    assert values.dtype == np.float32 and values.shape == (len(names),)
    assert len(set(names)) == len(names)
    assert len(names) == 12 * len(PER_LEAD_FEATURES) + 39


@pytest.mark.parametrize(
    "signal",
    [
        np.full((12, 5000), np.nan, np.float32),
        np.zeros((12, 5000), np.float32),
        np.random.default_rng(2).normal(0, 0.05, (12, 5000)).astype(np.float32),
        synthetic_ecg([0.8], duration_s=0.6),
    ],
    ids=["all-nan", "all-flat", "noise-only", "too-short"],
)
def test_unusable_signals_give_nan_heart_rate_without_raising(signal: Signal) -> None:
    features = named(ecg_features(signal, FS))
    assert math.isnan(features["hr_bpm"])


def test_lower_sampling_rate_gives_the_same_rhythm() -> None:
    signal = synthetic_ecg([0.7] * 20)
    at_100 = named(ecg_features(signal[:, ::5], 100.0))
    assert abs(at_100["hr_bpm"] - 60.0 / 0.7) < 2.0


def test_feature_matrix_stacks_rows_and_matches_the_pool() -> None:
    signals = np.stack([synthetic_ecg([0.6] * 20), synthetic_ecg([1.0] * 12)])
    matrix = ecg_feature_matrix(signals, FS)
    assert matrix.shape == (2, len(ecg_feature_names())) and matrix.dtype == np.float32
    np.testing.assert_array_equal(matrix[1], ecg_features(signals[1], FS))
    np.testing.assert_array_equal(ecg_feature_matrix(signals, FS, workers=2), matrix)
    assert ecg_feature_matrix([], FS).shape == (0, len(ecg_feature_names()))


def ptbxl_features(shared_data: Path, ecg_id: str) -> dict[str, float]:
    record = shared_data / "ptbxl" / "records500" / "00000" / f"{ecg_id}_hr"
    signal, fields = wfdb.rdsamp(str(record))
    assert [name.upper() for name in fields["sig_name"]] == [n.upper() for n in STANDARD_LEADS]
    return named(ecg_features(signal.T.astype(np.float32), float(fields["fs"])))


@pytest.mark.parametrize("ecg_id", ["00001", "00363", "00428"])
def test_real_ptbxl_record_has_plausible_rate_and_qrs(shared_data: Path, ecg_id: str) -> None:
    features = ptbxl_features(shared_data, ecg_id)
    assert 30.0 <= features["hr_bpm"] <= 200.0
    assert 40.0 <= features["qrs_dur_ms"] <= 200.0
    # Every lead is recorded, so every per-lead feature is measured (P only where P waves are).
    per_lead = [name for name in features if name.split("_", 1)[1] in PER_LEAD_FEATURES]
    assert all(math.isfinite(features[name]) for name in per_lead if not name.endswith("p_amp"))


def test_real_atrial_fibrillation_is_more_irregular_than_sinus_rhythm(shared_data: Path) -> None:
    sinus = ptbxl_features(shared_data, "00001")  # NORM, sinus rhythm
    fibrillation = ptbxl_features(shared_data, "00428")  # AFIB with RBBB
    assert fibrillation["rr_irregularity"] > 0.1 > sinus["rr_irregularity"]
    assert fibrillation["qrs_dur_ms"] > sinus["qrs_dur_ms"] + 20.0  # bundle branch block
