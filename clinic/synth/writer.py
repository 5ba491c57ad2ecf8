"""Output layout, per-patient file writing, and the cohort tables (manifest, labels, latent).

Layout under ``OUT``::

    xray/{stem}.dcm                      chest radiographs (DX or CR DICOM)
    ecg/{stem}.hea + ecg/{stem}.dat      WFDB 12-lead ECGs  (or ecg/{stem}.dcm, DICOM waveform)
    reports/{stem}_{radiology|ecg}.txt   free-text reports (UTF-8, a few Latin-1)
    records.csv  labels.csv  latent.jsonl  manifest.csv

``stem`` is ``{patient}_{encounter}`` with WFDB-unsafe characters replaced (see
:func:`~clinic.synth.identity.file_stem`); the manifest carries the verbatim ids.
One worker call (:func:`write_patient`) writes one patient's files and returns its table rows,
so patients can be written in any process and the tables assembled in order afterwards.
"""

from __future__ import annotations

import csv
import datetime as dt
import json
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from clinic.synth import ecg, reports, xray
from clinic.synth.conditions import (
    LABELS,
    Demographics,
    EncounterPlan,
    SynthConfig,
    plan_encounter,
    sample_demographics,
)
from clinic.synth.identity import (
    INSTITUTIONS,
    PHYSICIANS,
    dicom_date,
    dicom_uid,
    encounter_id,
    file_stem,
    person_name,
    pick,
    study_day,
)
from clinic.synth.records import RECORD_COLUMNS, record_row

MANIFEST_COLUMNS = ("patient_id", "encounter_id", "kind", "path", "report_kind")
LABEL_COLUMNS = (
    "patient_id",
    "encounter_id",
    "label",
    "value",
    "state",
    "uncertainty",
    "source",
    "vocabulary",
)
SUBDIRS = ("xray", "ecg", "reports")
Row = dict[str, str]


@dataclass(frozen=True)
class PatientTask:
    """Everything a worker needs to write one patient, picklable."""

    out: Path
    seed: int
    index: int
    patient_id: str
    encounter_numbers: tuple[int, int]
    seed_sequence: np.random.SeedSequence
    config: SynthConfig


@dataclass
class PatientOutput:
    """Table rows produced by one patient, in write order."""

    manifest: list[Row] = field(default_factory=list)
    records: list[Row] = field(default_factory=list)
    labels: list[Row] = field(default_factory=list)
    latent: list[dict[str, Any]] = field(default_factory=list)


@dataclass(frozen=True)
class Person:
    """A patient's synthetic identity, shared by all of their files."""

    patient_id: str
    name: str
    birth_date: dt.date
    demo: Demographics


def make_dirs(out: Path) -> None:
    """Create OUT and its modality folders."""
    for sub in SUBDIRS:
        (out / sub).mkdir(parents=True, exist_ok=True)


def _display_name(pn: str) -> str:
    family, given = pn.split("^")
    return f"{given} {family}"


def _dicom_header(
    task: PatientTask, person: Person, plan: EncounterPlan, exam: str, rng: np.random.Generator
) -> dict[str, str]:
    """Identifying header values (DICOM keyword -> value) for one object, derived from the seed."""

    def uid(part: str) -> str:
        return dicom_uid(task.seed, person.patient_id, plan.encounter_id, exam, part)

    return {
        "PatientID": person.patient_id,
        "PatientName": person.name,
        "PatientBirthDate": dicom_date(person.birth_date),
        "PatientSex": "F" if person.demo.sex == "female" else "M",
        "PatientAge": f"{int(plan.age_years):03d}Y",
        "OtherPatientIDs": f"OLD{int(rng.integers(10**6, 10**7))}",
        "StudyDate": dicom_date(study_day(plan.day_offset)),
        "AccessionNumber": f"ACC{int(rng.integers(10**8, 10**9))}",
        "InstitutionName": pick(rng, INSTITUTIONS),
        "ReferringPhysicianName": pick(rng, PHYSICIANS),
        "StudyInstanceUID": uid("study"),
        "SeriesInstanceUID": uid("series"),
        "SOPInstanceUID": uid("instance"),
    }


def _write_xray(
    task: PatientTask, person: Person, plan: EncounterPlan, rng: np.random.Generator, stem: str
) -> dict[str, Any]:
    """Render and write the radiograph; return what the latent file should know about it."""
    style = xray.sample_style(rng, task.config)
    image, geometry = xray.render_chest(
        rng, plan.evidence["xray"], plan.details, style.rows, style.cols, style.view
    )
    path = f"xray/{stem}.dcm"
    xray.write_xray(task.out / path, image, style, _dicom_header(task, person, plan, "xray", rng))
    return {"path": path, **asdict(style), **geometry}


