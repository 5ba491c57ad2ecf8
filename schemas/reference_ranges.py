"""Adult reference ranges for the core clinical-record fields, to flag values for a reader.

Convention: each range is the *normal* interval for a non-pregnant adult at rest, in the field's
canonical unit of ``clinical_record_v1``, with **inclusive** bounds. A value is flagged ``"low"``
only when strictly below ``low`` and ``"high"`` only when strictly above ``high``; a missing bound
means that side is never flagged. So an upper reference limit such as hs-troponin's 99th
percentile (14 ng/L) or BNP's heart-failure cut-off (100 pg/mL) is itself normal, and SpO2 has
no upper limit.

These are display aids for a clinician, not the *plausibility* bounds of the record schema (a
value outside those is a data error and never reaches the store). Fields without a sensible
single adult range (age, sex, height, weight) have no entry and are never flagged. The values are
common textbook adult intervals; a site's own laboratory limits (which vary by assay) should
replace the lab entries where known.
"""

from __future__ import annotations

import math
from collections.abc import Mapping
from dataclasses import dataclass
from types import MappingProxyType
from typing import Literal, TypeAlias

__all__ = ["REFERENCE_RANGES", "Flag", "ReferenceRange", "reference_flag"]

Flag: TypeAlias = Literal["low", "high"]


@dataclass(frozen=True)
class ReferenceRange:
    """The normal interval of one field; ``None`` for a side without a limit."""

    field: str
    unit: str
    low: float | None
    high: float | None

    def flag(self, value: float) -> Flag | None:
        """``"low"`` / ``"high"`` when ``value`` is strictly outside the interval, else None."""
        if not math.isfinite(value):
            return None
        if self.low is not None and value < self.low:
            return "low"
        if self.high is not None and value > self.high:
            return "high"
        return None


def _ranges(*ranges: ReferenceRange) -> Mapping[str, ReferenceRange]:
    return MappingProxyType({r.field: r for r in ranges})


REFERENCE_RANGES: Mapping[str, ReferenceRange] = _ranges(
    ReferenceRange("heart_rate_bpm", "bpm", 60.0, 100.0),
    ReferenceRange("systolic_bp_mmhg", "mmHg", 90.0, 139.0),
    ReferenceRange("diastolic_bp_mmhg", "mmHg", 60.0, 89.0),
    ReferenceRange("respiratory_rate_per_min", "/min", 12.0, 20.0),
    ReferenceRange("temperature_c", "°C", 36.1, 37.8),
    ReferenceRange("spo2_percent", "%", 95.0, None),
    ReferenceRange("bnp_pg_ml", "pg/mL", None, 100.0),
    ReferenceRange("troponin_ng_l", "ng/L", None, 14.0),
    ReferenceRange("wbc_10e9_l", "10^9/L", 4.0, 11.0),
    ReferenceRange("crp_mg_l", "mg/L", None, 5.0),
)
"""Field name → adult reference range; fields not listed are never flagged."""


def reference_flag(field: str, value: float | None) -> Flag | None:
    """The flag of ``value`` for ``field``: None when missing, not a number or without a range."""
    reference = REFERENCE_RANGES.get(field)
    if reference is None or value is None:
        return None
    return reference.flag(float(value))
