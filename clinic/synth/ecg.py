"""12-lead ECGs from a moving heart dipole, written as WFDB records or DICOM 12-lead waveforms.

Each beat is a handful of waves (P, septal q, R, S, T; plus ST and Q for infarcts), each a
Gaussian (or plateau) in time times a fixed 3-D direction. A lead is the dot product of that
dipole with the lead's direction; limb leads are built from two sources (I and III, each with its
own electrode noise) and the rest follow Einthoven and Goldberger exactly, in the integer domain:
II = I + III, aVR = -(I + II)/2, aVL = I - II/2, aVF = II - I/2.

Axes: x = patient's left, y = inferior (feet), z = anterior.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import numpy as np
import numpy.typing as npt
import wfdb
from pydicom.dataset import Dataset, FileMetaDataset
from pydicom.sequence import Sequence
from pydicom.uid import PYDICOM_IMPLEMENTATION_UID, UID, ExplicitVRLittleEndian

from clinic.ingest.types import STANDARD_LEADS

Signal = npt.NDArray[np.float64]
Digital = npt.NDArray[np.int16]
ECG_12_LEAD_STORAGE = "1.2.840.10008.5.1.4.1.1.9.1.1"
DURATION_S = 10.0

# Precordial lead axes: horizontal-plane angle (degrees from left towards anterior) and gain.
PRECORDIAL: tuple[tuple[float, float], ...] = (
    (120.0, 1.1), (95.0, 1.5), (75.0, 1.5), (60.0, 1.4), (30.0, 1.2), (5.0, 1.0),
)  # fmt: skip
TERRITORY: dict[str, tuple[float, float, float]] = {
    "anterior": (-0.1, 0.0, 1.0),  # V1-V4
    "inferior": (0.0, 1.0, 0.1),  # II, III, aVF
    "lateral": (1.0, -0.35, 0.1),  # I, aVL, V5, V6
}
# (SCPECG code, MDC code, code meaning) per lead, in STANDARD_LEADS order.
LEAD_CODES: tuple[tuple[str, str, str], ...] = (
    ("5.6.3-9-1", "2:1", "Lead I"), ("5.6.3-9-2", "2:2", "Lead II"),
    ("5.6.3-9-61", "2:61", "Lead III"), ("5.6.3-9-62", "2:62", "Lead aVR"),
    ("5.6.3-9-63", "2:63", "Lead aVL"), ("5.6.3-9-64", "2:64", "Lead aVF"),
    ("5.6.3-9-3", "2:3", "Lead V1"), ("5.6.3-9-4", "2:4", "Lead V2"),
    ("5.6.3-9-5", "2:5", "Lead V3"), ("5.6.3-9-6", "2:6", "Lead V4"),
    ("5.6.3-9-7", "2:7", "Lead V5"), ("5.6.3-9-8", "2:8", "Lead V6"),
)  # fmt: skip


@dataclass(frozen=True)
class Wave:
    """One dipole component of every beat: timing relative to QRS onset, direction, size."""

    center_s: float
    width_s: float
    direction: tuple[float, float, float]
    amplitude_mv: float
    plateau_end_s: float | None = None  # set for ST segments: a flat shelf, not a bump


def _unit(v: tuple[float, float, float]) -> npt.NDArray[np.float64]:
    a = np.asarray(v, dtype=np.float64)
    return a / float(np.linalg.norm(a))


def beat_onsets(rng: np.random.Generator, bpm: float, af: float) -> npt.NDArray[np.float64]:
    """QRS onset times: irregularly irregular in AF, sinus with respiration and rare PACs else."""
    mean_rr = 60.0 / bpm
    t, onsets = -float(rng.uniform(0.0, mean_rr)), []
    premature = set(rng.integers(2, 12, size=2).tolist()) if rng.random() < 0.12 else set()
    while t < DURATION_S + 0.5:
        onsets.append(t)
        if af > 0:
            rr = mean_rr * float(np.exp(rng.normal(0.0, 0.1 + 0.2 * af)))
        else:
            rr = mean_rr * (1.0 + 0.04 * np.sin(2 * np.pi * 0.25 * t) + rng.normal(0.0, 0.012))
            rr *= 0.7 if len(onsets) in premature else 1.0
        t += float(np.clip(rr, 0.3, 2.0))
    return np.asarray(onsets)


def beat_waves(
    rng: np.random.Generator, ev: dict[str, float], territory: str, bpm: float
) -> list[Wave]:
    """The waves of one beat for this patient; disease edits amplitudes and adds components."""
    qt = 0.4 * np.sqrt(60.0 / bpm)
    axis = rng.normal(0.0, 0.15, size=3)
    r_dir = tuple((_unit((0.85, 0.45, -0.3)) + axis).tolist())
    lvh = ev["lvh_voltage"]
    voltage = float(rng.uniform(0.75, 1.15)) * (1.15 + 0.9 * lvh if lvh > 0 else 1.0)
    t_dir = _unit((0.65, 0.55, 0.2))
    if lvh > 0.5:  # strain pattern: repolarisation turns away from the hypertrophied wall
        t_dir = _unit(tuple((t_dir - 1.2 * lvh * _unit(r_dir)).tolist()))
    waves = [
        Wave(0.012, 0.007, (-0.55, 0.25, 0.8), 0.18),
        Wave(0.042, 0.011, r_dir, 1.6 * voltage),
        Wave(0.068, 0.011, (-0.35, -0.55, -0.75), 0.4 * voltage),
        Wave(qt - 0.08, 0.045, tuple(t_dir.tolist()), 0.3),
    ]
    if ev["af"] == 0:
        waves.append(Wave(-0.1, 0.022, (0.55, 0.8, 0.15), 0.15))
    toward = TERRITORY[territory]
    away = (-toward[0], -toward[1], -toward[2])
    if (q := ev["q_waves"]) > 0:
        waves.append(Wave(0.018, 0.01, away, 0.15 + 0.5 * q))
    if (st := ev["st_elevation"]) > 0:
        waves.append(Wave(0.09, 0.01, toward, 0.05 + 0.3 * st, plateau_end_s=qt - 0.1))
    return waves


def _wave_series(t: Signal, onsets: Signal, wave: Wave) -> Signal:
    """One wave's scalar time course summed over all beats (beats x samples, then sum)."""
    dt = t[None, :] - onsets[:, None] - wave.center_s
    if wave.plateau_end_s is None:
        shape = np.exp(-0.5 * (dt / wave.width_s) ** 2)
    else:
        rise = 0.5 * (1.0 + np.tanh(dt / (2.0 * wave.width_s)))
        fall = 0.5 * (1.0 - np.tanh((dt - (wave.plateau_end_s - wave.center_s)) / 0.06))
        shape = rise * fall
    series: Signal = wave.amplitude_mv * shape.sum(axis=0)
    return series


