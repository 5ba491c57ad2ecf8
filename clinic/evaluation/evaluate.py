"""``clinic evaluate``: the model on every modality subset, beside baselines trained in the run.

Steps: embed train / validation / test once with the model's encoders; score the model's own
fusion head (calibrated per subset) on every subset with enough test cases; train the baselines
(each modality alone, late fusion, fusion without modality dropout, a head per subset) on the
same embeddings; add zero-shot prompt scoring, cross-modal retrieval and, when given, an oracle.
Writes ``evaluation.json``, ``evaluation.md`` and PNG plots.
"""

from __future__ import annotations

import json
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import numpy.typing as npt
import torch

from clinic.data.cases import Case
from clinic.data.splits import SplitPlan, patients_of
from clinic.evaluation.guards import align_label_columns, assert_patient_disjoint
from clinic.evaluation.metrics import multilabel_metrics, reliability_curve, to_jsonable
from clinic.evaluation.plots import plot_heatmap, plot_reliability, plot_roc_curves
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
from clinic.evaluation.tables import markdown_table
from clinic.evaluation.zeroshot import retrieval_report, zero_shot_report
from clinic.models.model import ClinicModel
from clinic.store.store import Store
from clinic.train.artifacts import load_calibration, load_model, model_dir, read_json
from clinic.train.data import CohortData, load_cohort, make_dataset
from clinic.train.device import pick_device, seed_everything
from clinic.train.embeddings import EmbeddingTable, embed_dataset
from clinic.train.runner import feature_cache_dir
from schemas.modalities import MODALITIES, subset_name

FloatArray = npt.NDArray[np.float64]
OracleFn = Callable[[Sequence[Case], Sequence[Case], Sequence[str]], FloatArray]


@dataclass(frozen=True)
class EvaluationRequest:
    home: Path
    model_name: str
    cohort: str | None
    out: Path
    settings: EvaluationSettings = field(default_factory=EvaluationSettings)
    device: str | None = None


def evaluate(
    store: Store, request: EvaluationRequest, oracle: OracleFn | None = None
) -> dict[str, Any]:
    """Run the whole evaluation and write its files under ``request.out``."""
    seed_everything(request.settings.seed)
    directory = model_dir(request.home, request.model_name)
    model = load_model(directory)
    calibration = load_calibration(directory)
    data = _cohort_for(store, request, model, directory)
    model.bind_feature_cache(feature_cache_dir(request.home))
    tables = _embed_splits(store, model, data, request.device)
    result = evaluate_tables(model, calibration, tables, data, request.settings)
    if oracle is not None:
        result["oracle"] = _oracle(oracle, data, tables["test"], model.label_names, request)
        result["summary"]["oracle_macro_auroc"] = result["oracle"]["macro_auroc"]
    result["model"] = {
        "name": request.model_name,
        "card": read_json(directory / "card.json")["hashes"],
    }
    write_outputs(result, model, calibration_present=calibration is not None, out=request.out)
    _write_full_subset_curves(model, calibration, tables["test"], request.out)
    return result


def _write_full_subset_curves(
    model: ClinicModel, calibration: Any, test: EmbeddingTable, out: Path
) -> None:
    """ROC curves and reliability diagram of the calibrated model on its largest subset."""
    complete = tuple(m for m in model.modalities if bool(test.present[m].any()))
    rows = test.having(complete).numpy()
    if rows.sum() < 2:
        return
    scores = calibrated_scorer(model.fusion.cpu().eval(), test, calibration)(complete)
    labels = test.labels.double().numpy()
    write_curves(out, labels[rows], scores[rows], model.label_names, subset_name(complete))


def _cohort_for(
    store: Store, request: EvaluationRequest, model: ClinicModel, directory: Path
) -> CohortData:
    """The cohort split exactly as the model's training split it (plan read from its card)."""
    plan_json = read_json(directory / "card.json")["data"]["plan"]
    plan = SplitPlan(
        val_folds=frozenset(plan_json["val_folds"]),
        test_folds=frozenset(plan_json["test_folds"]),
        val_fraction=plan_json["val_fraction"],
        test_fraction=plan_json["test_fraction"],
        seed=plan_json["seed"],
    )
    data = load_cohort(store, request.cohort, plan=plan, label_names=model.label_names)
    assert_patient_disjoint(patients_of(data.splits["train"]), patients_of(data.splits["test"]))
    return data


def _embed_splits(
    store: Store, model: ClinicModel, data: CohortData, device_name: str | None
) -> dict[str, EmbeddingTable]:
    device = pick_device(device_name)
    model.to(device)
    tables = {}
    for split in ("train", "val", "test"):
        dataset = make_dataset(data.splits[split], store, model, train=False)
        table = embed_dataset(model, dataset, device)
        table.labels = torch.from_numpy(
            align_label_columns(dataset.labels, dataset.label_names, model.label_names)
        )
        tables[split] = table
    model.cpu()
    return tables


