"""Small MIMIC-CXR-JPG and CheXpert installations built from real files, for tests.

Neither dataset can be redistributed, so these builders lay out the exact published folder and
table formats around real radiographs (Hannover COVID-19 PNGs re-encoded as JPEG) and real report
text (Indiana University reports). Label values cycle through all four CheXpert states, one
listed image is left missing, and the MIMIC metadata/split tables are gzipped like the originals.
"""

from __future__ import annotations

import csv
import gzip
import hashlib
import io
import os
from functools import lru_cache
from pathlib import Path

from PIL import Image

from schemas.labels import CHEXPERT_OBSERVATIONS

LABEL_CYCLE: tuple[str, ...] = ("1.0", "0.0", "-1.0", "")
MIMIC_SPLITS: tuple[str, ...] = ("train", "validate", "test")
MIMIC_DIR = "mimic-cxr-jpg"
CHEXPERT_DIR = "CheXpert-v1.0-small"
_METADATA_COLUMNS = (
    "dicom_id", "subject_id", "study_id", "PerformedProcedureStepDescription", "ViewPosition",
    "Rows", "Columns", "StudyDate", "StudyTime", "ProcedureCodeSequence_CodeMeaning",
    "ViewCodeSequence_CodeMeaning", "PatientOrientationCodeSequence_CodeMeaning",
)  # fmt: skip
_VIEW_MEANING = {"PA": "postero-anterior", "AP": "antero-posterior", "LATERAL": "lateral"}


def shared_data_dir() -> Path:
    """The real-data folder: ``$CLINIC_SHARED_DATA``, else ``shared/data`` beside or above here."""
    configured = os.environ.get("CLINIC_SHARED_DATA")
    if configured:
        return Path(configured)
    for parent in Path(__file__).resolve().parents:
        candidate = parent / "shared" / "data"
        if candidate.is_dir():
            return candidate
    return Path(__file__).resolve().parents[3].parent / "shared" / "data"


@lru_cache(maxsize=64)
def real_jpeg(index: int) -> tuple[bytes, int, int]:
    """The ``index``-th Hannover radiograph (cycling) as JPEG bytes, with its rows and columns."""
    pngs = sorted((shared_data_dir() / "hannover-cxr" / "png").glob("*.png"))
    with Image.open(pngs[index % len(pngs)]) as image:
        gray = image.convert("L")
        buffer = io.BytesIO()
        gray.save(buffer, format="JPEG", quality=90)
        return buffer.getvalue(), gray.height, gray.width


@lru_cache(maxsize=1)
def real_reports() -> tuple[dict[str, str], ...]:
    """IU reports that have both findings and an impression, in file order."""
    path = shared_data_dir() / "iu-reports" / "indiana_reports.csv"
    with path.open(encoding="utf-8", newline="") as handle:
        rows = [dict(row) for row in csv.DictReader(handle)]
    return tuple(row for row in rows if row["findings"].strip() and row["impression"].strip())


def mimic_report_text(report: dict[str, str]) -> str:
    """An IU report laid out like a MIMIC-CXR free-text report file."""
    lines = [
        "                                 FINAL REPORT",
        " EXAMINATION:  CHEST (PA AND LAT)",
        "",
    ]
    for title, column in (("INDICATION", "indication"), ("COMPARISON", "comparison")):
        if report[column].strip():
            lines += [f" {title}:  {report[column].strip()}", ""]
    lines += [" FINDINGS:", "", f" {report['findings'].strip()}", ""]
    lines += [" IMPRESSION:", "", f" {report['impression'].strip()}", ""]
    return "\n".join(lines)


def label_value(study_index: int, observation_index: int) -> str:
    """The CheXpert cell of one study and observation: every state appears in every study."""
    return LABEL_CYCLE[(study_index + observation_index) % len(LABEL_CYCLE)]


def _dicom_id(study_id: str, image_index: int) -> str:
    """A MIMIC-style dicom_id (five dash-separated groups of eight hex digits)."""
    digest = hashlib.sha1(f"{study_id}-{image_index}".encode()).hexdigest()
    return "-".join(digest[start : start + 8] for start in range(0, 40, 8))


def _write_csv(path: Path, header: list[str], rows: list[list[str]]) -> None:
    """A CSV, gzipped when the name ends in ``.gz`` (as PhysioNet ships MIMIC tables)."""
    buffer = io.StringIO()
    writer = csv.writer(buffer, lineterminator="\n")
    writer.writerow(header)
    writer.writerows(rows)
    data = buffer.getvalue().encode("utf-8")
    path.write_bytes(gzip.compress(data) if path.name.endswith(".gz") else data)