def heart_dipole(
    rng: np.random.Generator, ev: dict[str, float], territory: str, bpm: float, fs: int
) -> Signal:
    """The (3, n) cardiac dipole over 10 s, with fibrillatory waves when AF shows."""
    t = np.arange(int(DURATION_S * fs)) / fs
    onsets = beat_onsets(rng, bpm, ev["af"])
    dipole = np.zeros((3, t.size))
    for wave in beat_waves(rng, ev, territory, bpm):
        dipole += _unit(wave.direction)[:, None] * _wave_series(t, onsets, wave)[None, :]
    if (af := ev["af"]) > 0:  # fibrillatory baseline, largest towards V1
        f_waves = np.sum([_random_sine(rng, t, (0.02, 0.05), (4.0, 8.0)) for _ in range(3)], axis=0)
        dipole += _unit((-0.3, 0.5, 0.8))[:, None] * (af * f_waves)[None, :]
    return dipole


def _random_sine(
    rng: np.random.Generator, t: Signal, amplitude: tuple[float, float], hz: tuple[float, float]
) -> Signal:
    """A sinusoid of random amplitude, frequency and phase (f-waves, baseline wander)."""
    a, f, phase = rng.uniform(*amplitude), rng.uniform(*hz), rng.uniform(0.0, 2 * np.pi)
    wave: Signal = a * np.sin(2 * np.pi * f * t + phase)
    return wave


def _noise(rng: np.random.Generator, n: int, fs: int) -> Signal:
    """Electrode noise: white noise, baseline wander, and mains hum on some recordings."""
    t = np.arange(n) / fs
    wander = _random_sine(rng, t, (0.02, 0.12), (0.1, 0.5))
    hum = 0.01 * np.sin(2 * np.pi * 50.0 * t) if rng.random() < 0.2 else 0.0
    return rng.normal(0.0, 0.015, n) + wander + hum


def project_leads(rng: np.random.Generator, dipole: Signal, fs: int) -> Signal:
    """(12, n) leads in mV: two limb sources plus six precordial projections, each with noise."""
    n = dipole.shape[1]
    lead_i = np.array([1.0, 0.0, 0.0]) @ dipole + _noise(rng, n, fs)
    lead_iii = np.array([np.cos(2 * np.pi / 3), np.sin(2 * np.pi / 3), 0.0]) @ dipole
    lead_iii = lead_iii + _noise(rng, n, fs)
    chest = [
        gain * (np.array([np.cos(np.radians(a)), 0.05, np.sin(np.radians(a))]) @ dipole)
        + _noise(rng, n, fs)
        for a, gain in PRECORDIAL
    ]
    lead_ii = lead_i + lead_iii
    limb = [
        lead_i,
        lead_ii,
        lead_iii,
        -(lead_i + lead_ii) / 2,
        lead_i - lead_ii / 2,
        lead_ii - lead_i / 2,
    ]
    return np.vstack([*limb, *chest])


