from __future__ import annotations

import math

import numpy as np
import pytest

from clinic.evaluation.metrics import FloatArray
from clinic.evaluation.retrieval import precision_at_k_shared_label, recall_at_k


def _unit_rows(n: int, d: int, seed: int) -> FloatArray:
    rows = np.random.default_rng(seed).standard_normal((n, d))
    normalised: FloatArray = rows / np.linalg.norm(rows, axis=1, keepdims=True)
    return normalised


def test_recall_is_one_when_query_equals_gallery() -> None:
    rows = _unit_rows(50, 16, 0)
    assert recall_at_k(rows, rows) == {1: 1.0, 5: 1.0, 10: 1.0}


def test_recall_of_random_embeddings_is_about_k_over_n() -> None:
    n = 400
    recall = recall_at_k(_unit_rows(n, 32, 1), _unit_rows(n, 32, 2), ks=(1, 10, 40))
    for k, value in recall.items():
        assert value == pytest.approx(k / n, abs=3 * math.sqrt(k / n / n) + 1 / n)


def test_recall_counts_ties_against_the_query() -> None:
    collapsed = np.tile([[1.0, 0.0]], (10, 1))
    assert recall_at_k(collapsed, collapsed, ks=(1, 10)) == {1: 0.0, 10: 1.0}


def test_recall_rejects_unnormalised_rows_and_bad_k() -> None:
    rows = _unit_rows(5, 4, 0)
    with pytest.raises(ValueError, match="L2-normalised"):
        recall_at_k(rows * 2.0, rows)
    with pytest.raises(ValueError, match="positive"):
        recall_at_k(rows, rows, ks=(0,))


def _two_clusters() -> tuple[FloatArray, FloatArray]:
    """Cases 0-2 near (1, 0) with label A; cases 3-5 near (0, 1) with label B."""
    angles = np.array([0.0, 0.05, 0.1, 1.5, 1.52, 1.54])
    rows = np.stack([np.cos(angles), np.sin(angles)], axis=1)
    labels = np.array([[1, 0]] * 3 + [[0, 1]] * 3, dtype=np.float64)
    return rows, labels


def test_precision_excludes_the_case_itself() -> None:
    rows, labels = _two_clusters()
    assert precision_at_k_shared_label(rows, labels, k=2) == 1.0
    # With itself excluded the third neighbour must come from the other cluster.
    assert precision_at_k_shared_label(rows, labels, k=3) == pytest.approx(2 / 3)


def test_precision_excludes_the_same_patient() -> None:
    rows, labels = _two_clusters()
    patients = np.array(["p1", "p1", "p2", "p3", "p3", "p4"])
    assert precision_at_k_shared_label(rows, labels, k=2) == 1.0
    # Cases 0, 1, 3, 4 lose their same-patient twin, so their second neighbour comes from the
    # other cluster (1/2 each); cases 2 and 5 keep two same-cluster neighbours (1 each).
    value = precision_at_k_shared_label(rows, labels, k=2, exclude_groups=patients)
    assert value == pytest.approx(4 / 6)


def test_precision_unknown_labels_never_share_and_cases_without_positives_are_skipped() -> None:
    rows, labels = _two_clusters()
    labels[3:] = np.nan  # cluster B unknown: not scored, not a sharing neighbour
    assert precision_at_k_shared_label(rows, labels, k=2) == 1.0
    assert precision_at_k_shared_label(rows, labels, k=3) == pytest.approx(2 / 3)
    assert math.isnan(precision_at_k_shared_label(rows, np.zeros((6, 2)), k=2))


def test_precision_with_fewer_neighbours_than_k_uses_those_available() -> None:
    rows, labels = _two_clusters()
    assert precision_at_k_shared_label(rows, labels, k=50) == pytest.approx(2 / 5)
