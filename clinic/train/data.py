"""From a cohort in the store to split datasets, with statistics fitted on training data only."""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass, replace
from typing import Any

import numpy as np
import torch

from clinic.data.cases import Case, common_label_names, load_cases
from clinic.data.dataset import CaseDataset, PreprocessConfig, Tokenize
from clinic.data.ecg_features import ecg_feature_names, ecg_features
from clinic.data.records import RecordNormalizer
from clinic.data.splits import SplitPlan, assign_splits, patients_of
from clinic.evaluation.guards import assert_patient_disjoint
from clinic.models.config import ModelConfig
from clinic.models.model import ClinicModel
from clinic.store.store import Store


@dataclass
class CohortData:
    """A cohort's cases split by patient, with the label names a model will predict."""

    splits: dict[str, list[Case]]
    label_names: tuple[str, ...]
    split_plan: SplitPlan

    def summary(self) -> dict[str, object]:
        """Counts per split (cases and patients) for model cards and logs."""
        return {
            "plan": self.split_plan.to_json(),
            "label_names": list(self.label_names),
            **{
                name: {"cases": len(cases), "patients": len(patients_of(cases))}
                for name, cases in self.splits.items()
            },
        }


def load_cohort(
    store: Store,
    cohort: str | None,
    *,
    plan: SplitPlan,
    label_vocabulary: str | None = None,
    label_names: Sequence[str] | None = None,
) -> CohortData:
    """Cases of ``cohort`` split by patient; label names default to those with positives in
    training. A patient in two splits is an error (checked, not assumed)."""
    with store.session() as session:
        cases = load_cases(session, cohort=cohort, label_vocabulary=label_vocabulary)
    if not cases:
        raise ValueError(f"cohort {cohort!r} has no cases")
    splits = assign_splits(cases, plan)
    assert_patient_disjoint(patients_of(splits["train"]), patients_of(splits["test"]))
    assert_patient_disjoint(patients_of(splits["train"]), patients_of(splits["val"]))
    names = tuple(label_names) if label_names else tuple(common_label_names(splits["train"], 2))
    if not names:
        raise ValueError(f"cohort {cohort!r} has no label with positives in its training split")
    return CohortData(splits, names, plan)


def fit_preprocess(config: ModelConfig, train: Sequence[Case]) -> PreprocessConfig:
    """Input sizes from the model config; record and ECG-measurement statistics from ``train``."""
    records = [case.record for case in train if case.record is not None]
    return PreprocessConfig(
        image_size=config.xray.image_size,
        ecg_rate_hz=config.ecg.sampling_rate_hz,
        ecg_window=config.ecg.window_samples,
        text_max_length=config.report.max_length,
        augment_images=not config.xray.freeze_backbone,
        record=RecordNormalizer.fit(records) if records else None,
    )


def fit_measurements(
    preprocess: PreprocessConfig, train: Sequence[Case], store: Store
) -> PreprocessConfig:
    """Add standardisation of measured ECG features, fitted on the training ECGs."""
    names = ecg_feature_names()
    rows = []
    for case in train:
        if case.ecg_blob is None:
            continue
        signal = np.asarray(store.blobs.get_array(case.ecg_blob), dtype=np.float32)
        values = ecg_features(signal, float(case.ecg_rate_hz))
        rows.append({n: float(v) if math.isfinite(float(v)) else math.nan
                     for n, v in zip(names, values, strict=True)})  # fmt: skip
    if not rows:
        return preprocess
    return replace(preprocess, measurements=RecordNormalizer.fit(rows, names))


def fixed_length_tokenizer(model: ClinicModel) -> Tokenize:
    """Tokenise to exactly ``max_length`` tokens, so cached items stack into one batch."""
    tokenizer: Any = model.encoders["report"].tokenizer
    length = model.preprocess.text_max_length

    def tokenize(texts: list[str]) -> dict[str, torch.Tensor]:
        encoded = tokenizer(
            texts, padding="max_length", truncation=True, max_length=length, return_tensors="pt"
        )
        return {"input_ids": encoded["input_ids"], "attention_mask": encoded["attention_mask"]}

    return tokenize


def make_dataset(
    cases: Sequence[Case],
    store: Store,
    model: ClinicModel,
    *,
    train: bool,
    seed: int = 0,
    preprocess: PreprocessConfig | None = None,
) -> CaseDataset:
    """A dataset that prepares inputs exactly as ``model`` expects them (``preprocess``
    overrides the model's, e.g. full-length ECGs for sliding-window evaluation)."""
    tokenize = fixed_length_tokenizer(model) if "report" in model.modalities else None
    measure = ecg_features if model.preprocess.measurements is not None else None
    return CaseDataset(
        cases,
        store.blobs,
        preprocess or model.preprocess,
        label_names=model.label_names,
        tokenize=tokenize,
        measure_ecg=measure,
        train=train,
        seed=seed,
    )
