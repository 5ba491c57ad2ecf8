"""CheXpert: ``train.csv`` / ``valid.csv`` + ``{train,valid}/patientNNNNN/studyN/viewN_*.jpg``.

``root`` is the dataset folder holding the CSVs (e.g. ``CheXpert-v1.0-small``). Each CSV row is
one image; its ``Path`` is written relative to the *parent* of that folder
(``CheXpert-v1.0-small/train/patient00001/study1/view1_frontal.jpg``); a path relative to the
folder itself, or a renamed dataset folder, resolves too.

Keys: ``patient_key = "patientNNNNN"`` and ``encounter_key = "studyN"`` (the store scopes
encounters by patient, so repeating study numbers across patients is fine). Split = the table
("train" or "valid").

* XRAY per row: ``ViewPosition`` from ``AP/PA`` (AP, PA, LL, RL); a lateral image with no
  ``AP/PA`` value gets "LATERAL". ``frontal_lateral`` keeps the Frontal/Lateral column. A row
  whose image is absent points at the expected path (the engine quarantines it).
* RECORD per study: age (capped at 90) and sex (Male/Female/Unknown).
* LABELS per study: the 14 observations in all four states (1 → positive 1.0, 0 → negative 0.0,
  -1 → uncertain None, blank → not mentioned None), vocabulary "chexpert"; source report-derived
  for ``train`` (CheXpert labeler) and ground truth for ``valid`` (radiologist consensus). CheXpert
  labels are per study; the first frontal image's row is used (all rows of a study normally
  agree).
"""

from __future__ import annotations

import re
from collections.abc import Iterator, Mapping
from dataclasses import dataclass, field
from pathlib import Path, PurePosixPath

from clinic.ingest.errors import ReasonCode
from clinic.ingest.importers._common import (
    RowError,
    age_fields,
    chexpert_labels,
    error_item,
    guarded,
    is_missing,
    layout_error,
    map_sex,
    read_rows,
    require_dir,
    row_source,
)
from clinic.ingest.types import IngestItem, ItemKind, LabelSource

DATASET = "chexpert"
SPLITS: dict[str, LabelSource] = {
    "train": LabelSource.REPORT_DERIVED,
    "valid": LabelSource.GROUND_TRUTH,
}
_SEX = {"male": "male", "female": "female", "unknown": "unknown", "m": "male", "f": "female"}
_VIEWS = {"ap": "AP", "pa": "PA", "ll": "LL", "rl": "RL", "lateral": "LATERAL"}
_PATIENT = re.compile(r"^patient\d+$")
_STUDY = re.compile(r"^study\d+$")
_SPLIT_FOLDERS = frozenset({"train", "valid", "test"})
_REQUIRED = ("Path", "Sex", "Age", "Frontal/Lateral", "AP/PA")


@dataclass(frozen=True)
class _Image:
    """One row of a table with its resolved image path."""

    source: str
    values: Mapping[str, str]
    path: Path


@dataclass
class _Study:
    """The rows of one patient-study in one table."""

    patient_key: str
    encounter_key: str
    split: str
    images: list[_Image] = field(default_factory=list)

    def label_row(self) -> _Image:
        """The row whose labels stand for the study: the first frontal image, else the first."""
        for image in self.images:
            if image.values.get("Frontal/Lateral", "").lower() == "frontal":
                return image
        return self.images[0]


def import_chexpert(root: Path) -> Iterator[IngestItem]:
    """Items for every row of ``train.csv`` and ``valid.csv`` found in ``root``."""
    require_dir(root, DATASET)
    tables = [
        (split, root / f"{split}.csv") for split in SPLITS if (root / f"{split}.csv").is_file()
    ]
    if not tables:
        raise layout_error(DATASET, "neither train.csv nor valid.csv is in the import root")
    return _iter_items(root, tables)


def _iter_items(root: Path, tables: list[tuple[str, Path]]) -> Iterator[IngestItem]:
    """Per table and study: the images, then one RECORD and one LABELS item."""
    for split, table in tables:
        errors: list[IngestItem] = []
        studies = load_studies(root, split, table, errors)
        yield from errors
        for study in studies.values():
            for image in study.images:
                yield xray_item(study, image)
            source = study.label_row().source
            for kind, build in ((ItemKind.RECORD, record_item), (ItemKind.LABELS, labels_item)):
                yield guarded(kind, build, study, source, study.patient_key, study.encounter_key)


