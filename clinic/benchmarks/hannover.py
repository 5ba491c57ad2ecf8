"""``clinic run hannover-benchmark``: ICU admission from a chest X-ray, from labs, and from both.

Protocol (Hannover Medical School COVID-19 image repository):

* ``data.csv`` + ``png/`` are imported through the ``hannover`` importer into a private store;
  the target is ``icu_admission`` (an ICU admission is recorded for the patient's stay);
* with only ~170 radiographs of ~50 patients, there is no held-out test set: models are scored
  by patient-grouped, label-stratified K-fold cross-validation (AUROC per fold, mean ± std).
  Folds are drawn from image content hashes, so they do not depend on the store's pseudonyms;
* X-ray: frozen ImageNet EfficientNet-Lite0 features through the model's projection (computed
  once, then cached); labs: the binned labs (record extras) + sex through the record encoder,
  standardised with statistics of each fold's training rows only. The encoders are not trained
  (random projection and record encoder, fixed per seed); only fusion heads train, on the
  embedding table, one per fold and model, all with the same recipe;
* models: ``xray`` (X-ray alone), ``labs`` (labs alone), ``xray+labs`` (the fusion head over
  both).
"""

from __future__ import annotations

import dataclasses
import math
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import numpy.typing as npt
import torch
from sklearn.model_selection import StratifiedGroupKFold

from clinic.benchmarks.common import Stopwatch, benchmark_store, ingest_items
from clinic.data.cases import Case, load_cases
from clinic.data.records import RecordNormalizer
from clinic.evaluation.metrics import auroc, bootstrap_ci, to_jsonable
from clinic.ingest.importers.hannover import VOCABULARY, import_hannover
from clinic.models.cache import FrozenFeatureCache
from clinic.models.config import ModelConfig, load_model_config
from clinic.models.fusion import ModalityFusion
from clinic.models.model import ClinicModel
from clinic.store.store import Store
from clinic.train.data import fit_preprocess, make_dataset
from clinic.train.device import pick_device, seed_everything
from clinic.train.embeddings import (
    EmbeddingTable,
    FusionRecipe,
    embed_dataset,
    fusion_logits,
    train_fusion,
)
from clinic.train.runner import QuietReporter, Reporter

FloatArray = npt.NDArray[np.float64]
IntArray = npt.NDArray[np.intp]

COHORT = "hannover"
TARGET = "icu_admission"
# The importer's labs, named as it stores them: ``<lab>_val`` with "-" made "_".
LABS = ("crp", "d-dimer", "factor_xii", "ldh", "lymphocytes", "neutrophils", "pco2", "po2")
LAB_FIELDS = tuple(f"{lab.replace('-', '_')}_val" for lab in LABS)
RECORD_FEATURES = (*LAB_FIELDS, "is_female")
ICU_OFFSET = "icu_admission_offset_days"  # read for the protocol only, never a feature
MODELS: dict[str, tuple[str, ...]] = {
    "xray": ("xray",),
    "labs": ("record",),
    "xray+labs": ("xray", "record"),
}
SOURCE = (
    "Hannover Medical School COVID-19 image repository (data.csv + png/), CC BY 3.0; "
    "Winther et al., doi:10.6084/m9.figshare.12275009"
)


@dataclass(frozen=True)
class HannoverOptions:
    data_dir: Path
    folds: int = 5
    seeds: int = 1
    fusion_epochs: int = 60
    workers: int = 2
    home: Path | None = None
    config_name: str = "cpu-small"
    device: str | None = None


@dataclass
class HannoverCases:
    """Usable images (X-ray + known target) in a stable order, with what was left out."""

    cases: list[Case]
    left_out: int

    @property
    def labels(self) -> FloatArray:
        return np.array([c.labels[TARGET] for c in self.cases], dtype=np.float64)  # (N,)

    @property
    def patients(self) -> list[str]:
        return [c.patient_id for c in self.cases]


