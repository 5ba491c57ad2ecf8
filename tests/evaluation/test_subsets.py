"""Per-subset evaluation and in-run baselines on synthetic embedding tables.

In every table here only the X-ray embedding carries the label; ECG, record and report
embeddings are noise. So any scorer that reads X-rays should rank well on X-ray subsets and
near chance on subsets without them.
"""

from __future__ import annotations

import numpy as np
import numpy.typing as npt
import pytest
import torch
from torch import Tensor
from torch.nn import functional

from clinic.evaluation.subsets import (
    EvaluationSettings,
    baseline_scorers,
    calibrated_scorer,
    evaluate_scorer,
    fresh_fusion,
    macro,
    single_scorer,
    subsets_in,
    train_baselines,
)
from clinic.models.calibration import CalibrationMap, SubsetCalibration
from clinic.models.config import FusionConfig
from clinic.models.fusion import ModalityFusion
from clinic.train.embeddings import EmbeddingTable, FusionRecipe
from schemas.modalities import MODALITIES

FloatArray = npt.NDArray[np.float64]
DIM = 8
NAMES = ("heart_failure", "pneumonia")
FUSION = FusionConfig(layers=1, heads=2, dim_feedforward=16, dropout=0.0)
RECIPE = FusionRecipe(epochs=25, batch_size=64, lr=1e-2, drop_probability=0.3)
SETTINGS = EvaluationSettings(n_resamples=20, seed=0, min_cases=10, recipe=RECIPE)


def signal_table(
    n: int, seed: int, signal: str = "xray", dim: int = DIM, n_labels: int = len(NAMES)
) -> EmbeddingTable:
    """Unit embeddings per modality; ``signal``'s rows point along +/- axis k for label k."""
    generator = torch.Generator().manual_seed(seed)
    labels = (torch.rand(n, n_labels, generator=generator) < 0.4).float()  # (N, K)
    embeddings: dict[str, Tensor] = {
        m: torch.randn(n, dim, generator=generator) for m in MODALITIES
    }
    direction = torch.zeros(n, dim)
    direction[:, :n_labels] = 2.0 * labels - 1.0
    embeddings[signal] = 0.4 * embeddings[signal] + 2.0 * direction
    present: dict[str, Tensor] = {m: torch.rand(n, generator=generator) < 0.7 for m in MODALITIES}
    present["ecg"] |= ~torch.stack(list(present.values()), dim=1).any(dim=1)  # none empty
    unit = {m: functional.normalize(e, dim=-1) * present[m][:, None] for m, e in embeddings.items()}
    return EmbeddingTable(unit, present, labels)


def groups_of(table: EmbeddingTable) -> npt.NDArray[np.str_]:
    return np.array([f"P{i // 2}" for i in range(len(table))])  # two cases per patient


def make_fusion() -> ModalityFusion:
    torch.manual_seed(0)
    return fresh_fusion(DIM, len(NAMES), FUSION)


def test_subsets_in_keeps_subsets_with_enough_cases() -> None:
    table = signal_table(60, seed=0)
    found = subsets_in(table, ("xray", "ecg"), min_cases=1)
    assert found == [("xray",), ("ecg",), ("xray", "ecg")]
    both = int(table.having(("xray", "ecg")).sum())
    assert ("xray", "ecg") not in subsets_in(table, ("xray", "ecg"), min_cases=both + 1)
    assert subsets_in(table, ("xray",), min_cases=len(table) + 1) == []


def test_evaluate_scorer_uses_only_rows_having_the_whole_subset() -> None:
    table = signal_table(80, seed=1)
    labels = table.labels.double().numpy()

    def scorer(subset: tuple[str, ...]) -> FloatArray:
        """Perfect on rows having the subset, reversed (or NaN) everywhere else."""
        having = table.having(subset).numpy()[:, None]
        return np.where(having, labels, np.where(labels > 0, 0.0, np.nan))

    subsets = [("xray",), ("xray", "ecg")]
    results = evaluate_scorer(scorer, table, subsets, NAMES, groups_of(table), SETTINGS)
    assert list(results) == ["xray", "xray+ecg"]
    for subset in subsets:
        result = results["+".join(subset)]
        assert result["macro_auroc"] == pytest.approx(1.0)
        labels_result = result["labels"]
        assert isinstance(labels_result, dict)
        assert labels_result[NAMES[0]]["n"] == int(table.having(subset).sum())


