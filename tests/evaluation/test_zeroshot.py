"""Zero-shot prompt scoring and cross-modal retrieval on hand-built embedding tables."""

from __future__ import annotations

import numpy as np
import numpy.typing as npt
import pytest
import torch

from clinic.evaluation.zeroshot import (
    prompt_embeddings,
    retrieval_report,
    zero_shot_report,
    zero_shot_scores,
)
from clinic.models.model import ClinicModel
from clinic.train.embeddings import EmbeddingTable
from schemas.modalities import MODALITIES
from tests.models.test_model import LABELS, tiny_model

FloatArray = npt.NDArray[np.float64]
DIM = 4


def unit(rows: FloatArray) -> FloatArray:
    return np.asarray(rows / np.linalg.norm(rows, axis=1, keepdims=True), dtype=np.float64)


def table_from(
    embeddings: dict[str, FloatArray], present: dict[str, list[bool]], labels: FloatArray
) -> EmbeddingTable:
    return EmbeddingTable(
        {m: torch.from_numpy(e).float() for m, e in embeddings.items()},
        {m: torch.tensor(p) for m, p in present.items()},
        torch.from_numpy(labels).float(),
    )


def test_scores_use_the_mean_of_present_non_report_embeddings() -> None:
    positives, negatives = np.eye(DIM)[:2], np.eye(DIM)[2:]  # (K=2, D) each
    xray = unit(np.array([[1.0, 0.0, 0.0, 0.0], [0.0, 1.0, 0.0, 0.0], [1.0, 1.0, 1.0, 0.0]]))
    ecg = unit(np.array([[0.0, 0.0, 1.0, 0.0], [0.0, 0.0, 0.0, 1.0], [0.0, 1.0, 0.0, 0.0]]))
    report = np.tile(positives[:1], (3, 1))  # reports that would give the answer away
    table = table_from(
        {"xray": xray, "ecg": ecg, "report": report},
        {"xray": [True, True, False], "ecg": [True, False, False], "report": [True, True, True]},
        np.zeros((3, 2)),
    )
    scores = zero_shot_scores(table, positives, negatives, MODALITIES)
    case = unit((xray[:1] + ecg[:1]) / 2.0)  # row 0: X-ray and ECG averaged
    expected = case @ positives.T - case @ negatives.T
    np.testing.assert_allclose(scores[0], expected[0], atol=1e-6)
    np.testing.assert_allclose(scores[1], [0.0, 1.0], atol=1e-6)  # X-ray only: along axis 1
    assert np.isnan(scores[2]).all(), "a row with only a report has nothing to score"


def test_reports_never_enter_the_scores() -> None:
    rng = np.random.default_rng(0)
    positives, negatives = unit(rng.normal(size=(2, DIM))), unit(rng.normal(size=(2, DIM)))
    present = {"xray": [True, False, True, True], "report": [True, True, True, True]}
    xray = unit(rng.normal(size=(4, DIM)))
    first = table_from({"xray": xray, "report": unit(rng.normal(size=(4, DIM)))}, present,
                       np.zeros((4, 2)))  # fmt: skip
    second = table_from({"xray": xray, "report": unit(rng.normal(size=(4, DIM)))}, present,
                        np.zeros((4, 2)))  # fmt: skip
    np.testing.assert_array_equal(
        zero_shot_scores(first, positives, negatives, MODALITIES),
        zero_shot_scores(second, positives, negatives, MODALITIES),
    )


def test_modalities_outside_the_model_are_ignored() -> None:
    positives, negatives = np.eye(DIM)[:1], np.eye(DIM)[1:2]
    table = table_from(
        {"xray": np.eye(DIM)[:2], "ecg": np.eye(DIM)[1:3]},
        {"xray": [True, True], "ecg": [True, True]},
        np.zeros((2, 1)),
    )
    np.testing.assert_allclose(
        zero_shot_scores(table, positives, negatives, ("xray",)), [[1.0], [-1.0]], atol=1e-6
    )


@pytest.fixture(scope="module")
def model() -> ClinicModel:
    return tiny_model()


def test_prompt_embeddings_are_unit_vectors_per_label(model: ClinicModel) -> None:
    positives, negatives = prompt_embeddings(model, LABELS)
    assert positives.shape == negatives.shape == (len(LABELS), model.config.embed_dim)
    np.testing.assert_allclose(np.linalg.norm(positives, axis=1), 1.0, atol=1e-6)
    assert not np.allclose(positives, negatives)


def test_zero_shot_report_ranks_cases_that_sit_on_the_positive_prompt(model: ClinicModel) -> None:
    positives, negatives = prompt_embeddings(model, LABELS)
    labels = np.array([[1, 0, 1], [0, 1, 0], [1, 1, 0], [0, 0, 1]], dtype=np.float64)  # (N, K)
    rows = [unit(np.where(row[:, None] > 0, positives, negatives).sum(0, keepdims=True))[0]
            for row in labels]  # fmt: skip
    present = {"xray": [True] * 4, "report": [True] * 4}
    table = table_from({"xray": np.stack(rows), "report": np.stack(rows)}, present, labels)
    report = zero_shot_report(model, table, LABELS)
    assert report["available"] is True
    assert report["per_label"] == dict.fromkeys(LABELS, 1.0)
    assert report["macro_auroc"] == 1.0


def test_zero_shot_needs_a_report_encoder() -> None:
    ecg_only = tiny_model(modalities=("ecg",))
    table = table_from({"ecg": np.eye(DIM)[:2]}, {"ecg": [True, True]}, np.zeros((2, 3)))
    assert zero_shot_report(ecg_only, table, LABELS)["available"] is False


def paired_table(n: int, seed: int) -> EmbeddingTable:
    """X-ray i and report i are the same vector; ECGs are unrelated to the reports."""
    rng = np.random.default_rng(seed)
    shared = unit(rng.normal(size=(n, 16)))
    labels = (rng.random((n, 2)) < 0.5).astype(np.float64)
    return table_from(
        {"xray": shared, "ecg": unit(rng.normal(size=(n, 16))), "report": shared},
        {m: [True] * n for m in ("xray", "ecg", "report")},
        labels,
    )


def test_retrieval_finds_the_paired_report() -> None:
    table = paired_table(40, seed=1)
    groups = np.array([f"P{i}" for i in range(40)])
    fused = table.embeddings["xray"].double().numpy()
    report = retrieval_report(table, fused, groups)
    xray, ecg = report["xray_to_report"], report["ecg_to_report"]
    assert isinstance(xray, dict) and isinstance(ecg, dict)
    assert xray["recall@1"] == 1.0 and xray["n"] == 40 and xray["chance@10"] == 0.25
    assert ecg["recall@1"] < 0.3 and ecg["recall@10"] <= 1.0
    patients = report["patient_to_patient"]
    assert isinstance(patients, dict) and patients["n"] == 40
    assert 0.0 <= patients["precision@10"] <= 1.0


def test_retrieval_skips_pairs_with_fewer_than_ten_cases() -> None:
    table = paired_table(12, seed=2)
    table.present["ecg"][3:] = False  # only three ECG + report pairs
    report = retrieval_report(table, np.ones((12, 4)), np.array([f"P{i}" for i in range(12)]))
    assert "xray_to_report" in report and "ecg_to_report" not in report
