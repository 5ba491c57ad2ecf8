"""``clinic evaluate``: the whole evaluation from tables, its outputs, its guards, end to end."""

from __future__ import annotations

import copy
import dataclasses
import json
from pathlib import Path
from typing import Any, cast

import numpy as np
import numpy.typing as npt
import pytest
import torch

import clinic.evaluation.evaluate as evaluate_module
import clinic.train.data as train_data
from clinic.data.cases import Case, label_matrix
from clinic.data.splits import SplitPlan, assign_splits
from clinic.evaluation.evaluate import (
    EvaluationRequest,
    evaluate,
    evaluate_tables,
    markdown_summary,
    write_outputs,
)
from clinic.evaluation.guards import LabelOrderError, PatientLeakError
from clinic.evaluation.subsets import EvaluationSettings
from clinic.models.model import ClinicModel
from clinic.store.store import Store
from clinic.train.artifacts import model_dir, write_json
from clinic.train.data import CohortData, load_cohort
from clinic.train.embeddings import EmbeddingTable, FusionRecipe
from clinic.train.runner import QuietReporter, TrainRequest, calibrate, finetune, pretrain
from schemas.modalities import subset_name
from tests.evaluation.test_subsets import signal_table
from tests.modelkit import TINY_COHORT, tiny_config
from tests.models.test_model import LABELS, tiny_model

FloatArray = npt.NDArray[np.float64]
MODEL_MODALITIES = ("xray", "ecg", "report")
SETTINGS = EvaluationSettings(
    n_resamples=20, min_cases=10, recipe=FusionRecipe(epochs=12, batch_size=64, lr=1e-2)
)


def model_table(n: int, seed: int, dim: int) -> EmbeddingTable:
    """A signal table (X-ray carries the labels) holding only the model's modalities."""
    table = signal_table(n, seed, dim=dim, n_labels=len(LABELS))
    keep = MODEL_MODALITIES
    present = {m: p for m, p in table.present.items() if m in keep}
    present["ecg"] = present["ecg"] | ~torch.stack(list(present.values()), dim=1).any(dim=1)
    return EmbeddingTable({m: table.embeddings[m] for m in keep}, present, table.labels)


def cases_for(n: int, split: str) -> list[Case]:
    return [Case(f"E{split}{i}", f"P{split}{i // 2}", split) for i in range(n)]


@pytest.fixture(scope="module")
def evaluated() -> tuple[ClinicModel, dict[str, Any]]:
    model = tiny_model(modalities=MODEL_MODALITIES)
    dim = model.config.embed_dim
    sizes = {"train": 200, "val": 60, "test": 120}
    tables = {split: model_table(n, seed, dim) for seed, (split, n) in enumerate(sizes.items())}
    data = CohortData({s: cases_for(n, s) for s, n in sizes.items()}, LABELS, SplitPlan())
    return model, evaluate_tables(model, None, tables, data, SETTINGS)


def test_evaluate_tables_reports_every_part(evaluated: tuple[ClinicModel, dict[str, Any]]) -> None:
    _, result = evaluated
    assert result["label_names"] == list(LABELS)
    assert result["n"] == {"train": 200, "val": 60, "test": 120}
    assert result["calibrated"] is False
    assert "xray+ecg+report" in result["subsets"] and "record" not in result["subsets"]
    assert set(result["baselines"]) == {
        "late_fusion", "no_dropout", "dedicated", "single_on_complete_cases"
    }  # fmt: skip
    assert set(result["baselines"]["single_on_complete_cases"]) == set(MODEL_MODALITIES)
    for name in result["subsets"]:
        assert set(result["subsets"][name]["labels"]) == set(LABELS)
    assert result["zero_shot"]["available"] is True
    assert {"xray_to_report", "ecg_to_report", "patient_to_patient"} <= set(result["retrieval"])


