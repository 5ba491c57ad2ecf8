"""Cohort report: files, self-contained escaped HTML, numbers checked against independent code."""

from __future__ import annotations

import base64
import json
import re
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd
import pytest
from sklearn.metrics import average_precision_score, roc_auc_score

from clinic.evaluation.metrics import auroc, bootstrap_ci, expected_calibration_error
from clinic.reports.cohort_report import (
    CohortReportFiles,
    ReportSettings,
    age_bands,
    precision_recall_points,
    roc_points,
    write_cohort_report,
)

RARE = 'rare <u>&"$'  # markup, quotes and a matplotlib mathtext sign
LABELS = ("MI", "AF", RARE)
TITLE = "Cohort <script>alert(1)</script> & co"
MODEL = {
    "name": "demo<model>",
    "adapter": None,
    "lineage": {"weights": "a" * 64, "calibration": "b" * 64},
}
SETTINGS = ReportSettings(n_resamples=60, min_cases=10, n_bins=10, seed=3)
STAMP = datetime(2026, 11, 30, 12, 0, tzinfo=UTC)
PNG_SIGNATURE = b"\x89PNG\r\n\x1a\n"
DATA_URI = re.compile(r"data:image/png;base64,([A-Za-z0-9+/=]+)")


def _cohort(n_patients: int = 90, seed: int = 0) -> pd.DataFrame:
    """Patients with 1–3 cases each; MI and AF informative, the rare label never positive."""
    rng = np.random.default_rng(seed)
    patients = np.repeat(np.arange(n_patients), 1 + np.arange(n_patients) % 3)
    n = len(patients)
    frame = pd.DataFrame(
        {
            "case_id": [f"E{i:05x}" for i in range(n)],
            "patient_id": [f"P{p:04x}" for p in patients],
            "subset": rng.choice(["xray", "ecg", "xray+ecg"], n),
            "sex": np.array(["female", "male", None], dtype=object)[patients % 3],
            "age_years": np.array([25.0, 45.0, 65.0, 85.0, np.nan])[patients % 5],
        }
    )
    frame.loc[:3, "subset"] = "report"  # four cases: below min_cases
    for k, label in enumerate(LABELS):
        y = (rng.random(n) < (0.35, 0.45, 0.0)[k]).astype(np.float64)
        frame[f"p:{label}"] = np.clip(0.35 * y + 0.65 * rng.random(n), 0.0, 1.0)
        y[rng.random(n) < 0.15] = np.nan
        frame[f"abstain:{label}"] = rng.random(n) < 0.12
        frame[f"y:{label}"] = y
    return frame


@dataclass(frozen=True)
class Written:
    frame: pd.DataFrame
    files: CohortReportFiles
    page: str
    summary: dict[str, Any]


def _strict_json(text: str) -> Any:
    def refuse(constant: str) -> None:
        raise AssertionError(f"non-strict JSON constant {constant}")

    return json.loads(text, parse_constant=refuse)


def _write(frame: pd.DataFrame, out_dir: Path, labels: tuple[str, ...] = LABELS) -> Written:
    files = write_cohort_report(
        frame, labels, out_dir, title=TITLE, model=MODEL, settings=SETTINGS, generated_at=STAMP
    )
    summary = _strict_json(files.summary.read_text(encoding="utf-8"))
    return Written(frame, files, files.html.read_text(encoding="utf-8"), summary)


@pytest.fixture(scope="module")
def written(tmp_path_factory: pytest.TempPathFactory) -> Written:
    return _write(_cohort(), tmp_path_factory.mktemp("report"))


def _known(frame: pd.DataFrame, label: str) -> pd.DataFrame:
    return frame[frame[f"y:{label}"].notna()]


def test_writes_the_four_files(written: Written) -> None:
    files = written.files
    assert [p.name for p in (files.html, files.csv, files.parquet, files.summary)] == [
        "report.html",
        "predictions.csv",
        "predictions.parquet",
        "summary.json",
    ]
    assert all(p.is_file() and p.stat().st_size > 0 for p in (files.csv, files.parquet))


def test_html_is_self_contained(written: Written) -> None:
    images = DATA_URI.findall(written.page)
    assert len(images) == len(LABELS)
    for image in images:
        assert base64.b64decode(image).startswith(PNG_SIGNATURE)
    text = DATA_URI.sub("DATA", written.page)
    assert "<style>" in text
    for external in ("<script", "<link", "@import", "url(", "http:", "https:", "//"):
        assert external not in text.lower()
    assert re.findall(r'(?:src|href)="([^"]*)"', text) == ["DATA"] * len(LABELS)


def test_header_shows_cohort_model_and_time(written: Written) -> None:
    frame, page = written.frame, written.page
    assert f"<tr><td>cases</td><td>{len(frame)}</td></tr>" in page
    assert f"<tr><td>patients</td><td>{frame['patient_id'].nunique()}</td></tr>" in page
    assert "2026-11-30T12:00:00Z" in page
    assert "a" * 64 in page and "b" * 64 in page
    assert "Metric policy" in page