def build_mimic_cxr_fixture(root: Path, n_studies: int) -> Path:
    """A MIMIC-CXR-JPG installation with ``n_studies`` studies under ``root``; returns its folder.

    Two studies per patient; even studies have a PA and a LATERAL image, odd ones one AP image.
    Each study has its report at ``files/pNN/pNNNNNNNN/sNNNNNNNN.txt``, a CheXpert row cycling all
    four states and a split cycling train/validate/test. The last study's last image is listed
    in the metadata and split tables but not written. Metadata and split are ``.csv.gz``; the
    CheXpert table is a plain ``.csv`` so both readers are exercised.
    """
    base = root / MIMIC_DIR
    base.mkdir(parents=True, exist_ok=True)
    reports = real_reports()
    metadata: list[list[str]] = []
    splits: list[list[str]] = []
    labels: list[list[str]] = []
    for index in range(n_studies):
        subject_id = str(10_000_032 + (index // 2) * 1_000_003)
        study_id = str(50_000_000 + 101 * index)
        study = base / "files" / f"p{subject_id[:2]}" / f"p{subject_id}" / f"s{study_id}"
        study.mkdir(parents=True, exist_ok=True)
        views = ("PA", "LATERAL") if index % 2 == 0 else ("AP",)
        split = MIMIC_SPLITS[index % len(MIMIC_SPLITS)]
        for image_index, view in enumerate(views):
            dicom_id = _dicom_id(study_id, image_index)
            jpeg, rows, columns = real_jpeg(index * 2 + image_index)
            last = index == n_studies - 1 and image_index == len(views) - 1
            if not last:
                (study / f"{dicom_id}.jpg").write_bytes(jpeg)
            metadata.append(
                [dicom_id, subject_id, study_id, "CHEST (PA AND LAT)", view, str(rows),
                 str(columns), "21800506", "213014.531", "CHEST (PA AND LAT)",
                 _VIEW_MEANING[view], "Erect"]
            )  # fmt: skip
            splits.append([dicom_id, study_id, subject_id, split])
        report = mimic_report_text(reports[index % len(reports)])
        (study.parent / f"s{study_id}.txt").write_text(report, encoding="utf-8")
        cells = [label_value(index, j) for j in range(len(CHEXPERT_OBSERVATIONS))]
        labels.append([subject_id, study_id, *cells])
    _write_csv(base / "mimic-cxr-2.0.0-metadata.csv.gz", list(_METADATA_COLUMNS), metadata)
    _write_csv(
        base / "mimic-cxr-2.0.0-split.csv.gz",
        ["dicom_id", "study_id", "subject_id", "split"],
        splits,
    )
    chexpert_header = ["subject_id", "study_id", *sorted(CHEXPERT_OBSERVATIONS)]
    order = [CHEXPERT_OBSERVATIONS.index(name) for name in sorted(CHEXPERT_OBSERVATIONS)]
    sorted_labels = [[row[0], row[1], *(row[2 + j] for j in order)] for row in labels]
    _write_csv(base / "mimic-cxr-2.0.0-chexpert.csv", chexpert_header, sorted_labels)
    return base


def build_chexpert_fixture(root: Path, n_patients: int) -> Path:
    """A CheXpert-v1.0-small installation with ``n_patients`` patients; returns its folder.

    With two or more patients the last one is in ``valid`` (labels 0/1 only, like the real
    validation set); the others are in ``train`` with labels cycling all four states. Patient p
    has 1 + p % 2 studies; study 1 has a frontal and a lateral view, later studies one frontal.
    The first patient's age is 90 (CheXpert's top-coded value). The last train image listed is
    not written.
    """
    base = root / CHEXPERT_DIR
    header = ["Path", "Sex", "Age", "Frontal/Lateral", "AP/PA", *CHEXPERT_OBSERVATIONS]
    tables: dict[str, list[list[str]]] = {"train": [], "valid": []}
    study_counter = 0
    image_counter = 0
    missing: Path | None = None
    for number in range(1, n_patients + 1):
        split = "valid" if n_patients >= 2 and number == n_patients else "train"
        patient = f"patient{number:05d}"
        sex = ("Male", "Female", "Unknown")[number % 3]
        age = "90" if number == 1 else str(30 + 7 * number)
        for study_number in range(1, 2 + number % 2):
            views = [("frontal", "Frontal", "AP" if number % 2 else "PA")]
            if study_number == 1:
                views.append(("lateral", "Lateral", ""))
            for view_number, (suffix, frontal_lateral, ap_pa) in enumerate(views, start=1):
                relative = f"{CHEXPERT_DIR}/{split}/{patient}/study{study_number}"
                relative += f"/view{view_number}_{suffix}.jpg"
                target = root / relative
                target.parent.mkdir(parents=True, exist_ok=True)
                target.write_bytes(real_jpeg(image_counter)[0])
                image_counter += 1
                if split == "train":
                    missing = target
                if split == "valid":
                    cells = [str(float((study_counter + j) % 2)) for j in range(14)]
                else:
                    cells = [label_value(study_counter, j) for j in range(14)]
                tables[split].append([relative, sex, age, frontal_lateral, ap_pa, *cells])
            study_counter += 1
    if missing is not None:
        missing.unlink()
    for split, rows in tables.items():
        _write_csv(base / f"{split}.csv", header, rows)
    return base