def test_the_summary_finds_the_informative_modality(
    evaluated: tuple[ClinicModel, dict[str, Any]],
) -> None:
    _, result = evaluated
    summary = result["summary"]
    assert summary["full_subset"] == "xray+ecg+report"
    assert summary["best_single_modality"] == "xray"
    assert summary["best_single_macro_auroc"] > 0.9
    xray, ecg = summary["subsets"]["xray"], summary["subsets"]["ecg"]
    assert xray["dedicated_macro_auroc"] > 0.9 and ecg["dedicated_macro_auroc"] < 0.75
    assert summary["subsets"]["xray+ecg"]["late_fusion_macro_auroc"] > 0.85


def test_outputs_are_strict_json_markdown_and_a_heatmap(
    evaluated: tuple[ClinicModel, dict[str, Any]], tmp_path: Path
) -> None:
    model, evaluated_result = evaluated
    result = copy.deepcopy(evaluated_result)
    result["summary"]["full_macro_auroc"] = np.float64("nan")  # e.g. a label without positives
    write_outputs(result, model, calibration_present=False, out=tmp_path / "out")
    text = (tmp_path / "out" / "evaluation.json").read_text()
    parsed = json.loads(text, parse_constant=lambda name: pytest.fail(f"{name} in JSON"))
    assert parsed["summary"]["full_subset"] == "xray+ecg+report"
    assert parsed["summary"]["full_macro_auroc"] is None
    markdown = (tmp_path / "out" / "evaluation.md").read_text()
    assert markdown.startswith("# Evaluation")
    assert all(f"| {name} |" in markdown for name in result["subsets"])
    png = (tmp_path / "out" / "subset_label_auroc.png").read_bytes()
    assert png.startswith(b"\x89PNG")


def test_markdown_summary_puts_each_baseline_beside_ours() -> None:
    result = {"summary": {"subsets": {
        "ecg": {"macro_auroc": 0.81234, "ece": 0.02, "dedicated_macro_auroc": 0.8,
                "late_fusion_macro_auroc": None, "no_dropout_macro_auroc": 0.7},
        "xray+ecg": {"macro_auroc": 0.9, "ece": None, "dedicated_macro_auroc": float("nan"),
                     "late_fusion_macro_auroc": 0.85, "no_dropout_macro_auroc": 0.88},
    }}}  # fmt: skip
    lines = markdown_summary(result).splitlines()
    header = next(line for line in lines if line.startswith("| subset"))
    assert header == "| subset | ours | ECE | dedicated | late fusion | no dropout |"
    assert "| ecg | 0.812 | 0.020 | 0.800 | – | 0.700 |" in lines
    assert "| xray+ecg | 0.900 | – | – | 0.850 | 0.880 |" in lines


class ShuffledDataset:
    """What a dataset whose label columns come in another order would hand the evaluation."""

    def __init__(self, labels: npt.NDArray[np.float32], names: tuple[str, ...]) -> None:
        self.labels, self.label_names = labels, names


def patch_embedding(
    monkeypatch: pytest.MonkeyPatch, model: ClinicModel, names: tuple[str, ...]
) -> FloatArray:
    """Datasets with columns ``names``; returns the labels in the model's order."""
    rng = np.random.default_rng(0)
    in_model_order = (rng.random((5, len(LABELS))) < 0.5).astype(np.float32)
    columns = [LABELS.index(name) if name in LABELS else 0 for name in names]
    dataset = ShuffledDataset(in_model_order[:, columns], names)
    table = EmbeddingTable({}, {}, torch.from_numpy(dataset.labels))  # labels in dataset order
    monkeypatch.setattr(evaluate_module, "make_dataset", lambda *_a, **_k: dataset)
    monkeypatch.setattr(evaluate_module, "embed_dataset", lambda *_a, **_k: table)
    return in_model_order.astype(np.float64)


def test_shuffled_label_columns_are_realigned_by_name(monkeypatch: pytest.MonkeyPatch) -> None:
    model = tiny_model(modalities=("ecg",))
    shuffled = (LABELS[2], LABELS[0], LABELS[1])
    expected = patch_embedding(monkeypatch, model, shuffled)
    data = CohortData({s: [] for s in ("train", "val", "test")}, LABELS, SplitPlan())
    tables = evaluate_module._embed_splits(cast("Store", None), model, data, "cpu")
    for table in tables.values():
        np.testing.assert_array_equal(table.labels.double().numpy(), expected)


