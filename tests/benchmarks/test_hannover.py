"""The Hannover benchmark: patient-grouped folds, fold scoring, and a tiny end-to-end run on a
few rows written in the source's layout (noise PNGs, binned labs) with a tiny random model."""

from __future__ import annotations

import csv
import json
import math
from pathlib import Path

import numpy as np
import pytest
from PIL import Image
from typer.testing import CliRunner

from clinic.benchmarks import hannover
from clinic.benchmarks.hannover import (
    LAB_FIELDS,
    TARGET,
    HannoverCases,
    HannoverOptions,
    patient_folds,
    run_hannover_benchmark,
    summarise,
    usable_cases,
)
from clinic.cli.main import app
from clinic.data.cases import Case
from clinic.data.records import RecordNormalizer
from tests.conftest import cli_env, make_settings
from tests.modelkit import tiny_config


def image_case(index: int, patient: str, label: float) -> Case:
    return Case(f"c{index}", patient, None, xray_blob=f"blob{index:03d}", labels={TARGET: label})


def cohort(patients: int = 12, images: int = 3) -> HannoverCases:
    """``patients`` patients with ``images`` images each; every third patient went to the ICU."""
    cases = [
        image_case(p * images + i, f"P{p}", float(p % 3 == 0))
        for p in range(patients)
        for i in range(images)
    ]
    return usable_cases(cases)


# --- folds and scoring -------------------------------------------------------------------------


def test_folds_keep_each_patient_in_one_fold_and_both_classes_in_every_fold() -> None:
    data = cohort()
    folds = patient_folds(data, 3)
    for patient in set(data.patients):
        assert len({folds[i] for i, p in enumerate(data.patients) if p == patient}) == 1
    for fold in range(3):
        assert set(data.labels[folds == fold].tolist()) == {0.0, 1.0}


def test_folds_do_not_depend_on_the_pseudonyms() -> None:
    data = cohort()
    renamed = HannoverCases(
        [Case(c.case_id, "X" + c.patient_id[::-1], None, xray_blob=c.xray_blob,
              labels=c.labels) for c in data.cases], 0,
    )  # fmt: skip
    assert patient_folds(data, 3).tolist() == patient_folds(renamed, 3).tolist()


def test_too_few_patients_for_the_folds_is_an_error() -> None:
    with pytest.raises(ValueError, match="cannot fill 5 folds"):
        patient_folds(cohort(patients=4), 5)


def test_usable_cases_need_an_image_and_the_target_and_are_ordered_by_image() -> None:
    cases = [
        image_case(2, "P1", 1.0),
        image_case(1, "P1", 0.0),
        Case("no-image", "P2", None, labels={TARGET: 1.0}),
        Case("no-label", "P3", None, xray_blob="blob999", labels={"death": 0.0}),
    ]
    data = usable_cases(cases)
    assert [c.case_id for c in data.cases] == ["c1", "c2"] and data.left_out == 2


def test_summarise_scores_each_fold_and_skips_folds_with_one_class() -> None:
    labels = np.array([0.0, 1.0, 0.0, 1.0, 1.0, 1.0])
    folds = np.array([0, 0, 1, 1, 2, 2])
    perfect = np.array([[-1.0, 1.0, -2.0, 2.0, 0.5, 0.7]])  # (seeds, N) logits
    summary = summarise(perfect, labels, folds, ["a", "b", "c", "d", "e", "f"])
    assert summary["folds"] == [1.0, 1.0, None]
    assert summary["folds_defined"] == 2 and summary["auroc"] == 1.0 and summary["std"] == 0.0
    assert summary["pooled_auroc"] == 1.0


# --- end to end on a few rows ------------------------------------------------------------------


def write_hannover_folder(folder: Path, patients: int = 6, images: int = 2) -> Path:
    """``data.csv`` + ``png/`` in the source's layout; patients 0, 2, 4 went to the ICU."""
    (folder / "png").mkdir(parents=True)
    columns = ["patient_id", "image_id", "sex", "age", "admission_offset",
               "icu_admission_offset", "death_offset", "modality", "projection", "crp_offset",
               "crp_val", "pco2_offset", "pco2_val"]  # fmt: skip
    noise = np.random.default_rng(0)
    with (folder / "data.csv").open("w", newline="") as handle:
        writer = csv.DictWriter(handle, columns)
        writer.writeheader()
        for p in range(patients):
            for i in range(images):
                image_id = f"{p:02x}{i:02x}beef"
                pixels = noise.integers(0, 256, (40, 40), dtype=np.uint8)
                Image.fromarray(pixels, mode="L").save(folder / "png" / f"{image_id}.png")
                writer.writerow({
                    "patient_id": f"{p:04x}cafe", "image_id": image_id, "sex": "mw"[p % 2],
                    "age": "61-70", "admission_offset": -i,
                    "icu_admission_offset": -i if p % 2 == 0 else "", "death_offset": "",
                    "modality": "CR", "projection": "ap", "crp_offset": 0, "crp_val": 10 * p,
                    "pco2_offset": 0, "pco2_val": "inf" if i else 40,
                })  # fmt: skip
    return folder


def test_tiny_end_to_end_run_scores_every_model_by_fold(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(hannover, "load_model_config", lambda _name: tiny_config())
    seen: list[dict[str, float]] = []
    real_fit = RecordNormalizer.fit

    def spy(records: list[dict[str, float]], features: tuple[str, ...]) -> object:
        seen.extend(records)
        return real_fit(records, features)

    monkeypatch.setattr(RecordNormalizer, "fit", spy)
    folder = write_hannover_folder(tmp_path / "hannover")
    result = run_hannover_benchmark(
        HannoverOptions(folder, folds=2, fusion_epochs=2, workers=1, home=tmp_path / "home")
    )
    assert (result["n"], result["patients"], result["positives"]) == (12, 6, 6)
    assert set(result["models"]) == {"xray", "labs", "xray+labs"}
    json.dumps(result, allow_nan=False)  # strict JSON: an undefined AUROC is null
    for summary in result["models"].values():
        assert len(summary["folds"]) == 2 and summary["folds_defined"] == 2
        assert 0.0 <= summary["auroc"] <= 1.0
    assert "figshare" in result["protocol"]["source"]
    assert "6 of 12 images" in result["protocol"]["caveat"]
    crp = sorted({record["crp_val"] for record in seen})
    assert crp == [0.0, 10.0, 20.0, 30.0, 40.0, 50.0], "the labs reach the record encoder"
    assert {math.isnan(record["pco2_val"]) for record in seen} == {True, False}
    assert set(LAB_FIELDS) <= set(seen[0])


def test_cli_refuses_a_folder_that_is_not_hannover(tmp_path: Path) -> None:
    settings = make_settings(tmp_path / "home", f"sqlite:///{tmp_path / 'clinic.db'}")
    (tmp_path / "data.csv").write_text("patient_id,image_id\n")  # but no png/ folder
    result = CliRunner().invoke(
        app, ["run", "hannover-benchmark", "--data", str(tmp_path)], env=cli_env(settings)
    )
    assert result.exit_code == 2, result.output
    assert "not a Hannover folder" in result.stderr