def load_studies(
    root: Path, split: str, table: Path, errors: list[IngestItem]
) -> dict[tuple[str, str], _Study]:
    """Rows grouped by (patient, study) in first-seen order; unusable paths go to ``errors``."""
    studies: dict[tuple[str, str], _Study] = {}
    for number, values in read_rows(table, _REQUIRED, DATASET):
        source = row_source(table, number)
        try:
            relative = _relative_path(values["Path"])
            patient, study = keys_from_path(relative)
        except RowError as error:
            errors.append(error_item(ItemKind.XRAY, source, error))
            continue
        entry = studies.setdefault((patient, study), _Study(patient, study, split))
        entry.images.append(_Image(source, values, resolve_image(root, relative)))
    return studies


def _relative_path(raw: str) -> PurePosixPath:
    """The ``Path`` cell as a relative path that cannot climb out of the dataset."""
    if is_missing(raw):
        raise RowError(ReasonCode.IMPORT_ROW_INVALID, "column Path is empty")
    relative = PurePosixPath(raw.replace("\\", "/"))
    if relative.is_absolute() or ".." in relative.parts:
        raise RowError(ReasonCode.IMPORT_ROW_INVALID, "column Path is not a relative path")
    return relative


def keys_from_path(relative: PurePosixPath) -> tuple[str, str]:
    """``(patientNNNNN, studyN)`` from the folders of an image path."""
    patient = next((part for part in relative.parts if _PATIENT.match(part)), None)
    study = next((part for part in relative.parts if _STUDY.match(part)), None)
    if patient is None or study is None:
        raise RowError(ReasonCode.RECORD_MISSING_ID, "column Path names no patient/study folder")
    return patient, study


def resolve_image(root: Path, relative: PurePosixPath) -> Path:
    """The image file: relative to the folder's parent, to the folder, or to a renamed folder.

    When no candidate exists the most plausible one is returned, for the engine to quarantine.
    """
    inner = PurePosixPath(*relative.parts[1:]) if len(relative.parts) > 1 else relative
    candidates = [root.parent / relative, root / relative, root / inner]
    for candidate in candidates:
        if candidate.is_file():
            return candidate
    if relative.parts[0] in _SPLIT_FOLDERS:
        return root / relative
    return root / inner


def view_position(values: Mapping[str, str]) -> str | None:
    """AP/PA/LL/RL from the ``AP/PA`` column; "LATERAL" for a lateral image without one."""
    raw = values.get("AP/PA", "")
    if not is_missing(raw):
        return _VIEWS.get(raw.lower(), raw.upper())
    if values.get("Frontal/Lateral", "").lower() == "lateral":
        return "LATERAL"
    return None


def xray_item(study: _Study, image: _Image) -> IngestItem:
    """One image with its view attributes and split."""
    fields: dict[str, object] = {}
    view = view_position(image.values)
    if view is not None:
        fields["ViewPosition"] = view
    frontal_lateral = image.values.get("Frontal/Lateral", "")
    if not is_missing(frontal_lateral):
        fields["frontal_lateral"] = frontal_lateral
    return IngestItem(
        kind=ItemKind.XRAY,
        source=str(image.path),
        path=image.path,
        patient_key=study.patient_key,
        encounter_key=study.encounter_key,
        fields=fields,
        split=study.split,
    )


def record_item(study: _Study) -> IngestItem:
    """Age and sex of the patient at this study."""
    row = study.label_row()
    fields: dict[str, object] = age_fields(row.values["Age"], "Age")
    fields["sex"] = map_sex(row.values["Sex"], _SEX)
    return IngestItem(
        kind=ItemKind.RECORD,
        source=row.source,
        patient_key=study.patient_key,
        encounter_key=study.encounter_key,
        fields=fields,
        split=study.split,
    )


def labels_item(study: _Study) -> IngestItem:
    """The study's 14 observations, sourced per table (labeler vs radiologists)."""
    row = study.label_row()
    return IngestItem(
        kind=ItemKind.LABELS,
        source=row.source,
        patient_key=study.patient_key,
        encounter_key=study.encounter_key,
        labels=chexpert_labels(row.values, SPLITS[study.split]),
        split=study.split,
    )
