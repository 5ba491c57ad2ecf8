"""Record normalisation with missingness indicators, fitted on the training split only.

Skewed laboratory values (BNP, troponin, CRP, WBC) are log-transformed before standardising;
every value is clipped to ±5 standard deviations so one absurd entry cannot dominate a batch.
A missing value becomes 0 with its indicator set to 1 — models see *that* it is missing.
"""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence
from dataclasses import dataclass

import numpy as np
import numpy.typing as npt

from clinic.data.cases import RECORD_FIELDS

FloatArray = npt.NDArray[np.float32]

LOG_FIELDS = frozenset({"bnp_pg_ml", "troponin_ng_l", "crp_mg_l", "wbc_10e9_l"})
DEFAULT_FEATURES: tuple[str, ...] = (*RECORD_FIELDS, "is_female")
CLIP_SD = 5.0


@dataclass(frozen=True)
class RecordNormalizer:
    """Per-feature centre and scale; ``transform`` gives (values, missing) float32 vectors."""

    features: tuple[str, ...]
    centre: tuple[float, ...]
    scale: tuple[float, ...]

    @classmethod
    def fit(
        cls, records: Sequence[Mapping[str, float]], features: Sequence[str] = DEFAULT_FEATURES
    ) -> RecordNormalizer:
        """Mean and standard deviation of each feature over ``records`` (training split only)."""
        matrix = np.array(
            [
                [_prepared(name, record.get(name, math.nan)) for name in features]
                for record in records
            ],
            dtype=np.float64,
        ).reshape(len(records), len(features))
        centre, scale = [], []
        for column in matrix.T:
            known = column[np.isfinite(column)]
            centre.append(float(known.mean()) if known.size else 0.0)
            spread = float(known.std()) if known.size > 1 else 0.0
            scale.append(spread if spread > 1e-6 else 1.0)
        return cls(tuple(features), tuple(centre), tuple(scale))

    def transform(self, record: Mapping[str, float]) -> tuple[FloatArray, FloatArray]:
        """(F,) standardised values with 0 where missing, and (F,) 1.0-where-missing flags."""
        raw = np.array(
            [_prepared(name, record.get(name, math.nan)) for name in self.features],
            dtype=np.float64,
        )
        missing = ~np.isfinite(raw)
        values = (raw - np.asarray(self.centre)) / np.asarray(self.scale)
        values = np.clip(np.where(missing, 0.0, values), -CLIP_SD, CLIP_SD)
        return values.astype(np.float32), missing.astype(np.float32)

    def to_json(self) -> dict[str, object]:
        return {"features": list(self.features), "centre": list(self.centre),
                "scale": list(self.scale)}  # fmt: skip

    @classmethod
    def from_json(cls, data: Mapping[str, object]) -> RecordNormalizer:
        features, centre, scale = data["features"], data["centre"], data["scale"]
        assert isinstance(features, list) and isinstance(centre, list)
        assert isinstance(scale, list)
        return cls(tuple(map(str, features)), tuple(map(float, centre)), tuple(map(float, scale)))


def _prepared(name: str, value: float) -> float:
    """Log-transform skewed labs; anything non-finite or non-positive-for-log is missing."""
    if value is None or not math.isfinite(value):
        return math.nan
    if name in LOG_FIELDS:
        return math.log1p(value) if value >= 0 else math.nan
    return float(value)