def quantise(leads: Signal, units_per_mv: float) -> Digital:
    """Integer samples; derived limb leads are recomputed from the integer sources, so the
    Einthoven/Goldberger identities hold exactly (II) or within half a unit (aVR, aVL, aVF)."""
    q = np.rint(leads * units_per_mv)
    i, iii = q[0], q[2]
    ii = i + iii
    q[1], q[3], q[4], q[5] = ii, np.rint(-(i + ii) / 2), np.rint(i - ii / 2), np.rint(ii - i / 2)
    return np.clip(q, -32767, 32767).astype(np.int16)


def simulate_ecg(
    rng: np.random.Generator, ev: dict[str, float], territory: str, bpm: float, fs: int
) -> Signal:
    """A 10 s, 12-lead ECG in mV (STANDARD_LEADS order) for one encounter's ECG evidence."""
    return project_leads(rng, heart_dipole(rng, ev, territory, bpm, fs), fs)


def write_wfdb(directory: Path, stem: str, digital: Digital, fs: int, units_per_mv: float) -> None:
    """WFDB format 16, units mV, standard lead names; ``stem.hea`` + ``stem.dat``."""
    n_leads = len(STANDARD_LEADS)
    wfdb.wrsamp(
        stem,
        fs=fs,
        units=["mV"] * n_leads,
        sig_name=list(STANDARD_LEADS),
        d_signal=digital.T.astype(np.int64),
        fmt=["16"] * n_leads,
        adc_gain=[units_per_mv] * n_leads,
        baseline=[0] * n_leads,
        comments=["clinic-synth phantom ECG"],
        write_dir=str(directory),
    )


def _code(value: str, scheme: str, meaning: str, version: str | None = None) -> Dataset:
    item = Dataset()
    item.CodeValue, item.CodingSchemeDesignator, item.CodeMeaning = value, scheme, meaning
    if version is not None:
        item.CodingSchemeVersion = version
    return item


def _channel(codes: tuple[str, str, str], scheme: str, sensitivity_uv: float) -> Dataset:
    """One ChannelDefinitionSequence item, shaped like those of real 12-lead DICOM ECGs."""
    scp, mdc, meaning = codes
    source = (
        _code(scp, "SCPECG", meaning, "1.3") if scheme == "SCPECG" else _code(mdc, "MDC", meaning)
    )
    ch = Dataset()
    ch.ChannelSourceSequence = Sequence([source])
    ch.ChannelSensitivity = f"{sensitivity_uv:g}"
    ch.ChannelSensitivityUnitsSequence = Sequence([_code("uV", "UCUM", "microvolt", "1.4")])
    ch.ChannelSensitivityCorrectionFactor = "1"
    ch.ChannelBaseline = "0"
    ch.ChannelSampleSkew = "0"
    ch.WaveformBitsStored = 16
    ch.FilterLowFrequency = "0.05"
    ch.FilterHighFrequency = "150"
    return ch


def write_dicom_ecg(
    path: Path,
    digital: Digital,
    fs: int,
    sensitivity_uv: float,
    header: dict[str, str],
    scheme: str,
) -> None:
    """A 12-Lead ECG Waveform Storage object with one multiplex group of 12 channels.

    ``header`` holds DICOM keyword -> value for patient / study attributes (synthetic PHI, UIDs).
    """
    ds = Dataset()
    ds.file_meta = FileMetaDataset()
    ds.file_meta.MediaStorageSOPClassUID = UID(ECG_12_LEAD_STORAGE)
    ds.file_meta.MediaStorageSOPInstanceUID = UID(header["SOPInstanceUID"])
    ds.file_meta.TransferSyntaxUID = ExplicitVRLittleEndian
    ds.file_meta.ImplementationClassUID = PYDICOM_IMPLEMENTATION_UID
    ds.SpecificCharacterSet = "ISO_IR 100"
    ds.SOPClassUID = ECG_12_LEAD_STORAGE
    ds.Modality = "ECG"
    ds.Manufacturer = "clinic-synth"
    for keyword, value in header.items():
        setattr(ds, keyword, value)
    group = Dataset()
    group.MultiplexGroupTimeOffset = "0"
    group.TriggerTimeOffset = "0"
    group.WaveformOriginality = "ORIGINAL"
    group.NumberOfWaveformChannels = digital.shape[0]
    group.NumberOfWaveformSamples = digital.shape[1]
    group.SamplingFrequency = str(fs)
    group.MultiplexGroupLabel = "RHYTHM"
    group.ChannelDefinitionSequence = Sequence(
        [_channel(codes, scheme, sensitivity_uv) for codes in LEAD_CODES]
    )
    group.WaveformBitsAllocated = 16
    group.WaveformSampleInterpretation = "SS"
    group.WaveformData = np.ascontiguousarray(digital.T).astype("<i2").tobytes()  # C1S1, C2S1, ...
    ds.AcquisitionContextSequence = Sequence()  # type 2: present, may be empty
    ds.WaveformSequence = Sequence([group])
    ds.save_as(path, enforce_file_format=True)
