"""MIMIC-CXR-JPG: ``files/pNN/pNNNNNNNN/sNNNNNNNN/<dicom_id>.jpg`` + its CSV tables (+ reports).

Layout (PhysioNet ``mimic-cxr-jpg/2.x``): ``mimic-cxr-2.0.0-metadata.csv[.gz]`` (one row per
image: dicom_id, subject_id, study_id, ViewPosition, ...), ``mimic-cxr-2.0.0-split.csv[.gz]``
(official train/validate/test per image), ``mimic-cxr-2.0.0-chexpert.csv[.gz]`` (14 observations
per study). The free-text reports are not part of MIMIC-CXR-JPG; they ship with MIMIC-CXR as
``mimic-cxr-reports.zip`` holding ``files/pNN/pNNNNNNNN/sNNNNNNNN.txt`` (one file per study, next to
the study's image folder). They are found, in this order, under ``files/`` (merged trees),
``mimic-cxr-reports/files/``, ``reports/files/``, ``reports/sNNNNNNNN.txt`` or inside
``mimic-cxr-reports.zip`` in the import root.

Items, keyed ``patient_key = subject_id``, ``encounter_key = "s" + study_id``:

* XRAY per image listed in the metadata (``ViewPosition`` kept; ``split`` = official split). An
  image listed but absent points at its expected path, so the engine quarantines it as
  ``MANIFEST_FILE_MISSING``. Without a metadata table the ``files/`` tree is walked instead.
* REPORT per study whose report file is found (kind "radiology"). A study without a report is not
  an error: many installations have the images only.
* LABELS per study with a CheXpert row: all four states kept (1 → positive 1.0, 0 → negative 0.0,
  -1 → uncertain None, blank → not mentioned None), vocabulary "chexpert", source report-derived
  (the labeler read the report).

The study set is defined by the images (metadata or walk): label or report rows of studies that
have no image in this installation are skipped, so a partial download imports cleanly.
``StudyDate``/``StudyTime`` are dropped (dates are not needed and would need shifting).
"""

from __future__ import annotations

import re
import zipfile
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path

from clinic.ingest.errors import ReasonCode
from clinic.ingest.importers._common import (
    RowError,
    chexpert_labels,
    error_item,
    is_missing,
    layout_error,
    parse_id,
    read_rows,
    require_dir,
    row_source,
)
from clinic.ingest.types import IngestItem, ItemKind, LabelSource, ReportKind

DATASET = "mimic-cxr"
_ZIP_REPORT = re.compile(r"(?:^|/)files/p\d+/p(\d+)/s(\d+)\.txt$")


@dataclass(frozen=True)
class _Image:
    """One image of a study, as listed in the metadata (or found on disk)."""

    dicom_id: str
    path: Path
    view: str | None


@dataclass
class _Study:
    """The images of one study, in listing order."""

    subject_id: str
    study_id: str
    images: list[_Image] = field(default_factory=list)

    @property
    def encounter_key(self) -> str:
        return "s" + self.study_id


def find_versioned_table(root: Path, suffix: str) -> Path | None:
    """``mimic-cxr-<version>-<suffix>.csv[.gz]``, the highest version when several are present."""
    found = sorted(root.glob(f"mimic-cxr-*-{suffix}.csv")) + sorted(
        root.glob(f"mimic-cxr-*-{suffix}.csv.gz")
    )
    return max(found, key=lambda path: path.name.split(".csv")[0]) if found else None


def study_dir(root: Path, subject_id: str, study_id: str) -> Path:
    """``files/pNN/pNNNNNNNN/sNNNNNNNN`` (NN = the subject id's first two digits)."""
    return root / "files" / f"p{subject_id[:2]}" / f"p{subject_id}" / f"s{study_id}"


