"""PTB-XL importer on the real subset and on smaller subsets copied from it."""

from __future__ import annotations

import ast
import csv
import shutil
from collections import Counter
from pathlib import Path

import pytest

from clinic.ingest.errors import IngestError, ReasonCode
from clinic.ingest.importers import import_error_of, import_ptbxl
from clinic.ingest.importers._common import RowError
from clinic.ingest.importers.ptbxl import (
    detect_language,
    likelihood_uncertainty,
    parse_scp_codes,
)
from clinic.ingest.types import IngestItem, ItemKind, LabelState


@pytest.fixture(scope="module")
def ptbxl_root(shared_data: Path) -> Path:
    return shared_data / "ptbxl"


def _rows(root: Path) -> list[dict[str, str]]:
    with (root / "ptbxl_database.csv").open(encoding="utf-8", newline="") as handle:
        return list(csv.DictReader(handle))


def _superclasses_independently(root: Path, scp_codes: str) -> set[str]:
    """The PTB-XL reference aggregation, recomputed here without the importer's code."""
    with (root / "scp_statements.csv").open(encoding="utf-8", newline="") as handle:
        statements = {row[""]: row for row in csv.DictReader(handle)}
    classes = set()
    for code in ast.literal_eval(scp_codes):
        statement = statements.get(code)
        if statement and statement["diagnostic"] == "1.0":
            classes.add(statement["diagnostic_class"])
    return classes


def _by_encounter(items: list[IngestItem]) -> dict[tuple[str, ItemKind], IngestItem]:
    return {(str(item.encounter_key), item.kind): item for item in items}


def test_whole_real_subset_imports_four_items_per_row(ptbxl_root: Path) -> None:
    rows = _rows(ptbxl_root)
    items = list(import_ptbxl(ptbxl_root))
    assert Counter(item.kind for item in items) == {
        kind: len(rows)
        for kind in (ItemKind.ECG, ItemKind.RECORD, ItemKind.REPORT, ItemKind.LABELS)
    }
    assert not [item for item in items if import_error_of(item)]
    index = _by_encounter(items)
    for row in rows:
        key = "ecg" + row["ecg_id"]
        ecg, record = index[(key, ItemKind.ECG)], index[(key, ItemKind.RECORD)]
        assert ecg.path is not None and ecg.path.is_file() and ecg.path.suffix == ".hea"
        assert ecg.path.name == Path(row["filename_hr"]).name + ".hea"
        assert ecg.patient_key == str(int(float(row["patient_id"])))
        assert ecg.split == row["strat_fold"] and ecg.fields["strat_fold"] == int(row["strat_fold"])
        assert record.fields["sex"] == {"0": "male", "1": "female"}[row["sex"]]
        assert "recording_date" not in record.fields and "nurse" not in record.fields
        report = index[(key, ItemKind.REPORT)]
        assert report.text == row["report"].strip()
        assert report.fields["report_kind"] == "ecg"


def test_superclasses_match_an_independent_aggregation(ptbxl_root: Path) -> None:
    rows = _rows(ptbxl_root)
    index = _by_encounter(list(import_ptbxl(ptbxl_root)))
    checked = Counter[str]()
    for row in rows:
        labels = index[("ecg" + row["ecg_id"], ItemKind.LABELS)].labels
        superclass = {
            label.name: label for label in labels if label.vocabulary == "ptbxl_superclass"
        }
        assert set(superclass) == {"NORM", "MI", "STTC", "CD", "HYP"}
        expected = _superclasses_independently(ptbxl_root, row["scp_codes"])
        for name, label in superclass.items():
            positive = name in expected
            assert label.state is (LabelState.POSITIVE if positive else LabelState.NEGATIVE)
            assert label.value == (1.0 if positive else 0.0)
            checked[name] += positive
        scp = {label.name: label for label in labels if label.vocabulary == "scp"}
        assert set(scp) == set(ast.literal_eval(row["scp_codes"]))
    assert all(checked[name] > 0 for name in ("NORM", "MI", "STTC", "CD", "HYP"))


def test_likelihoods_become_uncertainty_and_zero_is_unknown(ptbxl_root: Path) -> None:
    index = _by_encounter(list(import_ptbxl(ptbxl_root)))
    labels = {
        label.name: label
        for label in index[("ecg1", ItemKind.LABELS)].labels
        if label.vocabulary == "scp"
    }
    first = ast.literal_eval(_rows(ptbxl_root)[0]["scp_codes"])
    for code, likelihood in first.items():
        assert labels[code].state is LabelState.POSITIVE and labels[code].value == 1.0
        if likelihood == 0:
            assert labels[code].uncertainty is None
        else:
            assert labels[code].uncertainty == pytest.approx(1 - likelihood / 100)
    assert likelihood_uncertainty(80.0) == pytest.approx(0.2)
    assert likelihood_uncertainty(0.0) is None


def test_ages_over_89_are_capped_at_90(ptbxl_root: Path) -> None:
    rows = {row["ecg_id"]: row for row in _rows(ptbxl_root)}
    for item in import_ptbxl(ptbxl_root):
        if item.kind is not ItemKind.RECORD:
            continue
        raw = rows[str(item.encounter_key)[3:]]["age"]
        age = item.fields["age_years"]
        if raw == "":
            assert age is None
        elif float(raw) >= 90:
            assert age == 90.0 and item.fields["age_90_or_over"] is True
        else:
            assert age == float(raw) and "age_90_or_over" not in item.fields


