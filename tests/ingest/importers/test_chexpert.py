"""CheXpert importer on fixtures in the published layout (real images)."""

from __future__ import annotations

import csv
from collections import Counter
from pathlib import Path

import pytest

from clinic.ingest.errors import IngestError, ReasonCode
from clinic.ingest.importers import import_chexpert, import_error_of
from clinic.ingest.types import IngestItem, ItemKind, LabelSource, LabelState
from schemas.labels import CHEXPERT_OBSERVATIONS
from tests.ingest.importers.fixtures import build_chexpert_fixture

N_PATIENTS = 5


@pytest.fixture
def chexpert(tmp_path: Path) -> Path:
    return build_chexpert_fixture(tmp_path, N_PATIENTS)


def _rows(path: Path) -> list[dict[str, str]]:
    with path.open(encoding="utf-8", newline="") as handle:
        return list(csv.DictReader(handle))


def _of_kind(items: list[IngestItem], kind: ItemKind) -> list[IngestItem]:
    return [item for item in items if item.kind is kind]


def test_rows_studies_views_and_splits(chexpert: Path) -> None:
    train, valid = _rows(chexpert / "train.csv"), _rows(chexpert / "valid.csv")
    items = list(import_chexpert(chexpert))
    assert not [item for item in items if import_error_of(item)]
    xrays = _of_kind(items, ItemKind.XRAY)
    assert len(xrays) == len(train) + len(valid)
    for row, item in zip([*train, *valid], xrays, strict=True):
        assert item.path == chexpert.parent / row["Path"]
        parts = Path(row["Path"]).parts
        assert item.split == parts[1] and item.patient_key == parts[2]
        assert item.encounter_key == parts[3]
        assert item.fields["frontal_lateral"] == row["Frontal/Lateral"]
        assert item.fields["ViewPosition"] == (row["AP/PA"] or "LATERAL")
    missing = [item for item in xrays if item.path is not None and not item.path.exists()]
    assert len(missing) == 1 and missing[0].split == "train"
    studies = {(Path(row["Path"]).parts[2], Path(row["Path"]).parts[3]) for row in [*train, *valid]}
    assert len(_of_kind(items, ItemKind.RECORD)) == len(studies)
    assert len(_of_kind(items, ItemKind.LABELS)) == len(studies)


def test_records_age_and_sex(chexpert: Path) -> None:
    records = _of_kind(list(import_chexpert(chexpert)), ItemKind.RECORD)
    by_patient = {item.patient_key: item.fields for item in records}
    assert by_patient["patient00001"]["age_years"] == 90.0
    assert by_patient["patient00001"]["age_90_or_over"] is True
    assert {fields["sex"] for fields in by_patient.values()} == {"male", "female", "unknown"}


def test_label_states_and_sources_per_split(chexpert: Path) -> None:
    labelled = _of_kind(list(import_chexpert(chexpert)), ItemKind.LABELS)
    states = Counter[LabelState]()
    for item in labelled:
        assert [label.name for label in item.labels] == list(CHEXPERT_OBSERVATIONS)
        expected = LabelSource.REPORT_DERIVED if item.split == "train" else LabelSource.GROUND_TRUTH
        assert {label.source for label in item.labels} == {expected}
        for label in item.labels:
            states[label.state] += 1
            if label.state in (LabelState.UNCERTAIN, LabelState.NOT_MENTIONED):
                assert label.value is None and item.split == "train"
            else:
                assert label.value == (1.0 if label.state is LabelState.POSITIVE else 0.0)
    assert set(states) == set(LabelState)
    assert any(item.split == "valid" for item in labelled)


def test_paths_relative_to_the_dataset_folder_resolve(chexpert: Path) -> None:
    table = chexpert / "train.csv"
    rows = _rows(table)
    for row in rows:
        row["Path"] = row["Path"].split("/", 1)[1]
    with table.open("w", encoding="utf-8", newline="") as handle:
        writer = csv.DictWriter(handle, fieldnames=list(rows[0]))
        writer.writeheader()
        writer.writerows(rows)
    xrays = [i for i in import_chexpert(chexpert) if i.kind is ItemKind.XRAY and i.split == "train"]
    assert [item.path for item in xrays] == [chexpert / row["Path"] for row in rows]
    assert sum(item.path is not None and item.path.is_file() for item in xrays) == len(rows) - 1


def test_renamed_dataset_folder_and_bad_paths(chexpert: Path) -> None:
    renamed = chexpert.rename(chexpert.parent / "chexpert-local")
    table = renamed / "valid.csv"
    rows = _rows(table)
    rows.append({**rows[0], "Path": "../../etc/passwd"})
    with table.open("w", encoding="utf-8", newline="") as handle:
        writer = csv.DictWriter(handle, fieldnames=list(rows[0]))
        writer.writeheader()
        writer.writerows(rows)
    items = list(import_chexpert(renamed))
    valid = [i for i in items if i.kind is ItemKind.XRAY and i.split == "valid"]
    assert valid and all(item.path is not None and item.path.is_file() for item in valid)
    errors = [error for item in items if (error := import_error_of(item))]
    assert [reason for reason, _ in errors] == [ReasonCode.IMPORT_ROW_INVALID]


def test_not_a_chexpert_root(tmp_path: Path) -> None:
    with pytest.raises(IngestError) as raised:
        import_chexpert(tmp_path)
    assert raised.value.reason is ReasonCode.IMPORT_LAYOUT_INVALID