def run_hannover_benchmark(
    options: HannoverOptions, reporter: Reporter | None = None
) -> dict[str, Any]:
    """Import, embed once per seed and fold, train the three fusion heads, cross-validate."""
    reporter = reporter or QuietReporter()
    watch = Stopwatch()
    with benchmark_store(options.home) as store:
        data = import_cases(store, options, reporter)
        watch.lap("import")
        folds = patient_folds(data, options.folds)
        scores = cross_validate(store, data, folds, options, reporter)
        watch.lap("cross_validation")
    labels = data.labels
    result = {
        "n": len(data.cases),
        "patients": len(set(data.patients)),
        "positives": int(labels.sum()),
        "positive_patients": len({c.patient_id for c in data.cases if c.labels[TARGET] >= 0.5}),
        "folds": options.folds,
        "seeds": options.seeds,
        "models": {name: summarise(scores[name], labels, folds, data.patients) for name in MODELS},
        "protocol": protocol(data, options),
        "seconds": watch.report(),
    }
    return dict(to_jsonable(result))  # NaN (an undefined AUROC) becomes null


def import_cases(store: Store, options: HannoverOptions, reporter: Reporter) -> HannoverCases:
    reporter.note(f"importing {options.data_dir}")
    ingest_items(store, list(import_hannover(options.data_dir)), COHORT, options.workers)
    with store.session() as session:
        cases = load_cases(session, cohort=COHORT, label_vocabulary=VOCABULARY,
                           extra_fields=(*LAB_FIELDS, ICU_OFFSET))  # fmt: skip
    return usable_cases(cases)


def usable_cases(cases: Sequence[Case]) -> HannoverCases:
    """Cases with an image and a known target, ordered by image content hash (stable)."""
    usable = [c for c in cases if c.xray_blob is not None and TARGET in c.labels]
    if not usable:
        raise ValueError("no Hannover image with a known icu_admission label was imported")
    ordered = sorted(usable, key=lambda c: (c.xray_blob or "", c.case_id))
    return HannoverCases(ordered, len(cases) - len(usable))


def patient_folds(data: HannoverCases, k: int, seed: int = 0) -> IntArray:
    """(N,) fold per image: patient-grouped, stratified by the target, independent of the
    pseudonyms (patients are numbered by their first image in content-hash order)."""
    first_seen: dict[str, int] = {}
    for patient in data.patients:
        first_seen.setdefault(patient, len(first_seen))
    if len(first_seen) < k:
        raise ValueError(f"{len(first_seen)} patients cannot fill {k} folds")
    groups = np.array([first_seen[p] for p in data.patients])
    splitter = StratifiedGroupKFold(n_splits=k, shuffle=True, random_state=seed)
    folds = np.zeros(len(groups), dtype=np.intp)
    for fold, (_train, test) in enumerate(splitter.split(groups, data.labels, groups)):
        folds[test] = fold
    return folds


def cross_validate(
    store: Store,
    data: HannoverCases,
    folds: IntArray,
    options: HannoverOptions,
    reporter: Reporter,
) -> dict[str, FloatArray]:
    """Model name → (seeds, N) out-of-fold logits."""
    config = load_model_config(options.config_name)
    device = pick_device(options.device)
    cache = FrozenFeatureCache()  # EfficientNet features: computed once for all seeds and folds
    scores = {name: np.full((options.seeds, len(data.cases)), np.nan) for name in MODELS}
    for seed in range(options.seeds):
        seed_everything(seed)
        model = build_model(config, data.cases, cache).to(device)
        for fold in range(options.folds):
            reporter.note(f"seed {seed + 1}/{options.seeds}: fold {fold + 1}/{options.folds}")
            train, test = np.flatnonzero(folds != fold), np.flatnonzero(folds == fold)
            table = embed_fold(model, store, data.cases, train, device)
            recipe = FusionRecipe(epochs=options.fusion_epochs, seed=seed * 1000 + fold)
            for name, modalities in MODELS.items():
                scores[name][seed, test] = fit_and_score(config, table, train, test,
                                                         modalities, recipe)  # fmt: skip
    return scores


def build_model(
    config: ModelConfig, cases: Sequence[Case], cache: FrozenFeatureCache
) -> ClinicModel:
    """X-ray + record model; the record normaliser here only fixes the feature list (each fold
    brings its own statistics)."""
    placeholder = RecordNormalizer(RECORD_FEATURES, (0.0,) * len(RECORD_FEATURES),
                                   (1.0,) * len(RECORD_FEATURES))  # fmt: skip
    preprocess = dataclasses.replace(fit_preprocess(config, []), record=placeholder)
    model = ClinicModel(config, preprocess, (TARGET,), ("xray", "record"))
    model.feature_cache = cache
    return model


