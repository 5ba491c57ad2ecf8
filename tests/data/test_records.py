"""Record normalisation: statistics from the given records only, logs for skewed labs,
missing values as 0 with an indicator, clipping and a lossless JSON round trip."""

from __future__ import annotations

import json
import math

import numpy as np
import pytest

from clinic.data.cases import RECORD_FIELDS
from clinic.data.records import CLIP_SD, DEFAULT_FEATURES, LOG_FIELDS, RecordNormalizer


def test_fit_uses_mean_and_population_sd_of_the_given_records() -> None:
    normalizer = RecordNormalizer.fit(
        [{"age_years": 50.0}, {"age_years": 70.0}], features=("age_years",)
    )
    assert normalizer.centre == pytest.approx((60.0,))
    assert normalizer.scale == pytest.approx((10.0,))
    values, missing = normalizer.transform({"age_years": 80.0})
    np.testing.assert_allclose(values, [2.0])
    np.testing.assert_array_equal(missing, [0.0])


def test_fit_ignores_records_it_is_not_given() -> None:
    train = [{"heart_rate_bpm": 60.0}, {"heart_rate_bpm": 80.0}]
    other = [{"heart_rate_bpm": 200.0}, {"heart_rate_bpm": 220.0}]
    fitted = RecordNormalizer.fit(train, features=("heart_rate_bpm",))
    assert fitted == RecordNormalizer.fit(train, features=("heart_rate_bpm",))
    assert fitted != RecordNormalizer.fit(train + other, features=("heart_rate_bpm",))
    assert fitted.centre == pytest.approx((70.0,))


def test_missing_values_do_not_enter_the_statistics() -> None:
    records = [{"age_years": 40.0}, {"age_years": math.nan}, {}, {"age_years": 60.0}]
    normalizer = RecordNormalizer.fit(records, features=("age_years",))
    assert normalizer.centre == pytest.approx((50.0,))
    assert normalizer.scale == pytest.approx((10.0,))


def test_skewed_labs_are_log_transformed() -> None:
    assert {"bnp_pg_ml", "troponin_ng_l", "crp_mg_l", "wbc_10e9_l"} == LOG_FIELDS
    records = [{"bnp_pg_ml": math.expm1(1.0)}, {"bnp_pg_ml": math.expm1(3.0)}]
    normalizer = RecordNormalizer.fit(records, features=("bnp_pg_ml",))
    assert normalizer.centre == pytest.approx((2.0,))
    assert normalizer.scale == pytest.approx((1.0,))
    values, _ = normalizer.transform({"bnp_pg_ml": math.expm1(4.0)})
    np.testing.assert_allclose(values, [2.0], rtol=1e-6)


def test_negative_lab_values_count_as_missing() -> None:
    normalizer = RecordNormalizer(("troponin_ng_l",), (1.0,), (1.0,))
    values, missing = normalizer.transform({"troponin_ng_l": -3.0})
    np.testing.assert_array_equal(values, [0.0])
    np.testing.assert_array_equal(missing, [1.0])


def test_missing_becomes_zero_with_indicator_one() -> None:
    normalizer = RecordNormalizer(("age_years", "heart_rate_bpm", "spo2_percent"),
                                  (50.0, 70.0, 95.0), (10.0, 10.0, 2.0))  # fmt: skip
    values, missing = normalizer.transform({"age_years": math.nan, "spo2_percent": 99.0})
    assert values.dtype == np.float32 and missing.dtype == np.float32
    np.testing.assert_allclose(values, [0.0, 0.0, 2.0])
    np.testing.assert_array_equal(missing, [1.0, 1.0, 0.0])


def test_values_are_clipped_to_five_standard_deviations() -> None:
    normalizer = RecordNormalizer(("heart_rate_bpm",), (70.0,), (10.0,))
    high, _ = normalizer.transform({"heart_rate_bpm": 70.0 + 1000.0})
    low, _ = normalizer.transform({"heart_rate_bpm": 70.0 - 1000.0})
    edge, _ = normalizer.transform({"heart_rate_bpm": 70.0 + 49.0})
    assert float(high[0]) == CLIP_SD
    assert float(low[0]) == -CLIP_SD
    assert float(edge[0]) == pytest.approx(4.9)


def test_constant_and_empty_features_get_unit_scale() -> None:
    records = [{"age_years": 30.0}, {"age_years": 30.0}]
    normalizer = RecordNormalizer.fit(records, features=("age_years", "crp_mg_l"))
    assert normalizer.centre == pytest.approx((30.0, 0.0))
    assert normalizer.scale == (1.0, 1.0)
    assert np.isfinite(normalizer.transform({"age_years": 31.0})[0]).all()


def test_fit_on_no_records_gives_identity_statistics() -> None:
    normalizer = RecordNormalizer.fit([], features=("age_years",))
    assert normalizer.centre == (0.0,) and normalizer.scale == (1.0,)


def test_default_features_are_the_record_fields_and_sex() -> None:
    assert (*RECORD_FIELDS, "is_female") == DEFAULT_FEATURES
    normalizer = RecordNormalizer.fit([{"is_female": 1.0}, {"is_female": 0.0}])
    assert normalizer.features == DEFAULT_FEATURES
    values, missing = normalizer.transform({"is_female": 1.0})
    assert values.shape == missing.shape == (len(DEFAULT_FEATURES),)
    assert missing.sum() == len(RECORD_FIELDS)


def test_json_round_trip_is_lossless() -> None:
    records = [{"age_years": 41.3, "bnp_pg_ml": 120.0}, {"age_years": 77.9, "bnp_pg_ml": 3100.0}]
    normalizer = RecordNormalizer.fit(records, features=("age_years", "bnp_pg_ml"))
    restored = RecordNormalizer.from_json(json.loads(json.dumps(normalizer.to_json())))
    assert restored == normalizer
    probe = {"age_years": 60.0, "bnp_pg_ml": 500.0}
    for original, copy in zip(normalizer.transform(probe), restored.transform(probe), strict=True):
        np.testing.assert_array_equal(original, copy)
