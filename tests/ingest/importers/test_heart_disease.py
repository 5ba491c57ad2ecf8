"""UCI Heart Disease importer on the real file (as file and as folder) and a subset."""

from __future__ import annotations

import csv
from collections import Counter
from pathlib import Path

import pytest

from clinic.ingest.errors import IngestError, ReasonCode
from clinic.ingest.importers import import_error_of, import_heart_disease
from clinic.ingest.types import ItemKind, LabelState


@pytest.fixture(scope="module")
def heart_csv(shared_data: Path) -> Path:
    return shared_data / "heart-disease-uci" / "heart_disease_uci.csv"


def _rows(path: Path) -> list[dict[str, str]]:
    with path.open(encoding="utf-8", newline="") as handle:
        return list(csv.DictReader(handle))


def test_whole_file_as_file_and_as_folder(heart_csv: Path) -> None:
    rows = _rows(heart_csv)
    from_file = list(import_heart_disease(heart_csv))
    assert from_file == list(import_heart_disease(heart_csv.parent))
    assert Counter(item.kind for item in from_file) == {
        ItemKind.RECORD: len(rows),
        ItemKind.LABELS: len(rows),
    }
    assert not [item for item in from_file if import_error_of(item)]
    records = [item for item in from_file if item.kind is ItemKind.RECORD]
    labels = [item for item in from_file if item.kind is ItemKind.LABELS]
    for row, record, label_item in zip(rows, records, labels, strict=True):
        assert record.patient_key == f"{row['dataset']}-{row['id']}" == label_item.patient_key
        fields = record.fields
        assert fields["sex"] == row["sex"].lower()
        assert fields["age_years"] == float(row["age"])
        assert "heart_rate_bpm" not in fields  # thalch is the exercise maximum, not resting
        expected_max = float(row["thalch"]) if row["thalch"] else None
        assert fields["max_heart_rate_bpm"] == expected_max
        expected_sbp = float(row["trestbps"]) if row["trestbps"] not in ("", "0") else None
        assert fields["systolic_bp_mmhg"] == expected_sbp
        if row["chol"] == "0":
            assert fields["cholesterol_mg_dl"] is None
        by_name = {label.name: label for label in label_item.labels}
        grade = float(row["num"])
        assert by_name["heart_disease_grade"].value == grade
        assert by_name["heart_disease"].value == (1.0 if grade > 0 else 0.0)
        assert by_name["heart_disease"].state is (
            LabelState.POSITIVE if grade > 0 else LabelState.NEGATIVE
        )


def test_subset_with_bad_rows(heart_csv: Path, tmp_path: Path) -> None:
    rows = _rows(heart_csv)
    subset = [rows[0], rows[300], rows[-1], dict(rows[1]), dict(rows[2])]
    subset[3]["num"] = "7"
    subset[4]["id"] = ""
    target = tmp_path / "heart_disease_uci.csv"
    with target.open("w", encoding="utf-8", newline="") as handle:
        writer = csv.DictWriter(handle, fieldnames=list(rows[0]))
        writer.writeheader()
        writer.writerows(subset)
    items = list(import_heart_disease(tmp_path))
    assert len(items) == 4 * 2 + 1
    reasons = [error[0] for item in items if (error := import_error_of(item))]
    assert reasons == [ReasonCode.IMPORT_LABELS_INVALID, ReasonCode.RECORD_MISSING_ID]
    assert {item.patient_key for item in items} >= {
        f"{rows[300]['dataset']}-{rows[300]['id']}",
        f"{rows[-1]['dataset']}-{rows[-1]['id']}",
    }


def test_missing_file_is_a_layout_error(tmp_path: Path) -> None:
    with pytest.raises(IngestError) as raised:
        import_heart_disease(tmp_path)
    assert raised.value.reason is ReasonCode.IMPORT_LAYOUT_INVALID