def test_label_columns_that_cannot_be_matched_raise(monkeypatch: pytest.MonkeyPatch) -> None:
    model = tiny_model(modalities=("ecg",))
    patch_embedding(monkeypatch, model, (LABELS[0], LABELS[1], "no_finding"))
    data = CohortData({s: [] for s in ("train", "val", "test")}, LABELS, SplitPlan())
    with pytest.raises(LabelOrderError, match=LABELS[2]):
        evaluate_module._embed_splits(cast("Store", None), model, data, "cpu")


def leaking(cases: list[Case], plan: SplitPlan) -> dict[str, list[Case]]:
    """The real split, then one test patient's case copied into training."""
    splits = assign_splits(cases, plan)
    splits["train"] = [*splits["train"], splits["test"][0]]
    return splits


def test_load_cohort_refuses_a_patient_in_train_and_test(
    tiny_store: Store, monkeypatch: pytest.MonkeyPatch
) -> None:
    data = load_cohort(tiny_store, TINY_COHORT, plan=SplitPlan())
    assert data.splits["test"], "the tiny cohort needs test patients for this test"
    monkeypatch.setattr(train_data, "assign_splits", leaking)
    with pytest.raises(PatientLeakError, match="1 patient id"):
        load_cohort(tiny_store, TINY_COHORT, plan=SplitPlan())


def test_evaluation_refuses_a_patient_in_train_and_test(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    cases = cases_for(4, "x")
    splits = {"train": cases[:3], "val": [], "test": cases[2:]}  # patient "Px1" on both sides
    data = CohortData(splits, LABELS, SplitPlan())
    monkeypatch.setattr(evaluate_module, "load_cohort", lambda *_a, **_k: data)
    write_json(tmp_path / "card.json", {"data": {"plan": SplitPlan().to_json()}})
    request = EvaluationRequest(tmp_path, "m", None, tmp_path / "out")
    model = tiny_model(modalities=("ecg",))
    with pytest.raises(PatientLeakError, match="Px1"):
        evaluate_module._cohort_for(cast("Store", None), request, model, tmp_path)


def label_oracle(train: Any, test: Any, names: Any) -> FloatArray:
    """A perfect oracle: the test labels themselves (unknown → 0.5)."""
    assert train and test
    return np.nan_to_num(label_matrix(test, names).astype(np.float64), nan=0.5)


def test_evaluate_after_a_one_epoch_training_run(tiny_store: Store, tmp_path: Path) -> None:
    home = tiny_store.settings.home
    request = TrainRequest(home=home, model_name="tiny", cohort=TINY_COHORT, epochs=1,
                           batch_size=8, config=tiny_config(), device="cpu")  # fmt: skip
    for stage in (pretrain, finetune, calibrate):
        stage(tiny_store, request, QuietReporter())
    assert (model_dir(home, "tiny") / "calibration.json").is_file()
    settings = dataclasses.replace(
        SETTINGS, min_cases=2, recipe=FusionRecipe(epochs=2, batch_size=16)
    )
    out = tmp_path / "evaluation"
    result = evaluate(
        tiny_store,
        EvaluationRequest(home, "tiny", TINY_COHORT, out, settings, device="cpu"),
        oracle=label_oracle,
    )
    assert result["calibrated"] is True
    assert result["summary"]["oracle_macro_auroc"] == pytest.approx(1.0)
    assert len(result["model"]["card"]["weights"]) == 64
    parsed = json.loads((out / "evaluation.json").read_text(),
                        parse_constant=lambda name: pytest.fail(f"{name} in JSON"))  # fmt: skip
    assert parsed["label_names"] == result["label_names"]
    assert set(parsed["subsets"]) == set(result["subsets"])
    assert subset_name(("xray", "ecg", "record", "report")) in parsed["subsets"]
    assert (out / "evaluation.md").read_text().startswith("# Evaluation")
    for plot in ("subset_label_auroc.png", "roc.png", "reliability.png"):
        assert (out / plot).read_bytes().startswith(b"\x89PNG")
