"""The phantom cohort: real formats that read back, determinism by seed, informative evidence.

Two cohorts are built once per module: a small one written twice (inline and with a process pool)
for determinism, and a 200-patient one for formats and the statistical checks.
"""

from __future__ import annotations

import csv
import json
import math
from pathlib import Path
from typing import Any

import numpy as np
import numpy.typing as npt
import pydicom
import pytest
import wfdb
from pydicom.uid import JPEG2000Lossless, RLELossless
from scipy.signal import find_peaks

from clinic.ingest.types import STANDARD_LEADS
from clinic.synth import CONDITIONS, LABELS, SynthSummary, synthesize_cohort
from clinic.synth.identity import INJECTION_PATIENT_ID
from clinic.synth.records import RECORD_COLUMNS

Array = npt.NDArray[np.float64]
SMALL = 24
LARGE = 200


@pytest.fixture(scope="module")
def small(tmp_path_factory: pytest.TempPathFactory) -> SynthSummary:
    return synthesize_cohort(tmp_path_factory.mktemp("a"), patients=SMALL, seed=11, workers=1)


@pytest.fixture(scope="module")
def small_again(tmp_path_factory: pytest.TempPathFactory) -> SynthSummary:
    return synthesize_cohort(tmp_path_factory.mktemp("b"), patients=SMALL, seed=11, workers=2)


@pytest.fixture(scope="module")
def cohort(tmp_path_factory: pytest.TempPathFactory) -> SynthSummary:
    return synthesize_cohort(tmp_path_factory.mktemp("c"), patients=LARGE, seed=5, workers=2)


def read_csv(path: Path) -> list[dict[str, str]]:
    with path.open(newline="", encoding="utf-8") as f:
        return list(csv.DictReader(f))


def latent(summary: SynthSummary) -> list[dict[str, Any]]:
    return [json.loads(line) for line in summary.latent.read_text("utf-8").splitlines()]


def manifest(summary: SynthSummary, kind: str) -> list[dict[str, str]]:
    return [r for r in read_csv(summary.manifest) if r["kind"] == kind]


def truth(summary: SynthSummary) -> dict[tuple[str, str], dict[str, int]]:
    return {(r["patient_id"], r["encounter_id"]): r["conditions"] for r in latent(summary)}


def read_ecg(path: Path) -> tuple[Array, float]:
    """(n, 12) in mV and the sampling rate, from WFDB (.hea) or DICOM (.dcm)."""
    if path.suffix == ".dcm":
        ds = pydicom.dcmread(path)
        group = ds.WaveformSequence[0]
        return ds.waveform_array(0) / 1000.0, float(group.SamplingFrequency)
    record = wfdb.rdrecord(str(path.with_suffix("")))
    assert record.sig_name == list(STANDARD_LEADS)
    assert record.units == ["mV"] * 12
    return np.asarray(record.p_signal, dtype=np.float64), float(record.fs)


def rr_irregularity(lead_ii: Array, fs: float) -> float:
    """Coefficient of variation of RR intervals from a Pan-Tompkins-like R-peak detector:
    10 ms smoothing, squared slope, 80 ms integration, peaks at least 250 ms apart."""
    smooth = np.convolve(lead_ii, np.ones(max(1, int(0.01 * fs))), mode="same")
    energy = np.convolve(np.diff(smooth) ** 2, np.ones(int(0.08 * fs)), mode="same")
    peaks, _ = find_peaks(energy, height=0.3 * np.percentile(energy, 99), distance=int(0.25 * fs))
    rr = np.diff(peaks) / fs
    return float(np.std(rr) / np.mean(rr))


def displayed(ds: pydicom.Dataset) -> Array:
    """Pixels scaled to [0, 1] with white = dense, whatever the photometric interpretation."""
    arr = np.asarray(ds.pixel_array, dtype=np.float64)
    lo, hi = np.percentile(arr, [1, 99])
    img: Array = np.clip((arr - lo) / (hi - lo), 0.0, 1.0)
    return 1.0 - img if ds.PhotometricInterpretation == "MONOCHROME1" else img