def import_mimic_cxr(root: Path) -> Iterator[IngestItem]:
    """XRAY, REPORT and LABELS items for every study of a MIMIC-CXR-JPG installation."""
    require_dir(root, DATASET)
    metadata = find_versioned_table(root, "metadata")
    if metadata is None and not (root / "files").is_dir():
        raise layout_error(DATASET, "neither the metadata table nor files/ is in the import root")
    split_table = find_versioned_table(root, "split")
    labels_table = find_versioned_table(root, "chexpert")
    return _iter_items(root, metadata, split_table, labels_table)


def _iter_items(
    root: Path, metadata: Path | None, split_table: Path | None, labels_table: Path | None
) -> Iterator[IngestItem]:
    """Per study: its images, then its report, then its labels."""
    errors: list[IngestItem] = []
    studies = load_studies(root, metadata, errors) if metadata else walk_studies(root)
    splits = load_splits(split_table) if split_table else {}
    labels = load_label_rows(labels_table) if labels_table else {}
    with _ReportFinder(root) as reports:
        yield from errors
        for study in studies.values():
            study_split = next(
                (splits[image.dicom_id] for image in study.images if image.dicom_id in splits), None
            )
            for image in study.images:
                yield xray_item(study, image, splits.get(image.dicom_id))
            report = reports.item(study, study_split)
            if report is not None:
                yield report
            if study.study_id in labels and labels_table is not None:
                yield labels_item(study, labels_table, labels[study.study_id], study_split)


def load_studies(root: Path, metadata: Path, errors: list[IngestItem]) -> dict[str, _Study]:
    """Studies (by study id) and their images from the metadata; bad rows go to ``errors``."""
    studies: dict[str, _Study] = {}
    required = ("dicom_id", "subject_id", "study_id")
    for number, row in read_rows(metadata, required, DATASET):
        try:
            subject_id = parse_id(row["subject_id"], "subject_id")
            study_id = parse_id(row["study_id"], "study_id")
            dicom_id = _plain_name(row["dicom_id"], "dicom_id")
        except RowError as error:
            errors.append(error_item(ItemKind.XRAY, row_source(metadata, number), error))
            continue
        study = studies.setdefault(study_id, _Study(subject_id, study_id))
        path = study_dir(root, subject_id, study_id) / f"{dicom_id}.jpg"
        view = row.get("ViewPosition", "")
        study.images.append(_Image(dicom_id, path, None if is_missing(view) else view))
    return studies


def walk_studies(root: Path) -> dict[str, _Study]:
    """Studies found on disk (``files/p*/p*/s*/*.jpg``) when there is no metadata table."""
    studies: dict[str, _Study] = {}
    for path in sorted((root / "files").glob("p*/p*/s*/*.jpg")):
        subject_id, study_id = path.parent.parent.name[1:], path.parent.name[1:]
        if not (subject_id.isdigit() and study_id.isdigit()):
            continue
        study = studies.setdefault(study_id, _Study(subject_id, study_id))
        study.images.append(_Image(path.stem, path, None))
    return studies


def _plain_name(raw: str, column: str) -> str:
    """An identifier that is used as a file name: non-empty and without path parts."""
    text = raw.strip()
    if is_missing(text):
        raise RowError(ReasonCode.RECORD_MISSING_ID, f"column {column} is empty")
    if "/" in text or "\\" in text or text.startswith("."):
        raise RowError(ReasonCode.IMPORT_ROW_INVALID, f"column {column} is not a plain name")
    return text


def load_splits(path: Path) -> dict[str, str]:
    """dicom_id → official split ("train", "validate", "test")."""
    return {
        row["dicom_id"]: row["split"]
        for _, row in read_rows(path, ("dicom_id", "split"), DATASET)
        if row["dicom_id"] and row["split"]
    }


def load_label_rows(path: Path) -> dict[str, tuple[int, dict[str, str]]]:
    """study_id → (row number, row) of the CheXpert table; rows without a study id are skipped."""
    rows: dict[str, tuple[int, dict[str, str]]] = {}
    for number, row in read_rows(path, ("subject_id", "study_id"), DATASET):
        try:
            rows.setdefault(parse_id(row["study_id"], "study_id"), (number, row))
        except RowError:
            continue  # such a row cannot be linked to any image; nothing to attach it to
    return rows