def _write_ecg(
    task: PatientTask, person: Person, plan: EncounterPlan, rng: np.random.Generator, stem: str
) -> dict[str, Any]:
    """Simulate and write the ECG as WFDB (most) or DICOM waveform; return its latent facts."""
    as_dicom = rng.random() < task.config.ecg_dicom_share
    fs = 500 if as_dicom else int(rng.choice([500, 250, 1000], p=[0.8, 0.1, 0.1]))
    leads = ecg.simulate_ecg(
        rng, plan.evidence["ecg"], plan.details["mi_territory"], plan.heart_rate_bpm, fs
    )
    if as_dicom:
        sensitivity_uv = float(rng.choice([1.25, 2.5, 5.0]))
        digital = ecg.quantise(leads, 1000.0 / sensitivity_uv)
        header = _dicom_header(task, person, plan, "ecg", rng)
        header["AcquisitionDateTime"] = header["StudyDate"] + "093000"
        header["ContentDate"] = header["StudyDate"]
        header["StudyTime"] = header["ContentTime"] = "093000"
        scheme = "SCPECG" if rng.random() < 0.5 else "MDC"
        path = f"ecg/{stem}.dcm"
        ecg.write_dicom_ecg(task.out / path, digital, fs, sensitivity_uv, header, scheme)
        return {"path": path, "format": "dicom", "fs": fs, "sensitivity_uv": sensitivity_uv}
    gain = float(rng.choice([1000.0, 200.0], p=[0.7, 0.3]))
    ecg.write_wfdb(task.out / "ecg", stem, ecg.quantise(leads, gain), fs, gain)
    return {"path": f"ecg/{stem}.hea", "format": "wfdb", "fs": fs, "adc_gain": gain}


def _patient_line(rng: np.random.Generator, person: Person) -> str | None:
    """A header line with PHI that scrubbing must remove, in about 40 % of reports."""
    if rng.random() >= 0.4:
        return None
    formats = ("Patient: {name}  MRN: {mrn}", "Patient: {name} ({mrn})", "Patient: {pn}, ID {mrn}")
    return pick(rng, formats).format(
        name=_display_name(person.name), pn=person.name, mrn=person.patient_id
    )


def _write_report(task: PatientTask, rng: np.random.Generator, path: str, text: str) -> str:
    """Write a report, Latin-1 encoded for a small share; return the encoding used."""
    encoding = "latin-1" if rng.random() < task.config.latin1_report_share else "utf-8"
    if encoding == "latin-1":  # make the encoding observable: a signer with accents
        text = text.replace(
            "Reported by: Dr. ", "Reported by: Dr. Jürgen Müller, countersigned Dr. "
        )
    (task.out / path).write_bytes(text.encode(encoding))
    return encoding


def _radiology_report(
    task: PatientTask, person: Person, plan: EncounterPlan, rng: np.random.Generator, view: str
) -> tuple[str, dict[str, list[str]]]:
    """The radiologist reads the film's evidence (with the occasional miss or invention)."""
    seen, errors = reports.apply_errors(rng, plan.evidence["xray"], task.config.report_error)
    slots = reports.effusion_slots(seen["pleural_effusion"], plan.details["effusion_side"])
    slots["lobe"] = plan.details["consolidation_lobe"]
    why = reports.indication(rng, plan.conditions, "radiology")
    signer = _display_name(pick(rng, PHYSICIANS))
    text = reports.radiology_report(rng, seen, slots, view, why, _patient_line(rng, person), signer)
    return text, errors


def _ecg_report(
    task: PatientTask, person: Person, plan: EncounterPlan, rng: np.random.Generator
) -> tuple[str, dict[str, list[str]]]:
    """The cardiologist reads the tracing's evidence and measures the rate."""
    seen, errors = reports.apply_errors(rng, plan.evidence["ecg"], task.config.report_error)
    rate = round(plan.heart_rate_bpm + float(rng.normal(0.0, 2.0)))
    why = reports.indication(rng, plan.conditions, "ecg")
    signer = _display_name(pick(rng, PHYSICIANS))
    territory = plan.details["mi_territory"]
    text = reports.ecg_report(rng, seen, territory, rate, why, _patient_line(rng, person), signer)
    return text, errors


def _write_reports(
    task: PatientTask,
    person: Person,
    plan: EncounterPlan,
    rng: np.random.Generator,
    stem: str,
    view: str,
) -> dict[str, Any]:
    """Write the planned reports; return path, errors and encoding per report kind."""
    written: dict[str, Any] = {}
    for kind in ("radiology", "ecg"):
        if not plan.modalities[f"{kind}_report"]:
            continue
        if kind == "radiology":
            text, errors = _radiology_report(task, person, plan, rng, view)
        else:
            text, errors = _ecg_report(task, person, plan, rng)
        path = f"reports/{stem}_{kind}.txt"
        encoding = _write_report(task, rng, path, text)
        written[kind] = {"path": path, "errors": errors, "encoding": encoding}
    return written


def _label_rows(patient_id: str, plan: EncounterPlan) -> list[Row]:
    """One observed (noisy) label row per condition and no_finding."""
    return [
        {
            "patient_id": patient_id,
            "encounter_id": plan.encounter_id,
            "label": name,
            "value": str(plan.observed_labels[name]),
            "state": "positive" if plan.observed_labels[name] else "negative",
            "uncertainty": "",
            "source": "ground_truth",
            "vocabulary": "synth",
        }
        for name in LABELS
    ]