def cardiothoracic_ratio(img: Array) -> float:
    """Share of the chest width at heart level that is not dark lung."""
    rows = img.shape[0]
    band = img[int(0.6 * rows) : int(0.67 * rows)].mean(axis=0)
    lo, hi = np.percentile(band, [5, 95])
    dark = np.flatnonzero(band < (lo + hi) / 2)
    dark = dark[(dark > 0.05 * band.size) & (dark < 0.95 * band.size)]
    width = dark[-1] - dark[0]
    return 1.0 - float(dark.size) / float(width)


# -- layout and determinism ------------------------------------------------------------------


def test_every_manifest_file_exists_and_tables_are_listed(cohort: SynthSummary) -> None:
    rows = read_csv(cohort.manifest)
    assert list(rows[0]) == ["patient_id", "encounter_id", "kind", "path", "report_kind"]
    for row in rows:
        assert (cohort.out / row["path"]).is_file(), row
        assert row["kind"] in {"xray", "ecg", "report", "record", "labels"}
        assert (row["report_kind"] in {"radiology", "ecg"}) == (row["kind"] == "report")
    tables = {(r["kind"], r["path"]) for r in rows if not r["patient_id"]}
    assert tables == {("record", "records.csv"), ("labels", "labels.csv")}
    assert cohort.counts["xray"] == len(manifest(cohort, "xray"))


def test_same_seed_gives_identical_bytes_with_or_without_pool(
    small: SynthSummary, small_again: SynthSummary
) -> None:
    for name in ("manifest.csv", "labels.csv", "records.csv", "latent.jsonl"):
        assert (small.out / name).read_bytes() == (small_again.out / name).read_bytes(), name
    paths = [r["path"] for r in read_csv(small.manifest) if r["patient_id"]]
    assert any(p.endswith(".dcm") for p in paths)
    for rel in paths:
        assert (small.out / rel).read_bytes() == (small_again.out / rel).read_bytes(), rel
        if rel.endswith(".hea"):
            dat = Path(rel).with_suffix(".dat")
            assert (small.out / dat).read_bytes() == (small_again.out / dat).read_bytes()


def test_different_seed_differs(small: SynthSummary, tmp_path: Path) -> None:
    other = synthesize_cohort(tmp_path, patients=SMALL, seed=12, workers=1)
    assert other.labels.read_bytes() != small.labels.read_bytes()
    ids = {r["patient_id"] for r in read_csv(small.labels)} - {INJECTION_PATIENT_ID}
    assert not ids & {r["patient_id"] for r in read_csv(other.labels)}


def test_injection_patient_is_present_once_verbatim(cohort: SynthSummary) -> None:
    patients = {r["patient_id"] for r in latent(cohort)}
    assert INJECTION_PATIENT_ID in patients
    hostile = [r for r in read_csv(cohort.manifest) if r["patient_id"] == INJECTION_PATIENT_ID]
    assert hostile
    for row in hostile:
        if row["kind"] == "xray":
            assert pydicom.dcmread(cohort.out / row["path"]).PatientID == INJECTION_PATIENT_ID


# -- formats ---------------------------------------------------------------------------------


def test_xray_dicoms_decode_with_varied_storage(cohort: SynthSummary) -> None:
    syntaxes, photometric, bits = set(), set(), set()
    for row in manifest(cohort, "xray"):
        path = cohort.out / row["path"]
        assert path.read_bytes()[128:132] == b"DICM"
        ds = pydicom.dcmread(path)
        assert ds.PatientID == row["patient_id"]
        for keyword in (
            "PatientName",
            "PatientBirthDate",
            "AccessionNumber",
            "InstitutionName",
            "ReferringPhysicianName",
            "OtherPatientIDs",
            "StudyDate",
            "StudyInstanceUID",
            "WindowCenter",
            "WindowWidth",
            "PixelSpacing",
        ):
            assert keyword in ds, keyword
        assert ds.BodyPartExamined == "CHEST"
        assert ds.ViewPosition in {"PA", "AP"}
        assert ds.Modality in {"DX", "CR"}
        pixels = ds.pixel_array
        assert pixels.shape == (ds.Rows, ds.Columns)
        assert int(pixels.max()) <= 2**ds.BitsStored - 1
        assert 384 <= ds.Rows <= 1024
        syntaxes.add(ds.file_meta.TransferSyntaxUID)
        photometric.add(ds.PhotometricInterpretation)
        bits.add(int(ds.BitsStored))
    assert {RLELossless, JPEG2000Lossless} <= syntaxes
    assert photometric == {"MONOCHROME1", "MONOCHROME2"}
    assert {8, 12, 16} <= bits