def _copy_subset(source: Path, target: Path, count: int) -> list[dict[str, str]]:
    """The first ``count`` rows with their record files; returns the rows written."""
    target.mkdir()
    shutil.copy(source / "scp_statements.csv", target / "scp_statements.csv")
    with (source / "ptbxl_database.csv").open(encoding="utf-8", newline="") as handle:
        reader = csv.DictReader(handle)
        header = list(reader.fieldnames or [])
        rows = [row for _, row in zip(range(count), reader, strict=False)]
    for row in rows:
        for column in ("filename_hr", "filename_lr"):
            for suffix in (".hea", ".dat"):
                file = target / (row[column] + suffix)
                file.parent.mkdir(parents=True, exist_ok=True)
                shutil.copy(source / (row[column] + suffix), file)
    _write_rows(target, header, rows)
    return rows


def _write_rows(target: Path, header: list[str], rows: list[dict[str, str]]) -> None:
    with (target / "ptbxl_database.csv").open("w", encoding="utf-8", newline="") as handle:
        writer = csv.DictWriter(handle, fieldnames=header)
        writer.writeheader()
        writer.writerows(rows)


def test_subset_prefers_500hz_falls_back_to_100hz_and_keeps_missing(
    ptbxl_root: Path, tmp_path: Path
) -> None:
    subset = tmp_path / "ptbxl"
    rows = _copy_subset(ptbxl_root, subset, 5)
    (subset / (rows[1]["filename_hr"] + ".hea")).unlink()  # only 100 Hz left
    (subset / (rows[2]["filename_hr"] + ".dat")).unlink()  # 500 Hz incomplete
    for column in ("filename_hr", "filename_lr"):  # nothing left
        for suffix in (".hea", ".dat"):
            (subset / (rows[3][column] + suffix)).unlink()
    ecgs = [item for item in import_ptbxl(subset) if item.kind is ItemKind.ECG]
    assert len(ecgs) == 5
    assert ecgs[0].fields["record_resolution"] == "hr" and ecgs[0].path is not None
    assert ecgs[0].path.is_file()
    assert ecgs[1].fields["record_resolution"] == "lr"
    assert ecgs[2].fields["record_resolution"] == "lr"
    assert ecgs[3].path is not None and not ecgs[3].path.exists()
    assert ecgs[3].path == subset / (rows[3]["filename_hr"] + ".hea")


def test_subset_with_edge_rows(ptbxl_root: Path, tmp_path: Path) -> None:
    subset = tmp_path / "ptbxl"
    rows = _copy_subset(ptbxl_root, subset, 4)
    rows[0]["age"] = "300"
    rows[1]["scp_codes"] = "__import__('os').system('true')"
    rows[2]["patient_id"] = ""
    rows[3]["height"] = "tall"
    rows[0]["filename_lr"] = "../../outside"
    _write_rows(subset, list(rows[0]), rows)
    items = list(import_ptbxl(subset))
    record0 = next(i for i in items if i.kind is ItemKind.RECORD and i.source.endswith("row=1"))
    assert record0.fields["age_years"] == 90.0 and record0.fields["age_90_or_over"] is True
    errors = {
        (item.source.rsplit("=", 1)[1], item.kind): error
        for item in items
        if (error := import_error_of(item)) is not None
    }
    assert errors[("2", ItemKind.LABELS)][0] is ReasonCode.IMPORT_LABELS_INVALID
    assert errors[("3", ItemKind.ECG)][0] is ReasonCode.RECORD_MISSING_ID
    assert errors[("4", ItemKind.RECORD)][0] is ReasonCode.IMPORT_ROW_INVALID
    assert "tall" not in errors[("4", ItemKind.RECORD)][1]
    assert errors[("1", ItemKind.ECG)][0] is ReasonCode.IMPORT_ROW_INVALID
    assert len(items) == 4 * 3 + 1  # the row without patient id yields one error item


def test_missing_layout_is_refused_before_iterating(tmp_path: Path) -> None:
    with pytest.raises(IngestError) as raised:
        import_ptbxl(tmp_path)
    assert raised.value.reason is ReasonCode.IMPORT_LAYOUT_INVALID


@pytest.mark.parametrize(
    "text",
    ["[1, 2]", "{'A': 'x'}", "{'A': True}", "{'A': 101}", "{1: 50}", "print(1)", "{'A': 1"],
)
def test_scp_codes_parsing_is_strict(text: str) -> None:
    with pytest.raises(RowError):
        parse_scp_codes(text)


def test_scp_codes_parsing_accepts_dicts() -> None:
    assert parse_scp_codes("{'NORM': 100.0, 'SR': 0}") == {"NORM": 100.0, "SR": 0.0}
    assert parse_scp_codes("") == {}


def test_language_detection() -> None:
    assert detect_language("sinusrhythmus normales ekg") == "de"
    assert detect_language("sinus rhythm. normal ecg.") == "en"
    assert detect_language("sinusrytm vÄnster kammarhypertrofi") == "sv"
    assert detect_language("") is None
