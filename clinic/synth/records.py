"""One row of vitals and labs per encounter, as a hospital export would have it.

Values follow the record evidence (BNP for heart failure, troponin for MI, WBC / CRP /
temperature for pneumonia, SpO2 for hypoxia) on top of age, sex and habitus confounders, with
measurement noise, blanks where a test was not ordered, and a few rows with data-entry errors.
"""

from __future__ import annotations

import math

import numpy as np

from clinic.synth.conditions import Demographics, EncounterPlan, SynthConfig

RECORD_COLUMNS: tuple[str, ...] = (
    "patient_id", "encounter_id", "age_years", "sex", "height_cm", "weight_kg",
    "heart_rate_bpm", "systolic_bp_mmhg", "diastolic_bp_mmhg", "respiratory_rate_per_min",
    "temperature_c", "spo2_percent", "bnp_pg_ml", "troponin_ng_l", "wbc_10e9_l", "crp_mg_l",
    "smoker", "diabetes",
)  # fmt: skip

# How often a column is blank (test not ordered / not charted).
MISSING_SHARE: dict[str, float] = {
    "height_cm": 0.15, "weight_kg": 0.08, "heart_rate_bpm": 0.03, "systolic_bp_mmhg": 0.04,
    "diastolic_bp_mmhg": 0.04, "respiratory_rate_per_min": 0.08, "temperature_c": 0.06,
    "spo2_percent": 0.05, "troponin_ng_l": 0.3, "wbc_10e9_l": 0.12, "crp_mg_l": 0.25,
    "smoker": 0.2, "diabetes": 0.1,
}  # fmt: skip


def _vitals(rng: np.random.Generator, demo: Demographics, plan: EncounterPlan) -> dict[str, float]:
    """Body size, heart rate, blood pressure, breathing, temperature and saturation."""
    ev, c = plan.evidence["record"], plan.conditions
    height = rng.normal(176.0 if demo.sex == "male" else 163.0, 7.0)
    height -= 0.05 * max(plan.age_years - 50.0, 0.0)  # older patients are a little shorter
    weight = demo.bmi * (height / 100.0) ** 2 + 3.0 * c["heart_failure"] + rng.normal(0.0, 1.5)
    sbp = 122.0 + 0.35 * (plan.age_years - 60.0) + 16.0 * demo.hypertension
    sbp += 8.0 * c["left_ventricular_hypertrophy"] + rng.normal(0.0, 13.0)
    breathing = 15.0 + 6.0 * ev["inflammation"] + 7.0 * ev["hypoxia"] + rng.normal(0.0, 2.0)
    return {
        "height_cm": height,
        "weight_kg": weight,
        "heart_rate_bpm": plan.heart_rate_bpm + rng.normal(0.0, 4.0),
        "systolic_bp_mmhg": sbp,
        "diastolic_bp_mmhg": 0.55 * sbp + 12.0 + rng.normal(0.0, 7.0),
        "respiratory_rate_per_min": breathing,
        "temperature_c": 36.8 + 1.7 * ev["inflammation"] + rng.normal(0.0, 0.3),
        "spo2_percent": min(100.0, 97.5 - 9.0 * ev["hypoxia"] + rng.normal(0.0, 1.3)),
    }


def _lognormal(rng: np.random.Generator, median: float, shift: float, sigma: float) -> float:
    """A lab value whose log is ``log(median) + shift`` plus Gaussian noise."""
    return math.exp(math.log(median) + shift + float(rng.normal(0.0, sigma)))


def _labs(rng: np.random.Generator, plan: EncounterPlan) -> dict[str, float]:
    """Each lab is shifted by its evidence and by mild confounders (age, AF, HF)."""
    ev, c = plan.evidence["record"], plan.conditions
    age = (plan.age_years - 60.0) / 10.0
    bnp_shift = 0.2 * age + 2.4 * ev["bnp"] + 0.6 * c["atrial_fibrillation"]
    troponin_shift = 0.1 * age + 2.6 * ev["troponin"] + 0.4 * c["heart_failure"]
    return {
        "bnp_pg_ml": _lognormal(rng, 45.0, bnp_shift, 0.75),
        "troponin_ng_l": _lognormal(rng, 7.0, troponin_shift, 0.7),
        "wbc_10e9_l": max(1.5, 7.0 + 8.0 * ev["inflammation"] + rng.normal(0.0, 1.8)),
        "crp_mg_l": _lognormal(rng, 3.0, 3.5 * ev["inflammation"], 0.8),
    }


def _format(column: str, value: float) -> str:
    """Round like a lab system would: integers for counts and pressures, one decimal else."""
    integer_columns = {
        "heart_rate_bpm",
        "systolic_bp_mmhg",
        "diastolic_bp_mmhg",
        "respiratory_rate_per_min",
        "spo2_percent",
        "bnp_pg_ml",
    }
    return str(round(value)) if column in integer_columns else f"{value:.1f}"


def _entry_error(rng: np.random.Generator, row: dict[str, str]) -> None:
    """One realistic data-entry error: wrong unit, impossible value, or a literal 'n/a'."""
    kind = int(rng.integers(4))
    if kind == 0 and row["temperature_c"]:
        row["temperature_c"] = f"{float(row['temperature_c']) * 9 / 5 + 32:.1f}"  # Fahrenheit
    elif kind == 1 and row["height_cm"]:
        row["height_cm"] = f"{float(row['height_cm']) / 100:.2f}"  # metres
    elif kind == 2:
        row["spo2_percent"] = str(int(rng.integers(101, 999)))
    else:
        row[("bnp_pg_ml", "troponin_ng_l", "crp_mg_l")[int(rng.integers(3))]] = "n/a"


def record_row(
    rng: np.random.Generator,
    patient_id: str,
    demo: Demographics,
    plan: EncounterPlan,
    cfg: SynthConfig,
) -> dict[str, str]:
    """The CSV row (strings; blanks for missing) for one encounter."""
    values = {**_vitals(rng, demo, plan), **_labs(rng, plan)}
    row = {
        "patient_id": patient_id,
        "encounter_id": plan.encounter_id,
        "age_years": str(int(plan.age_years)),
        "sex": demo.sex,
    }
    row |= {k: _format(k, v) for k, v in values.items()}
    row["smoker"] = "yes" if demo.smoker else "no"
    row["diabetes"] = "yes" if demo.diabetes else "no"
    bnp_missing = 0.15 if plan.evidence["record"]["bnp"] > 0 else 0.45  # ordered when suspected
    for column, share in {**MISSING_SHARE, "bnp_pg_ml": bnp_missing}.items():
        if rng.random() < share:
            row[column] = ""
    if rng.random() < cfg.record_error_share:
        _entry_error(rng, row)
    return {column: row[column] for column in RECORD_COLUMNS}