def test_ecgs_read_back_and_obey_einthoven(cohort: SynthSummary) -> None:
    suffixes = set()
    for row in manifest(cohort, "ecg"):
        path = cohort.out / row["path"]
        suffixes.add(path.suffix)
        signal, fs = read_ecg(path)
        assert signal.shape == (int(10 * fs), 12)
        i, ii, iii, avr, avl, avf = signal[:, :6].T
        assert np.abs(ii - (i + iii)).max() < 0.01
        assert np.abs(avr + (i + ii) / 2).max() < 0.01
        assert np.abs(avl - (i - ii / 2)).max() < 0.01
        assert np.abs(avf - (ii - i / 2)).max() < 0.01
        assert 0.3 < np.ptp(ii) < 10.0
    assert suffixes == {".hea", ".dcm"}


def test_dicom_ecg_structure(cohort: SynthSummary) -> None:
    row = next(r for r in manifest(cohort, "ecg") if r["path"].endswith(".dcm"))
    ds = pydicom.dcmread(cohort.out / row["path"])
    assert ds.SOPClassUID == "1.2.840.10008.5.1.4.1.1.9.1.1"
    assert ds.PatientID == row["patient_id"] and "PatientName" in ds
    group = ds.WaveformSequence[0]
    assert group.NumberOfWaveformChannels == 12
    assert group.WaveformBitsAllocated == 16 and group.WaveformSampleInterpretation == "SS"
    meanings = [ch.ChannelSourceSequence[0].CodeMeaning for ch in group.ChannelDefinitionSequence]
    assert meanings == [f"Lead {name}" for name in STANDARD_LEADS]
    units = group.ChannelDefinitionSequence[0].ChannelSensitivityUnitsSequence[0]
    assert units.CodeValue == "uV"


def test_records_csv(cohort: SynthSummary) -> None:
    rows = read_csv(cohort.records)
    assert tuple(rows[0]) == RECORD_COLUMNS
    assert {r["sex"] for r in rows} == {"female", "male"}
    assert any(r["bnp_pg_ml"] == "" for r in rows)

    def broken(r: dict[str, str]) -> bool:
        if "n/a" in r.values():
            return True
        temp, height, spo2 = r["temperature_c"], r["height_cm"], r["spo2_percent"]
        return bool(
            (temp and float(temp) > 45)
            or (height and float(height) < 3)
            or (spo2 and float(spo2) > 100)
        )

    assert 0 < sum(map(broken, rows)) < 0.1 * len(rows)


def test_reports_have_sections_negation_hedging_and_two_encodings(cohort: SynthSummary) -> None:
    texts, latin1 = [], 0
    for row in manifest(cohort, "report"):
        raw = (cohort.out / row["path"]).read_bytes()
        try:
            text = raw.decode("utf-8")
        except UnicodeDecodeError:
            text, latin1 = raw.decode("latin-1"), latin1 + 1
        assert all(s in text for s in ("INDICATION:", "FINDINGS:", "IMPRESSION:"))
        assert row["path"].endswith(f"_{row['report_kind']}.txt")
        texts.append(text)
    corpus = "\n".join(texts)
    assert latin1 > 0
    for phrase in ("No pleural effusion", "ossible", "cannot exclude", "Patient:"):
        assert phrase in corpus, phrase
    assert "enlarged" in corpus or "Enlarged cardiac silhouette" in corpus
    assert "AFib" in corpus or "Irregularly irregular" in corpus