def evaluate_tables(
    model: ClinicModel,
    calibration: Any,
    tables: Mapping[str, EmbeddingTable],
    data: CohortData,
    settings: EvaluationSettings,
) -> dict[str, Any]:
    """Every figure of the evaluation from embedding tables (no image or signal decoding)."""
    test, names = tables["test"], model.label_names
    groups = np.array([case.patient_id for case in data.splits["test"]])
    subsets = subsets_in(test, model.modalities, settings.min_cases)
    if not subsets:
        raise ValueError(f"no modality subset has {settings.min_cases} test cases")
    fusion = model.fusion.cpu().eval()
    ours = evaluate_scorer(calibrated_scorer(fusion, test, calibration), test, subsets, names,
                           groups, settings)  # fmt: skip
    make = lambda: fresh_fusion(model.config.embed_dim, len(names), model.config.fusion)  # noqa: E731
    baselines = train_baselines(tables["train"], tables["val"], subsets, make, settings.recipe)
    scored = {
        name: evaluate_scorer(scorer, test, subsets, names, groups, settings)
        for name, scorer in baseline_scorers(baselines, test).items()
    }
    complete = max(subsets, key=len)
    singles = {
        m: evaluate_scorer(
            single_scorer(baselines, test, m), test, [complete], names, groups, settings
        )[subset_name(complete)]
        for m in baselines.single
    }
    with torch.no_grad():
        fused = fusion(test.embeddings, test.present).fused.double().numpy()
    return {
        "label_names": list(names),
        "n": {split: len(table) for split, table in tables.items()},
        "data": data.summary(),
        "subsets": ours,
        "baselines": scored | {"single_on_complete_cases": singles},
        "zero_shot": zero_shot_report(model, test, names),
        "retrieval": retrieval_report(test, fused, groups),
        "summary": _summary(ours, scored, singles, complete),
        "calibrated": calibration is not None,
    }


def _summary(
    ours: Mapping[str, Mapping[str, Any]],
    baselines: Mapping[str, Mapping[str, Mapping[str, Any]]],
    singles: Mapping[str, Mapping[str, Any]],
    complete: tuple[str, ...],
) -> dict[str, Any]:
    full = subset_name(complete)
    best_single = max((s.get("macro_auroc") or 0.0 for s in singles.values()), default=None)
    subsets = {
        name: {
            "macro_auroc": macro(ours, name),
            "ece": ours[name].get("ece"),
            "dedicated_macro_auroc": macro(baselines["dedicated"], name),
            "late_fusion_macro_auroc": macro(baselines["late_fusion"], name),
            "no_dropout_macro_auroc": macro(baselines["no_dropout"], name),
        }
        for name in ours
    }
    return {
        "full_subset": full,
        "full_macro_auroc": macro(ours, full),
        "best_single_macro_auroc": best_single,
        "best_single_modality": max(singles, key=lambda m: singles[m].get("macro_auroc") or 0.0),
        "subsets": subsets,
    }


def _oracle(
    oracle: OracleFn,
    data: CohortData,
    test: EmbeddingTable,
    names: Sequence[str],
    request: EvaluationRequest,
) -> dict[str, Any]:
    scores = oracle(data.splits["train"], data.splits["test"], names)
    groups = np.array([case.patient_id for case in data.splits["test"]])
    return multilabel_metrics(test.labels.double().numpy(), scores, names, groups=groups,
                              n_resamples=request.settings.n_resamples)  # fmt: skip


def write_outputs(
    result: Mapping[str, Any], model: ClinicModel, *, calibration_present: bool, out: Path
) -> None:
    """evaluation.json, evaluation.md and the plots (heatmap of subset × label AUROC)."""
    out.mkdir(parents=True, exist_ok=True)
    (out / "evaluation.json").write_text(
        json.dumps(to_jsonable(result), indent=2, sort_keys=True, allow_nan=False) + "\n"
    )
    (out / "evaluation.md").write_text(markdown_summary(result))
    names = list(result["label_names"])
    subsets = list(result["subsets"])
    grid = np.array(
        [[_num(result["subsets"][s]["labels"][n]["auroc"]) for n in names] for s in subsets]
    )
    plot_heatmap(grid, subsets, names, out / "subset_label_auroc.png", "AUROC by modality subset")


def write_curves(
    out: Path, labels: FloatArray, probabilities: FloatArray, names: Sequence[str], title: str
) -> None:
    """ROC curves and reliability diagram of one subset's calibrated probabilities."""
    plot_roc_curves(labels, probabilities, names, out / "roc.png", title)
    reliability = {
        name: reliability_curve(labels[:, k], probabilities[:, k]) for k, name in enumerate(names)
    }
    plot_reliability(reliability, out / "reliability.png", title)


def markdown_summary(result: Mapping[str, Any]) -> str:
    """A Markdown table: one row per subset, ours beside each baseline."""
    rows = [
        {"subset": name, "ours": s["macro_auroc"], "ECE": s["ece"],
         "dedicated": s["dedicated_macro_auroc"], "late fusion": s["late_fusion_macro_auroc"],
         "no dropout": s["no_dropout_macro_auroc"]}
        for name, s in result["summary"]["subsets"].items()
    ]  # fmt: skip
    header = "# Evaluation\n\nMacro AUROC per modality subset (test split).\n\n"
    columns = ["subset", "ours", "ECE", "dedicated", "late fusion", "no dropout"]
    return header + markdown_table(rows, columns) + "\n"


def _num(value: object) -> float:
    return float(value) if isinstance(value, int | float) else float("nan")


__all__ = ["MODALITIES", "EvaluationRequest", "EvaluationSettings", "evaluate", "evaluate_tables"]
