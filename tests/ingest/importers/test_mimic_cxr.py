"""MIMIC-CXR-JPG importer on fixtures in the published layout (real images and report text)."""

from __future__ import annotations

import csv
import gzip
import io
import shutil
import zipfile
from collections import Counter
from pathlib import Path

import pytest

from clinic.ingest.errors import IngestError, ReasonCode
from clinic.ingest.importers import import_error_of, import_mimic_cxr
from clinic.ingest.types import IngestItem, ItemKind, LabelSource, LabelState
from schemas.labels import CHEXPERT_OBSERVATIONS
from tests.ingest.importers.fixtures import build_mimic_cxr_fixture, label_value

N_STUDIES = 6


@pytest.fixture
def mimic(tmp_path: Path) -> Path:
    return build_mimic_cxr_fixture(tmp_path, N_STUDIES)


def _table(path: Path) -> list[dict[str, str]]:
    data = path.read_bytes()
    text = gzip.decompress(data).decode() if path.name.endswith(".gz") else data.decode()
    return list(csv.DictReader(io.StringIO(text)))


def _of_kind(items: list[IngestItem], kind: ItemKind) -> list[IngestItem]:
    return [item for item in items if item.kind is kind]


def test_images_views_splits_and_missing_jpg(mimic: Path) -> None:
    metadata = _table(mimic / "mimic-cxr-2.0.0-metadata.csv.gz")
    splits = {
        row["dicom_id"]: row["split"] for row in _table(mimic / "mimic-cxr-2.0.0-split.csv.gz")
    }
    items = list(import_mimic_cxr(mimic))
    assert not [item for item in items if import_error_of(item)]
    xrays = _of_kind(items, ItemKind.XRAY)
    assert len(xrays) == len(metadata)
    for row, item in zip(metadata, xrays, strict=True):
        assert item.path is not None and item.path.stem == row["dicom_id"]
        assert item.path.parent.name == "s" + row["study_id"]
        assert item.path.parent.parent.name == "p" + row["subject_id"]
        assert item.fields["ViewPosition"] == row["ViewPosition"]
        assert item.split == splits[row["dicom_id"]]
        assert item.patient_key == row["subject_id"] and item.encounter_key == "s" + row["study_id"]
        assert "StudyDate" not in item.fields
    missing = [item for item in xrays if item.path is not None and not item.path.exists()]
    assert len(missing) == 1 and missing[0] is xrays[-1]
    assert {item.fields["ViewPosition"] for item in xrays} == {"PA", "AP", "LATERAL"}
    assert {item.split for item in xrays} == {"train", "validate", "test"}


def test_reports_and_four_label_states(mimic: Path) -> None:
    items = list(import_mimic_cxr(mimic))
    reports = _of_kind(items, ItemKind.REPORT)
    assert len(reports) == N_STUDIES
    for report in reports:
        assert report.path is not None and report.path.is_file()
        assert report.path.name == f"{report.encounter_key}.txt"
        assert "FINDINGS:" in report.path.read_text()
        assert report.fields == {"report_kind": "radiology", "language": "en"}
    labelled = _of_kind(items, ItemKind.LABELS)
    assert len(labelled) == N_STUDIES
    states = Counter[LabelState]()
    for index, item in enumerate(labelled):
        assert [label.name for label in item.labels] == list(CHEXPERT_OBSERVATIONS)
        for j, label in enumerate(item.labels):
            assert label.vocabulary == "chexpert" and label.source is LabelSource.REPORT_DERIVED
            expected = {
                "1.0": (LabelState.POSITIVE, 1.0),
                "0.0": (LabelState.NEGATIVE, 0.0),
                "-1.0": (LabelState.UNCERTAIN, None),
                "": (LabelState.NOT_MENTIONED, None),
            }
            assert (label.state, label.value) == expected[label_value(index, j)]
            states[label.state] += 1
    assert set(states) == set(LabelState)


def test_items_are_grouped_per_study(mimic: Path) -> None:
    kinds = [(item.encounter_key, item.kind) for item in import_mimic_cxr(mimic)]
    first_study = kinds[0][0]
    expected = (ItemKind.XRAY, ItemKind.XRAY, ItemKind.REPORT, ItemKind.LABELS)
    assert kinds[:4] == [(first_study, kind) for kind in expected]


def test_reports_in_a_separate_reports_tree(mimic: Path) -> None:
    target = mimic / "mimic-cxr-reports" / "files"
    for report in sorted((mimic / "files").glob("p*/p*/s*.txt")):
        moved = target / report.relative_to(mimic / "files")
        moved.parent.mkdir(parents=True, exist_ok=True)
        shutil.move(report, moved)
    reports = _of_kind(list(import_mimic_cxr(mimic)), ItemKind.REPORT)
    assert len(reports) == N_STUDIES
    assert all(item.path is not None and target in item.path.parents for item in reports)


def test_reports_from_the_zip(mimic: Path) -> None:
    with zipfile.ZipFile(mimic / "mimic-cxr-reports.zip", "w") as archive:
        for report in sorted((mimic / "files").glob("p*/p*/s*.txt")):
            archive.write(report, "files/" + report.relative_to(mimic / "files").as_posix())
            report.unlink()
    reports = _of_kind(list(import_mimic_cxr(mimic)), ItemKind.REPORT)
    assert len(reports) == N_STUDIES
    assert all(item.path is None and "FINDINGS:" in (item.text or "") for item in reports)


def test_without_reports_and_without_metadata(mimic: Path) -> None:
    for report in (mimic / "files").glob("p*/p*/s*.txt"):
        report.unlink()
    (mimic / "mimic-cxr-2.0.0-metadata.csv.gz").unlink()
    items = list(import_mimic_cxr(mimic))
    xrays = _of_kind(items, ItemKind.XRAY)
    on_disk = sorted((mimic / "files").glob("p*/p*/s*/*.jpg"))
    assert sorted(item.path for item in xrays if item.path) == on_disk
    assert all("ViewPosition" not in item.fields and item.split for item in xrays)
    assert not _of_kind(items, ItemKind.REPORT)
    studies_on_disk = {path.parent.name for path in on_disk}
    assert {item.encounter_key for item in _of_kind(items, ItemKind.LABELS)} == studies_on_disk


def test_label_rows_without_images_are_skipped_and_bad_values_refused(mimic: Path) -> None:
    table = mimic / "mimic-cxr-2.0.0-chexpert.csv"
    rows = _table(table)
    rows[0]["Edema"] = "2"
    rows.append({**rows[1], "subject_id": "19999999", "study_id": "59999999"})
    with table.open("w", encoding="utf-8", newline="") as handle:
        writer = csv.DictWriter(handle, fieldnames=list(rows[0]))
        writer.writeheader()
        writer.writerows(rows)
    labelled = _of_kind(list(import_mimic_cxr(mimic)), ItemKind.LABELS)
    assert len(labelled) == N_STUDIES
    error = import_error_of(labelled[0])
    assert error is not None and error[0] is ReasonCode.IMPORT_LABELS_INVALID


def test_not_a_mimic_root(tmp_path: Path) -> None:
    with pytest.raises(IngestError) as raised:
        import_mimic_cxr(tmp_path)
    assert raised.value.reason is ReasonCode.IMPORT_LAYOUT_INVALID