def xray_item(study: _Study, image: _Image, split: str | None) -> IngestItem:
    """One JPEG (present or not) with its view position and official split."""
    fields: dict[str, object] = {} if image.view is None else {"ViewPosition": image.view}
    return IngestItem(
        kind=ItemKind.XRAY,
        source=str(image.path),
        path=image.path,
        patient_key=study.subject_id,
        encounter_key=study.encounter_key,
        fields=fields,
        split=split,
    )


def labels_item(
    study: _Study, table: Path, labelled: tuple[int, dict[str, str]], split: str | None
) -> IngestItem:
    """The study's 14 CheXpert observations in their four states (error item if malformed)."""
    number, row = labelled
    source = row_source(table, number)
    try:
        labels = chexpert_labels(row, LabelSource.REPORT_DERIVED)
    except RowError as error:
        return error_item(ItemKind.LABELS, source, error, study.subject_id, study.encounter_key)
    return IngestItem(
        kind=ItemKind.LABELS,
        source=source,
        patient_key=study.subject_id,
        encounter_key=study.encounter_key,
        labels=labels,
        split=split,
    )


class _ReportFinder:
    """Finds a study's report in the report folders or ``mimic-cxr-reports.zip``."""

    def __init__(self, root: Path) -> None:
        self._root = root
        bases = (root, root / "mimic-cxr-reports", root / "reports")
        self._trees = [base / "files" for base in bases if (base / "files").is_dir()]
        self._flat = root / "reports"
        self._zip: zipfile.ZipFile | None = None
        self._zip_names: dict[str, str] = {}

    def __enter__(self) -> _ReportFinder:
        archive = self._root / "mimic-cxr-reports.zip"
        if archive.is_file():
            try:
                self._zip = zipfile.ZipFile(archive)
            except (zipfile.BadZipFile, OSError):
                raise layout_error(DATASET, "mimic-cxr-reports.zip is not a readable zip") from None
            for name in self._zip.namelist():
                match = _ZIP_REPORT.search(name)
                if match:
                    self._zip_names.setdefault(match.group(2), name)
        return self

    def __exit__(self, *_: object) -> None:
        if self._zip is not None:
            self._zip.close()

    def path(self, study: _Study) -> Path | None:
        """The report file of a study in one of the folder layouts, if any."""
        name = f"s{study.study_id}.txt"
        for tree in self._trees:
            candidate = tree / f"p{study.subject_id[:2]}" / f"p{study.subject_id}" / name
            if candidate.is_file():
                return candidate
        flat = self._flat / name
        return flat if flat.is_file() else None

    def item(self, study: _Study, split: str | None) -> IngestItem | None:
        """The study's REPORT item (file path, or text read from the zip), None if absent."""
        path = self.path(study)
        if path is not None:
            return _report(study, str(path), split, path=path)
        member = self._zip_names.get(study.study_id)
        if member is None or self._zip is None:
            return None
        source = f"{self._root / 'mimic-cxr-reports.zip'}!{member}"
        try:
            text = self._zip.read(member).decode("utf-8")
        except UnicodeDecodeError:
            error = RowError(ReasonCode.REPORT_UNDECODABLE, "report in zip is not UTF-8")
            return error_item(ItemKind.REPORT, source, error, study.subject_id, study.encounter_key)
        return _report(study, source, split, text=text)


def _report(
    study: _Study, source: str, split: str | None, path: Path | None = None, text: str | None = None
) -> IngestItem:
    """A radiology REPORT item of one study, from a file path or inline text."""
    return IngestItem(
        kind=ItemKind.REPORT,
        source=source,
        path=path,
        text=text,
        patient_key=study.subject_id,
        encounter_key=study.encounter_key,
        fields={"report_kind": ReportKind.RADIOLOGY.value, "language": "en"},
        split=split,
    )
