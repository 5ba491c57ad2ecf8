"""Synthetic identifiers: the PHI-shaped values that de-identification must find and remove.

Everything here derives from the cohort seed, so two runs with one seed write the same names,
MRNs, UIDs and dates. Names use only Latin-1 characters (some accented), so they can be stored
in DICOM with Specific Character Set ISO_IR 100 and in Latin-1 encoded reports.
"""

from __future__ import annotations

import datetime as dt
import re

import numpy as np
from pydicom.uid import generate_uid

# A patient id that must survive ingestion verbatim and harmlessly (quoted everywhere).
INJECTION_PATIENT_ID = "1'; DROP TABLE patients;--"
INJECTION_MIN_PATIENTS = 20

FEMALE_NAMES = ("Jane", "Maria", "Anna", "Renée", "Zoë", "Olga", "Grace", "Inès", "Hana", "Lucy")
MALE_NAMES = ("John", "José", "Peter", "Ahmed", "Björn", "Liam", "Kenji", "Marco", "Noé", "Tom")
FAMILY_NAMES = (
    "Doe", "Smith", "Müller", "García", "Novak", "Okafor", "Nguyen", "Larsen",
    "Rossi", "Dubois", "Kowalski", "Øster", "Tanaka", "Silva", "Brown", "O'Neil",
)  # fmt: skip
INSTITUTIONS = (
    "St. Elsewhere General Hospital", "Mercy Phantom Medical Center",
    "Hôpital Fictif de Lyon", "Synthetic University Clinic",
)  # fmt: skip
PHYSICIANS = ("House^Gregory", "Quinn^Michaela", "Müller^Jürgen", "Grey^Meredith", "Ross^Doug")

STUDY_EPOCH = dt.date(2016, 1, 1)
_UNSAFE_IN_FILE_NAME = re.compile(r"[^A-Za-z0-9-]")


def draw_patient_ids(rng: np.random.Generator, n: int) -> list[str]:
    """Unique hospital-style MRNs; one hostile id replaces a random one in cohorts of >= 20."""
    numbers = rng.choice(9_000_000, size=n, replace=False) + 1_000_000
    ids = [f"MRN{int(x):07d}" for x in numbers]
    if n >= INJECTION_MIN_PATIENTS:
        ids[int(rng.integers(n))] = INJECTION_PATIENT_ID
    return ids


def draw_encounter_numbers(rng: np.random.Generator, n: int) -> list[int]:
    """Unique encounter numbers for the whole cohort, so ENC ids never collide across patients."""
    return [int(x) + 10_000_000 for x in rng.choice(90_000_000, size=n, replace=False)]


def encounter_id(number: int) -> str:
    """Encounter ids look like ``ENC12345678``."""
    return f"ENC{number:08d}"


def person_name(rng: np.random.Generator, sex: str) -> str:
    """A DICOM PN value, ``Family^Given``, from the small synthetic lists."""
    family = pick(rng, FAMILY_NAMES)
    return f"{family}^{pick(rng, FEMALE_NAMES if sex == 'female' else MALE_NAMES)}"


def pick(rng: np.random.Generator, options: tuple[str, ...]) -> str:
    """One element of a tuple of strings, drawn from ``rng`` (typed wrapper around choice)."""
    return options[int(rng.integers(len(options)))]


def file_stem(patient_id: str, encounter: str) -> str:
    """File-name stem ``{patient}_{encounter}``; characters unsafe in WFDB record names become '-'.

    WFDB record names must match ``[-\\w]+``, so the hostile id cannot be a file name verbatim;
    the manifest (not the file name) carries the verbatim id.
    """
    return f"{_UNSAFE_IN_FILE_NAME.sub('-', patient_id)}_{encounter}"


def dicom_uid(seed: int, *parts: str) -> str:
    """A deterministic UID: pydicom's root plus a hash of the seed and the given parts."""
    return str(generate_uid(entropy_srcs=[f"clinic-synth:{seed}", *parts]))


def dicom_date(day: dt.date) -> str:
    """DICOM DA format (YYYYMMDD)."""
    return day.strftime("%Y%m%d")


def study_day(offset_days: int) -> dt.date:
    """Calendar day of an encounter, counted from the synthetic study epoch."""
    return STUDY_EPOCH + dt.timedelta(days=offset_days)