def embed_fold(
    model: ClinicModel,
    store: Store,
    cases: Sequence[Case],
    train: IntArray,
    device: torch.device,
) -> EmbeddingTable:
    """Every image's embeddings, labs standardised with the fold's training rows only."""
    records = [cases[i].record or {} for i in train]
    preprocess = dataclasses.replace(
        model.preprocess, record=RecordNormalizer.fit(records, RECORD_FEATURES)
    )
    dataset = make_dataset(cases, store, model, train=False, preprocess=preprocess)
    return embed_dataset(model, dataset, device)


def fit_and_score(
    config: ModelConfig,
    table: EmbeddingTable,
    train: IntArray,
    test: IntArray,
    modalities: Sequence[str],
    recipe: FusionRecipe,
) -> FloatArray:
    """(len(test),) logits of a fusion head trained on the ``train`` rows with ``modalities``."""
    torch.manual_seed(recipe.seed)
    f = config.fusion
    fusion = ModalityFusion(config.embed_dim, 1, layers=f.layers, heads=f.heads,
                            dim_feedforward=f.dim_feedforward, dropout=f.dropout)  # fmt: skip
    train_rows = table.rows(torch.from_numpy(train))
    train_fusion(fusion, train_rows, recipe, modalities=modalities)
    logits = fusion_logits(fusion, table.rows(torch.from_numpy(test)), modalities)  # (n, 1)
    return logits[:, 0]


def summarise(
    scores: FloatArray, labels: FloatArray, folds: IntArray, patients: Sequence[str]
) -> dict[str, Any]:
    """AUROC per fold (averaged over seeds), mean ± std over folds, pooled out-of-fold AUROC
    with a patient-bootstrap interval (scores of different folds' heads, so indicative)."""
    n_folds = int(folds.max()) + 1
    per_fold = [
        float(np.mean([auroc(labels[folds == k], run[folds == k]) for run in scores]))
        for k in range(n_folds)
    ]
    defined = [v for v in per_fold if math.isfinite(v)]
    per_seed = [
        float(np.nanmean([auroc(labels[folds == k], run[folds == k]) for k in range(n_folds)]))
        for run in scores
    ]
    probabilities = 1.0 / (1.0 + np.exp(-scores))  # (seeds, N)
    pooled = np.asarray(probabilities.mean(axis=0), dtype=np.float64)  # (N,) seed mean
    low, high = bootstrap_ci(auroc, labels, pooled, groups=np.asarray(patients))
    return {
        "auroc": float(np.mean(defined)) if defined else None,
        "std": float(np.std(defined)) if defined else None,
        "folds": [v if math.isfinite(v) else None for v in per_fold],
        "folds_defined": len(defined),
        "seed_std": float(np.std(per_seed)),
        "pooled_auroc": auroc(labels, pooled),
        "pooled_auroc_ci": [low, high],
    }


def protocol(data: HannoverCases, options: HannoverOptions) -> dict[str, Any]:
    offsets = [(c.record or {}).get(ICU_OFFSET, math.nan) for c in data.cases]
    in_icu = sum(1 for value in offsets if math.isfinite(value) and value <= 0)
    return {
        "source": SOURCE,
        "target": (
            "icu_admission: an ICU admission is recorded for the patient's stay (per patient, "
            "so every image of a patient carries the same label)"
        ),
        "evaluation": (
            f"patient-grouped, label-stratified {options.folds}-fold cross-validation "
            "(sklearn StratifiedGroupKFold, seed 0); AUROC per fold, mean and std over folds"
        ),
        "xray": "frozen ImageNet EfficientNet-Lite0 (packaged weights) via the model projection",
        "labs": f"record encoder over {list(RECORD_FEATURES)} (binned labs; NaN = missing)",
        "encoders": "not trained (random init per seed); only the fusion heads train",
        "fusion": f"{options.config_name} fusion head, {options.fusion_epochs} epochs, no "
        "early stopping; one head per fold and model",
        "caveat": (
            f"{in_icu} of {len(data.cases)} images were taken on or after the day of ICU "
            "admission: their X-ray (supine AP, lines, tubes) and labs (blood gases) can show "
            "the ICU stay itself rather than predict it"
        ),
        "left_out_without_image_or_label": data.left_out,
    }
