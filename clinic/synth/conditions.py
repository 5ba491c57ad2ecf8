"""The latent model: who is ill with what, and how much of it each modality gets to see.

A patient's age, sex and risk factors set the odds of six conditions; conditions raise each
other's odds (heart failure follows AF, MI and LVH; effusion follows heart failure and
pneumonia). Each condition then leaves *evidence* of a per-encounter strength in [0, 1] in some
modalities only, and sometimes none at all (``p_silent``), so that no modality sees everything:

=====================  =======================  =====================  ====================
condition              radiograph               ECG                    record
=====================  =======================  =====================  ====================
heart_failure          cardiomegaly, edema      (via AF / MI / LVH)    BNP, SpO2
atrial_fibrillation    (none)                   irregular RR, f-waves  heart rate
myocardial_infarction  (none)                   ST elevation, Q waves  troponin
pneumonia              consolidation            (none)                 WBC, CRP, temp, SpO2
pleural_effusion       blunted angle / opacity  (none)                 SpO2
left_ventricular_h.    mild cardiomegaly        QRS voltage            blood pressure
=====================  =======================  =====================  ====================
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import numpy as np

CONDITIONS: tuple[str, ...] = (
    "heart_failure",
    "atrial_fibrillation",
    "myocardial_infarction",
    "pneumonia",
    "pleural_effusion",
    "left_ventricular_hypertrophy",
)
LABELS: tuple[str, ...] = (*CONDITIONS, "no_finding")
MODALITIES: tuple[str, ...] = ("xray", "ecg", "record", "radiology_report", "ecg_report")
MI_TERRITORIES: tuple[str, ...] = ("anterior", "inferior", "lateral")
EFFUSION_SIDES: tuple[str, ...] = ("right", "left", "bilateral")
LOBES: tuple[str, ...] = ("right upper", "right lower", "left upper", "left lower")
CHRONIC: frozenset[str] = frozenset(
    {"heart_failure", "atrial_fibrillation", "left_ventricular_hypertrophy"}
)


@dataclass(frozen=True)
class SynthConfig:
    """Shares that shape a cohort; the defaults are the documented ones."""

    missing_xray: float = 0.25
    missing_ecg: float = 0.20
    missing_record: float = 0.10
    missing_report: float = 0.30  # report absent although its source exam exists
    orphan_report: float = 0.10  # report present although its exam is not
    second_encounter: float = 0.10
    label_flip: float = 0.03
    report_error: float = 0.12  # share of reports that miss or invent a finding
    ecg_dicom_share: float = 0.10
    xray_rle_share: float = 0.15
    xray_j2k_share: float = 0.15
    latin1_report_share: float = 0.05
    record_error_share: float = 0.03


@dataclass(frozen=True)
class Demographics:
    """Stable per-patient facts (the latent risk factors are not all written anywhere)."""

    age_years: float
    sex: str  # "female" | "male"
    smoker: bool
    diabetes: bool
    hypertension: bool
    bmi: float


@dataclass(frozen=True)
class EncounterPlan:
    """Everything true about one encounter, before any file is rendered."""

    encounter_id: str
    day_offset: int
    age_years: float
    conditions: dict[str, int]
    observed_labels: dict[str, int]
    evidence: dict[str, dict[str, float]]
    modalities: dict[str, bool]
    heart_rate_bpm: float
    details: dict[str, str]  # mi_territory, effusion_side, consolidation_lobe


def _sigmoid(x: float) -> float:
    return 1.0 / (1.0 + math.exp(-x))


def _bernoulli(rng: np.random.Generator, p: float) -> bool:
    return bool(rng.random() < p)


def sample_demographics(rng: np.random.Generator) -> Demographics:
    """An adult hospital population: older than the general public, half of them hypertensive."""
    age = float(np.clip(rng.normal(62.0, 16.0), 18.0, 96.0))
    centered = (age - 60.0) / 10.0
    return Demographics(
        age_years=age,
        sex="male" if _bernoulli(rng, 0.52) else "female",
        smoker=_bernoulli(rng, 0.22),
        diabetes=_bernoulli(rng, _sigmoid(-1.7 + 0.3 * centered)),
        hypertension=_bernoulli(rng, _sigmoid(-0.1 + 0.6 * centered)),
        bmi=float(np.clip(rng.normal(27.5, 5.0), 16.0, 50.0)),
    )


def sample_conditions(
    rng: np.random.Generator, demo: Demographics, carried: dict[str, int] | None = None
) -> dict[str, int]:
    """Draw the six conditions in causal order; chronic ones mostly persist from ``carried``."""
    a = (demo.age_years - 60.0) / 10.0
    male, htn = float(demo.sex == "male"), float(demo.hypertension)
    smoke, dm = float(demo.smoker), float(demo.diabetes)

    def draw(name: str, logit: float) -> int:
        if carried is not None and name in CHRONIC and carried[name] and _bernoulli(rng, 0.9):
            return 1
        return int(_bernoulli(rng, _sigmoid(logit)))

    c: dict[str, int] = {}
    c["left_ventricular_hypertrophy"] = draw(
        "left_ventricular_hypertrophy", -3.3 + 0.3 * a + 0.4 * male + 1.3 * htn
    )
    c["atrial_fibrillation"] = draw("atrial_fibrillation", -2.9 + 0.6 * a + 0.3 * male + 0.5 * htn)
    c["myocardial_infarction"] = draw(
        "myocardial_infarction", -3.3 + 0.35 * a + 0.6 * male + 0.5 * smoke + 0.5 * dm
    )
    hf = -3.0 + 0.35 * a + 1.5 * c["atrial_fibrillation"] + 1.8 * c["myocardial_infarction"]
    c["heart_failure"] = draw("heart_failure", hf + 1.3 * c["left_ventricular_hypertrophy"])
    c["pneumonia"] = draw("pneumonia", -2.3 + 0.15 * a + 0.5 * smoke + 0.5 * c["heart_failure"])
    c["pleural_effusion"] = draw(
        "pleural_effusion", -3.0 + 0.1 * a + 2.0 * c["heart_failure"] + 1.6 * c["pneumonia"]
    )
    return {name: c[name] for name in CONDITIONS}


def _strength(rng: np.random.Generator, present: int, p_silent: float) -> float:
    """How strongly a present condition shows in one modality; 0 when absent or silent there."""
    if not present or _bernoulli(rng, p_silent):
        return 0.0
    return round(0.25 + 0.75 * float(rng.beta(2.0, 2.0)), 4)


def sample_evidence(rng: np.random.Generator, c: dict[str, int]) -> dict[str, dict[str, float]]:
    """Per-modality evidence strengths; each is partial (a share of patients shows nothing)."""
    hf, af, mi = c["heart_failure"], c["atrial_fibrillation"], c["myocardial_infarction"]
    pna, eff, lvh = c["pneumonia"], c["pleural_effusion"], c["left_ventricular_hypertrophy"]
    return {
        "xray": {
            "cardiomegaly": max(_strength(rng, hf, 0.25), 0.5 * _strength(rng, lvh, 0.5)),
            "edema": _strength(rng, hf, 0.55),
            "pleural_effusion": _strength(rng, eff, 0.15),
            "consolidation": _strength(rng, pna, 0.2),
        },
        "ecg": {
            "af": _strength(rng, af, 0.15),  # paroxysmal AF may be in sinus rhythm today
            "st_elevation": _strength(rng, mi, 0.45),
            "q_waves": _strength(rng, mi, 0.4),
            "lvh_voltage": _strength(rng, lvh, 0.3),
        },
        "record": {
            "bnp": _strength(rng, hf, 0.15),
            "troponin": _strength(rng, mi, 0.25),
            "inflammation": _strength(rng, pna, 0.2),
            "hypoxia": max(
                _strength(rng, pna, 0.4), _strength(rng, hf, 0.5), _strength(rng, eff, 0.5)
            ),
        },
    }


def sample_modalities(rng: np.random.Generator, cfg: SynthConfig) -> dict[str, bool]:
    """Which files this encounter gets; at least one modality always survives."""
    m = {
        "xray": not _bernoulli(rng, cfg.missing_xray),
        "ecg": not _bernoulli(rng, cfg.missing_ecg),
        "record": not _bernoulli(rng, cfg.missing_record),
    }
    for exam, report in (("xray", "radiology_report"), ("ecg", "ecg_report")):
        m[report] = _bernoulli(rng, 1.0 - cfg.missing_report if m[exam] else cfg.orphan_report)
    if not any(m.values()):
        m[("xray", "ecg", "record")[int(rng.integers(3))]] = True
    return {name: m[name] for name in MODALITIES}


def observe_labels(
    rng: np.random.Generator, conditions: dict[str, int], flip: float
) -> dict[str, int]:
    """The labels file: each condition flipped with probability ``flip``; no_finding follows."""
    observed = {k: v ^ int(_bernoulli(rng, flip)) for k, v in conditions.items()}
    observed["no_finding"] = int(not any(observed.values()))
    return observed


def heart_rate(rng: np.random.Generator, c: dict[str, int], ev: dict[str, float]) -> float:
    """Resting rate: fast when AF shows, a little faster with heart failure or pneumonia."""
    bpm = (
        rng.normal(74.0, 10.0) + 30.0 * ev["af"] + 6.0 * c["heart_failure"] + 10.0 * c["pneumonia"]
    )
    return float(np.clip(bpm, 45.0, 165.0))


def plan_encounter(
    rng: np.random.Generator,
    demo: Demographics,
    cfg: SynthConfig,
    encounter: str,
    day_offset: int,
    years_later: float,
    carried: dict[str, int] | None,
) -> EncounterPlan:
    """Sample one encounter's conditions, evidence, missingness and observed labels."""
    conditions = sample_conditions(rng, demo, carried)
    evidence = sample_evidence(rng, conditions)
    conditions_with_none = {**conditions, "no_finding": int(not any(conditions.values()))}
    return EncounterPlan(
        encounter_id=encounter,
        day_offset=day_offset,
        age_years=demo.age_years + years_later,
        conditions=conditions_with_none,
        observed_labels=observe_labels(rng, conditions, cfg.label_flip),
        evidence=evidence,
        modalities=sample_modalities(rng, cfg),
        heart_rate_bpm=heart_rate(rng, conditions, evidence["ecg"]),
        details={
            "mi_territory": MI_TERRITORIES[int(rng.integers(len(MI_TERRITORIES)))],
            "effusion_side": EFFUSION_SIDES[int(rng.integers(len(EFFUSION_SIDES)))],
            "consolidation_lobe": LOBES[int(rng.integers(len(LOBES)))],
        },
    )