def test_calibrated_scorer_applies_the_subset_calibration() -> None:
    table = signal_table(40, seed=2)
    fusion = make_fusion().eval()
    raw = calibrated_scorer(fusion, table, None)(("xray",))
    fitted = SubsetCalibration([0.0, 0.0], [2.0, -2.0], [0.9, 0.9], [0.0, 0.0], 40)
    calibration = CalibrationMap(NAMES, {"xray": fitted})
    calibrated = calibrated_scorer(fusion, table, calibration)(("xray",))
    has_xray = table.present["xray"].numpy()
    assert np.isnan(raw[~has_xray]).all() and np.isnan(calibrated[~has_xray]).all()
    assert ((raw[has_xray] > 0) & (raw[has_xray] < 1)).all()
    expected = 1.0 / (1.0 + np.exp(-np.array([2.0, -2.0])))
    np.testing.assert_allclose(calibrated[has_xray], np.broadcast_to(expected, (has_xray.sum(), 2)))


@pytest.fixture(scope="module")
def trained() -> tuple[EmbeddingTable, dict[str, dict[str, dict[str, object]]]]:
    """Baselines trained on a train / validation table, scored on a test table."""
    train, val, test = signal_table(240, 3), signal_table(80, 4), signal_table(160, 5)
    subsets = [("xray",), ("ecg",), ("xray", "ecg")]
    baselines = train_baselines(train, val, subsets, make_fusion, RECIPE)
    assert set(baselines.single) == {"xray", "ecg"}
    assert set(baselines.dedicated) == {"xray", "ecg", "xray+ecg"}
    assert baselines.dedicated["xray"] is baselines.single["xray"]
    assert not baselines.no_dropout.training
    scorers = baseline_scorers(baselines, test)
    assert set(scorers) == {"late_fusion", "no_dropout", "dedicated"}
    groups = groups_of(test)
    results = {
        name: evaluate_scorer(scorer, test, subsets, NAMES, groups, SETTINGS)
        for name, scorer in scorers.items()
    }
    results["single_ecg"] = evaluate_scorer(
        single_scorer(baselines, test, "ecg"), test, [("xray", "ecg")], NAMES, groups, SETTINGS
    )
    return test, results


@pytest.mark.parametrize("baseline", ["late_fusion", "no_dropout", "dedicated"])
def test_baselines_find_the_signal_where_it_is(
    trained: tuple[EmbeddingTable, dict[str, dict[str, dict[str, object]]]], baseline: str
) -> None:
    _, results = trained
    with_xray, xray_and_ecg = macro(results[baseline], "xray"), macro(results[baseline], "xray+ecg")
    ecg_only = macro(results[baseline], "ecg")
    assert with_xray is not None and with_xray > 0.9
    assert xray_and_ecg is not None and xray_and_ecg > 0.9
    assert ecg_only is not None and ecg_only < 0.75


def test_single_modality_baseline_reads_only_its_modality(
    trained: tuple[EmbeddingTable, dict[str, dict[str, dict[str, object]]]],
) -> None:
    _, results = trained
    ecg_on_complete = macro(results["single_ecg"], "xray+ecg")
    assert ecg_on_complete is not None and ecg_on_complete < 0.75


def test_late_fusion_is_undefined_where_a_modality_is_missing() -> None:
    train, test = signal_table(120, 6), signal_table(60, 7)
    baselines = train_baselines(train, train, [("xray",), ("ecg",)], make_fusion,
                                FusionRecipe(epochs=2, batch_size=64))  # fmt: skip
    late = baseline_scorers(baselines, test)["late_fusion"](("xray", "ecg"))
    complete = test.having(("xray", "ecg")).numpy()
    assert np.isfinite(late[complete]).all() and np.isnan(late[~complete]).all()


def test_macro_reads_a_number_or_none() -> None:
    results: dict[str, dict[str, object]] = {
        "xray": {"macro_auroc": 0.8},
        "ecg": {"macro_auroc": None},
    }
    assert macro(results, "xray") == 0.8
    assert macro(results, "ecg") is None and macro(results, "report") is None
