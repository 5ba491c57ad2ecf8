"""The phantom benchmark's headline figures and its latent-evidence oracle."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import numpy as np
import pytest

from clinic.benchmarks.phantom import LatentOracle, PhantomOptions, phantom_summary
from clinic.data.cases import Case
from clinic.evaluation.metrics import auroc
from clinic.ingest.pseudonym import Pseudonymizer


def subset(ours: float | None, dedicated: float | None, ece: float | None) -> dict[str, Any]:
    return {"macro_auroc": ours, "dedicated_macro_auroc": dedicated, "ece": ece,
            "late_fusion_macro_auroc": None, "no_dropout_macro_auroc": None}  # fmt: skip


def evaluation(oracle: float | None = 0.9) -> dict[str, Any]:
    summary: dict[str, Any] = {
        "full_macro_auroc": 0.81,
        "best_single_macro_auroc": 0.75,
        "best_single_modality": "xray",
        "subsets": {
            "xray": subset(0.75, 0.78, 0.02),
            "ecg": subset(0.70, 0.69, 0.05),
            "xray+ecg": subset(0.81, 0.85, None),  # the worst gap, without an ECE
            "report": subset(None, 0.60, 0.01),
        },
    }
    if oracle is not None:
        summary["oracle_macro_auroc"] = oracle
    return {"summary": summary, "label_names": ["a", "b"], "n": {"test": 10},
            "zero_shot": {"available": False}, "retrieval": {}}  # fmt: skip


def test_summary_computes_every_target() -> None:
    result = phantom_summary(evaluation(), PhantomOptions(patients=120))
    targets = result["targets"]
    assert targets["full_vs_oracle"]["ratio"] == pytest.approx(0.81 / 0.9)
    assert targets["worst_gap_to_dedicated"]["value"] == pytest.approx(0.04)
    assert targets["worst_ece"]["value"] == pytest.approx(0.05)
    assert targets["fused_minus_best_single"]["value"] == pytest.approx(0.06)
    assert result["patients"] == 120 and result["best_single_modality"] == "xray"
    assert result["label_names"] == ["a", "b"] and result["oracle_macro_auroc"] == 0.9
    json.dumps(result, allow_nan=False)


def test_summary_without_an_oracle_or_figures_gives_none() -> None:
    data = evaluation(oracle=None)
    data["summary"]["full_macro_auroc"] = None
    data["summary"]["subsets"] = {"ecg": subset(None, None, None)}
    targets = phantom_summary(data, PhantomOptions())["targets"]
    assert targets["full_vs_oracle"]["ratio"] is None
    assert targets["worst_gap_to_dedicated"]["value"] is None
    assert targets["worst_ece"]["value"] is None
    assert targets["fused_minus_best_single"]["value"] is None


KEY = Pseudonymizer(b"test-key-for-the-oracle")


def latent_rows(n: int, seed: int) -> list[dict[str, Any]]:
    """Encounters whose X-ray evidence of heart failure decides the label."""
    rng = np.random.default_rng(seed)
    rows = []
    for i in range(n):
        strength = float(rng.normal())
        rows.append({
            "patient_id": f"PAT{seed}-{i}", "encounter_id": "ENC1", "age_years": 50 + i % 30,
            "evidence": {"xray": {"heart_failure": strength, "effusion": float(rng.normal())},
                         "ecg": {"heart_failure": 0.0}},
        })  # fmt: skip
    return rows


def cases_for(rows: list[dict[str, Any]], split: str) -> list[Case]:
    """Store cases named as ingestion names them; labels from the evidence."""
    return [
        Case(KEY.encounter(row["patient_id"], row["encounter_id"]), row["patient_id"], split,
             labels={"heart_failure": float(row["evidence"]["xray"]["heart_failure"] > 0),
                     "pneumonia": 0.0})
        for row in rows
    ]  # fmt: skip


@pytest.fixture
def latent_file(tmp_path: Path) -> tuple[Path, list[Case], list[Case]]:
    train, test = latent_rows(60, seed=1), latent_rows(30, seed=2)
    path = tmp_path / "latent.jsonl"
    path.write_text("".join(json.dumps(row) + "\n" for row in train + test))
    return path, cases_for(train, "train"), cases_for(test, "test")


def test_the_oracle_maps_encounters_through_the_pseudonymiser(
    latent_file: tuple[Path, list[Case], list[Case]],
) -> None:
    path, train, test = latent_file
    oracle = LatentOracle(path, KEY)
    assert set(oracle.evidence) == {case.case_id for case in train + test}
    vector = oracle.evidence[train[0].case_id]
    assert vector.shape == (4,)  # three evidence values and age
    assert vector[-1] == pytest.approx(0.5)


def test_the_oracle_scores_from_the_evidence(
    latent_file: tuple[Path, list[Case], list[Case]],
) -> None:
    path, train, test = latent_file
    scores = LatentOracle(path, KEY)(train, test, ["heart_failure", "pneumonia"])
    assert scores.shape == (len(test), 2)
    labels = np.array([case.labels["heart_failure"] for case in test])
    assert auroc(labels, scores[:, 0]) > 0.95
    assert np.isnan(scores[:, 1]).all(), "a label with one class in training cannot be fitted"


def test_the_oracle_is_blind_to_unknown_encounters_or_a_wrong_key(
    latent_file: tuple[Path, list[Case], list[Case]],
) -> None:
    path, train, test = latent_file
    wrong = LatentOracle(path, Pseudonymizer(b"another-key"))
    assert not set(wrong.evidence) & {case.case_id for case in train}
    np.testing.assert_array_equal(wrong._matrix(test), np.zeros((len(test), 4)))