def test_labels_are_noisy_but_close_to_truth(cohort: SynthSummary) -> None:
    rows = read_csv(cohort.labels)
    assert list(rows[0]) == [
        "patient_id",
        "encounter_id",
        "label",
        "value",
        "state",
        "uncertainty",
        "source",
        "vocabulary",
    ]
    assert {r["label"] for r in rows} == set(LABELS)
    assert {(r["value"], r["state"]) for r in rows} == {("1", "positive"), ("0", "negative")}
    t = truth(cohort)
    flips = [
        int(r["value"]) != t[(r["patient_id"], r["encounter_id"])][r["label"]]
        for r in rows
        if r["label"] in CONDITIONS
    ]
    assert 0 < np.mean(flips) < 0.08


# -- the latent model ------------------------------------------------------------------------


def test_prevalence_is_plausible(cohort: SynthSummary) -> None:
    bands = {
        "heart_failure": (0.04, 0.28),
        "atrial_fibrillation": (0.04, 0.25),
        "myocardial_infarction": (0.02, 0.18),
        "pneumonia": (0.04, 0.22),
        "pleural_effusion": (0.03, 0.2),
        "left_ventricular_hypertrophy": (0.04, 0.25),
        "no_finding": (0.4, 0.75),
    }
    conditions = list(truth(cohort).values())
    for name, (lo, hi) in bands.items():
        share = np.mean([c[name] for c in conditions])
        assert lo <= share <= hi, (name, share)
    hf_rate_with_af = np.mean([c["heart_failure"] for c in conditions if c["atrial_fibrillation"]])
    assert hf_rate_with_af > np.mean([c["heart_failure"] for c in conditions])


def test_missingness_and_at_least_one_modality(cohort: SynthSummary) -> None:
    rows = latent(cohort)
    with_xray = [r for r in rows if r["modalities"]["xray"]]
    configured = {
        "xray": (0.25, rows),
        "ecg": (0.2, rows),
        "record": (0.1, rows),
        "radiology_report": (0.3, with_xray),
    }
    for modality, (share, among) in configured.items():
        absent = np.mean([not r["modalities"][modality] for r in among])
        tolerance = 4 * math.sqrt(share * (1 - share) / len(among))  # four standard errors
        assert abs(absent - share) < tolerance, (modality, absent)
    present = {(r["patient_id"], r["encounter_id"]) for r in read_csv(cohort.manifest)}
    present |= {(r["patient_id"], r["encounter_id"]) for r in read_csv(cohort.records)}
    assert {(r["patient_id"], r["encounter_id"]) for r in rows} <= present
    assert len(rows) > LARGE  # some patients have a second encounter


def test_bnp_is_higher_in_heart_failure(cohort: SynthSummary) -> None:
    t = truth(cohort)
    log_bnp: dict[int, list[float]] = {0: [], 1: []}
    for r in read_csv(cohort.records):
        try:
            value = float(r["bnp_pg_ml"])
        except ValueError:
            continue
        log_bnp[t[(r["patient_id"], r["encounter_id"])]["heart_failure"]].append(math.log(value))
    assert np.mean(log_bnp[1]) > np.mean(log_bnp[0]) + 0.7
    assert min(log_bnp[1]) < max(log_bnp[0])  # informative, not a perfect separator


def test_rr_irregularity_is_higher_in_af(cohort: SynthSummary) -> None:
    t = truth(cohort)
    cv: dict[int, list[float]] = {0: [], 1: []}
    for row in manifest(cohort, "ecg"):
        signal, fs = read_ecg(cohort.out / row["path"])
        af = t[(row["patient_id"], row["encounter_id"])]["atrial_fibrillation"]
        cv[af].append(rr_irregularity(signal[:, 1], fs))
    assert np.median(cv[1]) > 2 * np.median(cv[0])
    assert np.mean(cv[1]) > np.mean(cv[0]) + 0.05


def test_cardiomegaly_measure_is_higher_in_heart_failure(cohort: SynthSummary) -> None:
    t = truth(cohort)
    ctr: dict[int, list[float]] = {0: [], 1: []}
    for row in manifest(cohort, "xray"):
        image = displayed(pydicom.dcmread(cohort.out / row["path"]))
        hf = t[(row["patient_id"], row["encounter_id"])]["heart_failure"]
        ctr[hf].append(cardiothoracic_ratio(image))
    assert np.mean(ctr[1]) > np.mean(ctr[0]) + 0.04
    assert min(ctr[1]) < max(ctr[0])