def _write_encounter(
    task: PatientTask,
    person: Person,
    plan: EncounterPlan,
    seq: np.random.SeedSequence,
    out: PatientOutput,
) -> None:
    """Write every planned file of one encounter and append its rows to ``out``.

    Each modality draws from its own child generator, so changing one renderer leaves the
    other modalities' bytes unchanged for a given seed.
    """
    r_xray, r_ecg, r_record, r_report = (np.random.default_rng(s) for s in seq.spawn(4))
    stem = file_stem(person.patient_id, plan.encounter_id)
    ids = {"patient_id": person.patient_id, "encounter_id": plan.encounter_id}
    files: dict[str, Any] = {}
    if plan.modalities["xray"]:
        files["xray"] = _write_xray(task, person, plan, r_xray, stem)
        out.manifest.append({**ids, "kind": "xray", "path": files["xray"]["path"]})
    if plan.modalities["ecg"]:
        files["ecg"] = _write_ecg(task, person, plan, r_ecg, stem)
        out.manifest.append({**ids, "kind": "ecg", "path": files["ecg"]["path"]})
    view = files["xray"]["view"] if "xray" in files else pick(r_report, ("PA", "AP"))
    files["reports"] = _write_reports(task, person, plan, r_report, stem, view)
    for kind, info in files["reports"].items():
        out.manifest.append({**ids, "kind": "report", "path": info["path"], "report_kind": kind})
    if plan.modalities["record"]:
        out.records.append(record_row(r_record, person.patient_id, person.demo, plan, task.config))
    out.labels.extend(_label_rows(person.patient_id, plan))
    out.latent.append(_latent(task, person, plan, files))


def _latent(
    task: PatientTask, person: Person, plan: EncounterPlan, files: dict[str, Any]
) -> dict[str, Any]:
    """The oracle's view of one encounter: truth, evidence strengths, and what was written."""
    return {
        "patient_id": person.patient_id,
        "encounter_id": plan.encounter_id,
        "patient_index": task.index,
        "age_years": round(plan.age_years, 2),
        "sex": person.demo.sex,
        "risk_factors": {
            "smoker": person.demo.smoker,
            "diabetes": person.demo.diabetes,
            "hypertension": person.demo.hypertension,
            "bmi": round(person.demo.bmi, 1),
        },
        "conditions": plan.conditions,
        "observed_labels": plan.observed_labels,
        "evidence": plan.evidence,
        "details": plan.details,
        "heart_rate_bpm": round(plan.heart_rate_bpm, 1),
        "modalities": plan.modalities,
        "files": files,
    }


def write_patient(task: PatientTask) -> PatientOutput:
    """Plan and write all encounters of one patient (runs in a worker process)."""
    plan_seq, *encounter_seqs = task.seed_sequence.spawn(3)
    rng = np.random.default_rng(plan_seq)
    demo = sample_demographics(rng)
    first_day = int(rng.integers(0, 8 * 365))
    birth = study_day(first_day) - dt.timedelta(days=int(demo.age_years * 365.25))
    person = Person(task.patient_id, person_name(rng, demo.sex), birth, demo)
    plans = [
        plan_encounter(
            rng, demo, task.config, encounter_id(task.encounter_numbers[0]), first_day, 0.0, None
        )
    ]
    if rng.random() < task.config.second_encounter:
        gap = int(rng.integers(30, 720))
        carried = {k: v for k, v in plans[0].conditions.items() if k != "no_finding"}
        plans.append(
            plan_encounter(
                rng,
                demo,
                task.config,
                encounter_id(task.encounter_numbers[1]),
                first_day + gap,
                gap / 365.25,
                carried,
            )
        )
    out = PatientOutput()
    for plan, seq in zip(plans, encounter_seqs, strict=False):
        _write_encounter(task, person, plan, seq, out)
    return out


def _write_csv(path: Path, columns: tuple[str, ...], rows: list[Row]) -> None:
    """UTF-8 CSV with '\n' line ends; missing keys are written blank."""
    with path.open("w", newline="", encoding="utf-8") as f:
        writer = csv.DictWriter(f, fieldnames=list(columns), lineterminator="\n", restval="")
        writer.writeheader()
        writer.writerows(rows)


def write_tables(out: Path, results: list[PatientOutput]) -> dict[str, Path]:
    """records.csv, labels.csv, latent.jsonl and manifest.csv, in patient order."""
    paths = {
        name: out / name for name in ("records.csv", "labels.csv", "latent.jsonl", "manifest.csv")
    }
    _write_csv(paths["records.csv"], RECORD_COLUMNS, [r for p in results for r in p.records])
    _write_csv(paths["labels.csv"], LABEL_COLUMNS, [r for p in results for r in p.labels])
    with paths["latent.jsonl"].open("w", encoding="utf-8") as f:
        for row in (r for p in results for r in p.latent):
            f.write(json.dumps(row, sort_keys=True, ensure_ascii=False) + "\n")
    manifest = [r for p in results for r in p.manifest]
    manifest += [
        {"kind": "record", "path": "records.csv"},
        {"kind": "labels", "path": "labels.csv"},
    ]
    _write_csv(paths["manifest.csv"], MANIFEST_COLUMNS, manifest)
    return paths