def test_strings_from_the_data_are_escaped(written: Written) -> None:
    page = written.page
    assert "<script>alert" not in page and "<u>" not in page and "<model>" not in page
    assert "Cohort &lt;script&gt;alert(1)&lt;/script&gt; &amp; co" in page
    assert "rare &lt;u&gt;&amp;&quot;$" in page
    assert "demo&lt;model&gt;" in page


def test_label_metrics_match_independent_computation(written: Written) -> None:
    frame = written.frame
    for label in ("MI", "AF"):
        stats = written.summary["labels"][label]
        known = _known(frame, label)
        y, p = known[f"y:{label}"].to_numpy(), known[f"p:{label}"].to_numpy()
        assert stats["n_known"] == len(known)
        assert stats["prevalence"] == pytest.approx(y.mean())
        assert stats["auroc"] == pytest.approx(roc_auc_score(y, p))
        assert stats["auprc"] == pytest.approx(average_precision_score(y, p))
        assert stats["ece"] == pytest.approx(expected_calibration_error(y, p, n_bins=10))
        assert stats["mean_predicted"] == pytest.approx(p.mean())
        assert stats["predicted_positive_rate"] == pytest.approx((p >= 0.5).mean())
        assert stats["abstention_rate"] == pytest.approx(frame[f"abstain:{label}"].mean())
        kept = known[~known[f"abstain:{label}"]]
        assert stats["n_known_non_abstained"] == len(kept)
        assert stats["auroc_non_abstained"] == pytest.approx(
            roc_auc_score(kept[f"y:{label}"], kept[f"p:{label}"])
        )
        assert f"{stats['auroc']:.3f} ({stats['auroc_ci'][0]:.3f}" in written.page


def test_intervals_resample_patients(written: Written) -> None:
    frame = written.frame
    for label in ("MI", "AF"):
        expected = bootstrap_ci(
            auroc,
            frame[f"y:{label}"].to_numpy(),
            frame[f"p:{label}"].to_numpy(),
            groups=frame["patient_id"].to_numpy(),
            n_resamples=SETTINGS.n_resamples,
            seed=SETTINGS.seed,
        )
        low, high = written.summary["labels"][label]["auroc_ci"]
        assert (low, high) == pytest.approx(expected)
        assert low <= written.summary["labels"][label]["auroc"] <= high
    macro = written.summary["macro"]
    assert macro["n_labels_averaged"] == 2
    mi, af = (written.summary["labels"][label]["auroc"] for label in ("MI", "AF"))
    assert macro["macro_auroc"] == pytest.approx((mi + af) / 2)


def test_one_class_label_is_na_with_reason(written: Written) -> None:
    rare = written.summary["labels"][RARE]
    assert rare["auroc"] is None and rare["auprc"] is None
    assert rare["auroc_ci"] == [None, None]
    assert rare["na_reason"]["auroc"].startswith("one class only: all")
    assert rare["ece"] is not None, "calibration is still defined with one class"
    assert 'n/a</span> <span class="why">(one class only: all' in written.page


def test_small_subset_is_na_and_subsets_are_in_canonical_order(written: Written) -> None:
    rows = written.summary["subsets"]
    assert [row["group"] for row in rows] == ["xray", "ecg", "report", "xray+ecg"]
    counts = written.frame["subset"].value_counts()
    assert {row["group"]: row["n"] for row in rows} == counts.to_dict()
    (report,) = [row for row in rows if row["group"] == "report"]
    assert report["macro_auroc"] is None
    assert "fewer than 10" in report["labels"]["MI"]["na_reason"]["auroc"]
    assert report["na_reason"]["macro_auroc"] == "no label with a defined AUROC"
    (xray_ecg,) = [row for row in rows if row["group"] == "xray+ecg"]
    members = written.frame[written.frame["subset"] == "xray+ecg"]
    known = _known(members, "MI")
    assert xray_ecg["labels"]["MI"]["auroc"] == pytest.approx(
        roc_auc_score(known["y:MI"], known["p:MI"])
    )


def test_subgroups_by_sex_and_age_band(written: Written) -> None:
    frame = written.frame
    sex_rows = {row["group"]: row for row in written.summary["subgroups"]["sex"]}
    assert list(sex_rows) == ["female", "male", "unknown"]
    assert sex_rows["unknown"]["n"] == int(frame["sex"].isna().sum())
    female = frame[frame["sex"] == "female"]
    assert sex_rows["female"]["n_patients"] == female["patient_id"].nunique()
    known = _known(female, "AF")
    stats = sex_rows["female"]["labels"]["AF"]
    assert stats["prevalence"] == pytest.approx(known["y:AF"].mean())
    assert stats["mean_predicted"] == pytest.approx(known["p:AF"].mean())
    assert stats["auroc"] == pytest.approx(roc_auc_score(known["y:AF"], known["p:AF"]))
    age_rows = {row["group"]: row["n"] for row in written.summary["subgroups"]["age_band"]}
    assert list(age_rows) == ["<40", "40–59", "60–79", "≥80", "unknown"]
    assert age_rows["unknown"] == int(frame["age_years"].isna().sum())
    assert age_rows["≥80"] == int((frame["age_years"] >= 80).sum())


