"""Hannover COVID-19 CXR importer on the real subset and on a smaller edited copy."""

from __future__ import annotations

import csv
import shutil
from collections import Counter
from pathlib import Path

import pytest

from clinic.ingest.errors import IngestError, ReasonCode
from clinic.ingest.importers import import_error_of, import_hannover
from clinic.ingest.types import IngestItem, ItemKind, LabelState


@pytest.fixture(scope="module")
def hannover_root(shared_data: Path) -> Path:
    return shared_data / "hannover-cxr"


def _rows(root: Path) -> list[dict[str, str]]:
    with (root / "data.csv").open(encoding="utf-8", newline="") as handle:
        return list(csv.DictReader(handle))


def _index(items: list[IngestItem]) -> dict[tuple[str, ItemKind], IngestItem]:
    return {(str(item.encounter_key), item.kind): item for item in items}


def test_whole_real_subset(hannover_root: Path) -> None:
    rows = _rows(hannover_root)
    items = list(import_hannover(hannover_root))
    assert Counter(item.kind for item in items) == {
        ItemKind.XRAY: len(rows),
        ItemKind.RECORD: len(rows),
        ItemKind.LABELS: len(rows),
    }
    assert not [item for item in items if import_error_of(item)]
    index = _index(items)
    for row in rows:
        xray = index[(row["image_id"], ItemKind.XRAY)]
        assert xray.path is not None and xray.path.is_file()
        assert xray.path.name == row["image_id"] + ".png"
        assert xray.patient_key == row["patient_id"]
        assert xray.fields == {
            "ViewPosition": row["projection"].upper(),
            "Modality": row["modality"],
        }
        assert xray.acquired_offset_days == -float(row["admission_offset"])
        record = index[(row["image_id"], ItemKind.RECORD)]
        assert record.fields["sex"] == {"m": "male", "f": "female"}[row["sex"]]
        if row["crp_val"] in ("inf", "-inf"):
            assert record.fields["crp_val"] is None
            side = "below" if row["crp_val"] == "-inf" else "above"
            assert record.fields["crp_censored"] == f"{side}_detection_limit"
        elif row["crp_val"]:
            assert record.fields["crp_val"] == float(row["crp_val"])
            assert record.fields["crp_offset_days"] == float(row["crp_offset"])
        assert "crp_mg_l" not in record.fields  # binned, possibly days away: extras only
        labels = {label.name: label for label in index[(row["image_id"], ItemKind.LABELS)].labels}
        assert labels["icu_admission"].value == (1.0 if row["icu_admission_offset"] else 0.0)
        assert labels["death"].state is (
            LabelState.POSITIVE if row["death_offset"] else LabelState.NEGATIVE
        )
        assert {label.vocabulary for label in labels.values()} == {"hannover"}


def test_subset_with_missing_png_and_edge_values(hannover_root: Path, tmp_path: Path) -> None:
    rows = _rows(hannover_root)[:5]
    subset = tmp_path / "hannover"
    (subset / "png").mkdir(parents=True)
    for row in rows[1:]:
        name = row["image_id"] + ".png"
        shutil.copy(hannover_root / "png" / name, subset / "png" / name)
    rows[1]["sex"] = "w"
    rows[1]["age"] = "61-70"
    rows[2]["crp_val"] = "-inf"
    rows[2]["crp_offset"] = "0.0"
    rows[3]["image_id"] = "../escape"
    with (subset / "data.csv").open("w", encoding="utf-8", newline="") as handle:
        writer = csv.DictWriter(handle, fieldnames=list(rows[0]))
        writer.writeheader()
        writer.writerows(rows)
    items = list(import_hannover(subset))
    assert len(items) == 3 * 4 + 1
    missing = items[0]
    assert missing.kind is ItemKind.XRAY and missing.path is not None
    assert not missing.path.exists() and missing.path.parent == subset / "png"
    record = _index(items)[(rows[1]["image_id"], ItemKind.RECORD)]
    assert record.fields["sex"] == "female"
    assert record.fields["age_years"] is None and record.fields["age_bin"] == "61-70"
    censored = _index(items)[(rows[2]["image_id"], ItemKind.RECORD)]
    assert censored.fields["crp_val"] is None
    assert censored.fields["crp_censored"] == "below_detection_limit"
    refused = [import_error_of(item) for item in items if import_error_of(item)]
    assert refused and refused[0] is not None and refused[0][0] is ReasonCode.IMPORT_ROW_INVALID


def test_layout_without_png_folder_is_refused(tmp_path: Path, hannover_root: Path) -> None:
    shutil.copy(hannover_root / "data.csv", tmp_path / "data.csv")
    with pytest.raises(IngestError) as raised:
        import_hannover(tmp_path)
    assert raised.value.reason is ReasonCode.IMPORT_LAYOUT_INVALID
