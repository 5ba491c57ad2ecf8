"""Indiana University report importer on the real reports and a reports-only subset."""

from __future__ import annotations

import csv
from collections import Counter
from pathlib import Path

import pytest

from clinic.ingest.importers import import_error_of, import_iu
from clinic.ingest.importers.iu import mesh_headings
from clinic.ingest.types import IngestItem, ItemKind, LabelSource


@pytest.fixture(scope="module")
def iu_root(shared_data: Path) -> Path:
    return shared_data / "iu-reports"


def _rows(root: Path) -> list[dict[str, str]]:
    with (root / "indiana_reports.csv").open(encoding="utf-8", newline="") as handle:
        return list(csv.DictReader(handle))


def _index(items: list[IngestItem]) -> dict[tuple[str, ItemKind], IngestItem]:
    return {(str(item.encounter_key), item.kind): item for item in items}


def test_whole_real_collection(iu_root: Path) -> None:
    rows = _rows(iu_root)
    items = list(import_iu(iu_root))
    assert Counter(item.kind for item in items) == {
        ItemKind.REPORT: len(rows),
        ItemKind.LABELS: len(rows),
    }
    assert not [item for item in items if import_error_of(item)]
    index = _index(items)
    for row in rows:
        key = "iu" + row["uid"]
        report = index[(key, ItemKind.REPORT)]
        assert report.patient_key == key and report.fields["report_kind"] == "radiology"
        text = report.text or ""
        for title, column in (("FINDINGS", "findings"), ("IMPRESSION", "impression")):
            assert (f"{title}: " in text) == bool(row[column].strip())
        labels = index[(key, ItemKind.LABELS)]
        mesh = {label.name for label in labels.labels if label.vocabulary == "iu_mesh"}
        assert mesh == {t.split("/")[0].strip() for t in row["MeSH"].split(";")} - {"No Indexing"}
        assert all(label.source is LabelSource.REPORT_DERIVED for label in labels.labels)
        if row["MeSH"] == "normal":
            assert {(lab.name, lab.vocabulary) for lab in labels.labels} == {
                ("normal", "iu_mesh"),
                ("normal", "iu_problems"),
            }
        if row["MeSH"] == "No Indexing":
            assert labels.labels == () and labels.fields["indexed"] is False


def test_report_text_and_views(iu_root: Path) -> None:
    index = _index(list(import_iu(iu_root)))
    first = index[("iu1", ItemKind.REPORT)]
    assert (first.text or "").splitlines()[0] == "INDICATION: Positive TB test"
    assert first.fields["views"] == ["Frontal", "Lateral"]
    assert first.fields["image_files"][0].startswith("1_IM-")
    third = index[("iu3", ItemKind.REPORT)]
    assert "COMPARISON" not in (third.text or "") and "FINDINGS" not in (third.text or "")
    qualifiers = index[("iu2", ItemKind.LABELS)].fields["mesh_qualifiers"]
    assert qualifiers == {"Cardiomegaly": ["borderline"], "Pulmonary Artery": ["enlarged"]}


def test_reports_only_subset(iu_root: Path, tmp_path: Path) -> None:
    rows = _rows(iu_root)[:7]
    rows[6] = {**rows[6], "indication": "", "comparison": "", "findings": "", "impression": ""}
    with (tmp_path / "indiana_reports.csv").open("w", encoding="utf-8", newline="") as handle:
        writer = csv.DictWriter(handle, fieldnames=list(rows[0]))
        writer.writeheader()
        writer.writerows(rows)
    items = list(import_iu(tmp_path))
    assert len(items) == 14
    reports = [item for item in items if item.kind is ItemKind.REPORT]
    assert all("views" not in item.fields for item in reports)
    assert reports[-1].text == ""  # the engine quarantines it as REPORT_EMPTY


def test_mesh_headings_keep_qualifiers_once() -> None:
    parsed = mesh_headings("Opacity/lung/apex;Opacity/lung/apex; Opacity/bilateral;No Indexing")
    assert parsed == {"Opacity": ["lung/apex", "bilateral"]}