def test_age_band_boundaries() -> None:
    ages: list[object] = [39.9, 40.0, 59.99, 60.0, 79.9, 80.0, 101.0, np.nan, None, "n/a"]
    expected = ["<40", "40–59", "40–59", "60–79", "60–79", "≥80", "≥80"] + ["unknown"] * 3
    assert age_bands(ages).tolist() == expected


def test_prediction_tables_keep_values_in_a_stable_column_order(tmp_path: Path) -> None:
    frame = _cohort(n_patients=20)
    frame["site"] = "A"
    shuffled = frame[list(reversed(frame.columns))]
    files = write_cohort_report(
        shuffled, LABELS, tmp_path, title="t", model={}, settings=SETTINGS, generated_at=STAMP
    )
    expected_columns = ["case_id", "patient_id", "subset", "sex", "age_years"]
    for label in LABELS:
        expected_columns += [f"p:{label}", f"abstain:{label}", f"y:{label}"]
    expected_columns.append("site")
    from_parquet = pd.read_parquet(files.parquet)
    assert list(from_parquet.columns) == expected_columns
    pd.testing.assert_frame_equal(from_parquet, frame[expected_columns])
    from_csv = pd.read_csv(files.csv)
    assert list(from_csv.columns) == expected_columns
    assert from_csv["p:MI"].to_numpy() == pytest.approx(frame["p:MI"].to_numpy())
    assert from_csv["y:AF"].isna().sum() == frame["y:AF"].isna().sum()


def test_cohort_without_any_known_label_still_reports(tmp_path: Path) -> None:
    frame = _cohort(n_patients=8)
    for label in LABELS:
        frame[f"y:{label}"] = np.nan
    result = _write(frame, tmp_path)
    assert result.summary["macro"]["macro_auroc"] is None
    assert result.summary["macro"]["na_reason"]["macro_auroc"] == "no label with a defined AUROC"
    assert result.summary["labels"]["MI"]["na_reason"]["ece"] == "no known labels"
    assert "(no known labels)" in result.page
    assert len(DATA_URI.findall(result.page)) == len(LABELS)


def test_invalid_frames_are_refused(tmp_path: Path) -> None:
    frame = _cohort(n_patients=5)
    with pytest.raises(ValueError, match=r"lacks columns \['abstain:AF'\]"):
        write_cohort_report(frame.drop(columns="abstain:AF"), LABELS, tmp_path, title="t", model={})
    bad = frame.copy()
    bad.loc[0, "y:MI"] = 2.0
    with pytest.raises(ValueError, match="y:MI"):
        write_cohort_report(bad, LABELS, tmp_path, title="t", model={})
    with pytest.raises(ValueError, match="duplicate"):
        write_cohort_report(frame, ["MI", "MI"], tmp_path, title="t", model={})


def test_curves_agree_with_the_areas() -> None:
    rng = np.random.default_rng(1)
    y = (rng.random(300) < 0.3).astype(np.float64)
    p = np.asarray(np.round(0.3 * y + 0.7 * rng.random(300), 2), dtype=np.float64)  # ties
    false_pos, true_pos = roc_points(y, p)
    assert np.trapezoid(true_pos, false_pos) == pytest.approx(roc_auc_score(y, p))
    recall, precision = precision_recall_points(y, p)
    step_area = float(np.sum(np.diff(recall) * precision[1:]))
    assert step_area == pytest.approx(average_precision_score(y, p))


@pytest.mark.slow
def test_ten_thousand_cases_and_fourteen_labels_render(tmp_path: Path) -> None:
    """Scale, not speed: the time is a benchmark figure (README), not asserted here."""
    rng = np.random.default_rng(0)
    n, labels = 10_000, [f"finding_{k}" for k in range(14)]
    columns: dict[str, Any] = {
        "case_id": [f"E{i}" for i in range(n)],
        "patient_id": [f"P{i // 3}" for i in range(n)],
        "subset": rng.choice(["xray", "ecg", "xray+ecg", "xray+ecg+record+report"], n),
        "sex": rng.choice(np.array(["female", "male", None], dtype=object), n),
        "age_years": rng.uniform(18.0, 95.0, n),
    }
    for label in labels:
        y = (rng.random(n) < 0.2).astype(np.float64)
        columns[f"p:{label}"] = np.clip(0.3 * y + 0.7 * rng.random(n), 0.0, 1.0)
        columns[f"abstain:{label}"] = rng.random(n) < 0.05
        columns[f"y:{label}"] = np.where(rng.random(n) < 0.2, np.nan, y)
    files = write_cohort_report(pd.DataFrame(columns), labels, tmp_path, title="big", model={})
    summary = _strict_json(files.summary.read_text(encoding="utf-8"))
    assert summary["settings"]["n_resamples"] == 200
    assert all(isinstance(summary["labels"][label]["auroc"], float) for label in labels)
