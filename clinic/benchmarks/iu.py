"""``clinic run iu-benchmark``: three ways to train the report encoder, on real IU reports.

Protocol (Indiana University chest X-ray reports, Open-i):

* the reports are imported through the ``iu`` importer into a private store; the target is the
  report's "Problems" list (vocabulary ``iu_problems``), coded by people reading that report;
* a coded report lists every problem its coder saw, so a problem it does not list is a
  *negative*; reports marked "No Indexing" were never coded and are left out;
* the K most frequent problems of the training subset are predicted from the report text alone.
  The text states the findings, so this is a text-classification benchmark of how the MiniLM
  encoder is trained, not a measure of reading images;
* IU publishes no patient identifier: each study is its own patient, so the patient-level split
  is a study-level one. Studies are assigned by a hash of their text, which keeps the split
  stable across stores and keeps identical reports on one side;
* on the same split and training subset, three methods train MiniLM + the fusion head:
  **frozen** (base frozen, projection + head train on cached features), **lora** (LoRA adapters
  on the frozen base, rank from the model config; only adapters + head train) and **full**
  (every weight trains, the base at a small learning rate).
"""

from __future__ import annotations

import dataclasses
import hashlib
import math
import time
from collections import Counter
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Literal

import numpy as np
import numpy.typing as npt
import torch
from torch.utils.data import DataLoader

from clinic.benchmarks.common import Stopwatch, benchmark_store, ingest_items
from clinic.data.cases import Case, load_cases
from clinic.data.dataset import CaseDataset, PreprocessConfig, make_collate
from clinic.data.splits import patients_of
from clinic.evaluation.guards import assert_patient_disjoint
from clinic.evaluation.metrics import multilabel_metrics, to_jsonable
from clinic.ingest.importers.iu import PROBLEMS_VOCABULARY, import_iu
from clinic.models.cache import FrozenFeatureCache
from clinic.models.config import ModelConfig, load_model_config
from clinic.models.model import ClinicModel
from clinic.store.store import Store
from clinic.train.adapters import attach_model_adapters
from clinic.train.data import fit_preprocess, make_dataset
from clinic.train.device import autocast_for, pick_device, seed_everything, to_device
from clinic.train.loops import finetune_epoch
from clinic.train.losses import positive_weights
from clinic.train.runner import QuietReporter, Reporter

FloatArray = npt.NDArray[np.float64]
Method = Literal["frozen", "lora", "full"]
METHODS: tuple[Method, ...] = ("frozen", "lora", "full")
COHORT = "iu"
SOURCE = (
    "Indiana University chest X-ray collection, reports (indiana_reports.csv), NLM Open-i; "
    "Demner-Fushman et al., Preparing a collection of radiology examinations for distribution "
    "and retrieval, JAMIA 2016"
)


@dataclass(frozen=True)
class IuOptions:
    reports_dir: Path
    seeds: int = 1
    max_train: int = 600
    epochs: int = 2
    head_epochs: int = 30
    n_labels: int = 8
    max_length: int = 96
    test_fraction: float = 0.2
    batch_size: int = 16
    head_lr: float = 1e-3
    adapter_lr: float = 1e-3
    base_lr: float = 5e-5
    workers: int = 2
    home: Path | None = None
    config_name: str = "cpu-small"
    device: str | None = None


@dataclass
class IuSplit:
    """Train subset and test reports, labels restricted to ``label_names`` with negatives."""

    train: list[Case]
    test: list[Case]
    label_names: tuple[str, ...]
    training_pool: int
    left_out_not_coded: int
    left_out_without_text: int


@dataclass
class IuData:
    """Tokenised datasets and the settings shared by every method and seed."""

    config: ModelConfig
    preprocess: PreprocessConfig
    train: CaseDataset
    test: CaseDataset
    feature_cache: FrozenFeatureCache  # frozen MiniLM features, computed once for all seeds


@dataclass
class MethodRun:
    probabilities: FloatArray  # (N_test, K)
    trainable_parameters: int
    total_parameters: int
    train_seconds: float
    predict_seconds: float


def run_iu_benchmark(options: IuOptions, reporter: Reporter | None = None) -> dict[str, Any]:
    """Import, split, train the three methods over the seeds, score the test reports."""
    reporter = reporter or QuietReporter()
    watch = Stopwatch()
    with benchmark_store(options.home) as store:
        split = import_and_split(store, options, reporter)
        watch.lap("import")
        data = build_data(store, split, options)
        watch.lap("prepare")
        runs: dict[Method, list[MethodRun]] = {method: [] for method in METHODS}
        for seed in range(options.seeds):
            for method in METHODS:
                reporter.note(f"seed {seed + 1}/{options.seeds}: {method}")
                runs[method].append(train_method(method, data, options, seed))
                watch.lap(f"{method}_seed{seed}")
    labels = data.test.labels.astype(np.float64)
    result = {
        "n": len(split.train) + len(split.test),
        "split": {
            "train": len(split.train),
            "test": len(split.test),
            "training_pool": split.training_pool,
        },
        "seeds": options.seeds,
        "labels": list(split.label_names),
        "methods": {
            method: summarise(runs[method], labels, split.label_names, _epochs(method, options))
            for method in METHODS
        },
        "protocol": protocol(split, data.config, options),
        "seconds": watch.report(),
    }
    return dict(to_jsonable(result))  # NaN (an undefined AUROC) becomes null


def import_and_split(store: Store, options: IuOptions, reporter: Reporter) -> IuSplit:
    reporter.note(f"importing {options.reports_dir}")
    ingest_items(store, list(import_iu(options.reports_dir)), COHORT, options.workers)
    with store.session() as session:
        cases = load_cases(session, cohort=COHORT, label_vocabulary=PROBLEMS_VOCABULARY)
    return split_reports(cases, options)


def split_reports(cases: Sequence[Case], options: IuOptions) -> IuSplit:
    """Coded reports with text, split by text hash; the training subset and labels from it."""
    coded = [case for case in cases if case.labels]
    usable = [case for case in coded if case.report]
    test = [case for case in usable if text_unit(case) < options.test_fraction]
    pool = [case for case in usable if text_unit(case) >= options.test_fraction]
    train = sorted(pool, key=lambda case: _text_digest(case, salt="subset"))[: options.max_train]
    assert_patient_disjoint(patients_of(train), patients_of(test))
    names = top_labels(train, options.n_labels)
    if not train or not test or not names:
        raise ValueError(
            f"need coded reports to train and test on: {len(train)} train / {len(test)} test"
        )
    return IuSplit(
        with_negatives(train, names), with_negatives(test, names), names,
        training_pool=len(pool), left_out_not_coded=len(cases) - len(coded),
        left_out_without_text=len(coded) - len(usable),
    )  # fmt: skip


def text_unit(case: Case) -> float:
    """A stable number in [0, 1) from the report text: the same text, the same side."""
    return int(_text_digest(case, salt="split")[:16], 16) / 16**16


def _text_digest(case: Case, salt: str) -> str:
    return hashlib.sha256(f"{salt}:{case.report or ''}".encode()).hexdigest()


def top_labels(cases: Sequence[Case], k: int) -> tuple[str, ...]:
    """The ``k`` most frequent positive labels (ties by name), most frequent first."""
    counts = Counter(name for case in cases for name, v in case.labels.items() if v >= 0.5)
    ranked = sorted(counts.items(), key=lambda item: (-item[1], item[0]))
    return tuple(name for name, _count in ranked[:k])


def with_negatives(cases: Sequence[Case], names: Sequence[str]) -> list[Case]:
    """Copies labelled with exactly ``names``: a problem the coder did not list is 0."""
    return [
        dataclasses.replace(
            case, labels={n: 1.0 if case.labels.get(n, 0.0) >= 0.5 else 0.0 for n in names}
        )
        for case in cases
    ]


def build_data(store: Store, split: IuSplit, options: IuOptions) -> IuData:
    """Tokenise once (fixed length; padding is trimmed per batch by the model)."""
    base = load_model_config(options.config_name)
    config = dataclasses.replace(
        base, report=dataclasses.replace(base.report, max_length=options.max_length)
    )
    preprocess = fit_preprocess(config, split.train)
    template = ClinicModel(config, preprocess, split.label_names, ("report",))
    datasets = [
        make_dataset(split.train, store, template, train=True),
        make_dataset(split.test, store, template, train=False),
    ]
    for dataset in datasets:
        dataset.warm()
    return IuData(config, preprocess, datasets[0], datasets[1], FrozenFeatureCache())


def build_model(
    method: Method,
    config: ModelConfig,
    preprocess: PreprocessConfig,
    label_names: Sequence[str],
    feature_cache: FrozenFeatureCache,
) -> ClinicModel:
    """The report-only model for ``method``, with exactly the method's weights trainable."""
    report = dataclasses.replace(config.report, freeze_base=method != "full")
    config = dataclasses.replace(config, report=report)
    model = ClinicModel(config, preprocess, label_names, ("report",))
    if method == "lora":
        attach_model_adapters(model, "iu")  # base and projection frozen, adapters trainable
    if method == "frozen":
        model.feature_cache = feature_cache
    model.logit_scale.requires_grad_(False)  # contrastive only: unused by a supervised head
    model.fusion.reconstruct.requires_grad_(False)  # one modality: nothing to reconstruct
    return model


def make_optimiser(method: Method, model: ClinicModel, options: IuOptions) -> torch.optim.AdamW:
    """The head at ``head_lr``; adapters at ``adapter_lr``; a fine-tuned base at ``base_lr``."""
    encoder: Any = model.encoders["report"]
    base = {id(p) for p in encoder.base.parameters()}
    trainable = [p for p in model.parameters() if p.requires_grad]
    encoder_lr = options.adapter_lr if method == "lora" else options.base_lr
    groups = [
        {"params": [p for p in trainable if id(p) not in base], "lr": options.head_lr},
        {"params": [p for p in trainable if id(p) in base], "lr": encoder_lr},
    ]
    return torch.optim.AdamW([g for g in groups if g["params"]], weight_decay=1e-2)


def train_method(method: Method, data: IuData, options: IuOptions, seed: int) -> MethodRun:
    """Train ``method`` for its epochs (no early stopping), then predict the test reports."""
    seed_everything(seed)
    device = pick_device(options.device)
    model = build_model(
        method, data.config, data.preprocess, data.train.label_names, data.feature_cache
    ).to(device)
    optimiser = make_optimiser(method, model, options)
    weights = positive_weights(torch.from_numpy(data.train.labels))
    started = time.perf_counter()
    for epoch in range(_epochs(method, options)):
        batches = _loader(data.train, options.batch_size, seed, epoch)
        finetune_epoch(model, batches, optimiser, device, drop_probability=0.0,
                       reconstruction_weight=0.0, pos_weight=weights)  # fmt: skip
    trained = time.perf_counter()
    probabilities = predict(model, data.test, device)
    return MethodRun(
        probabilities,
        trainable_parameters=sum(p.numel() for p in model.parameters() if p.requires_grad),
        total_parameters=sum(p.numel() for p in model.parameters()),
        train_seconds=trained - started,
        predict_seconds=time.perf_counter() - trained,
    )


def _epochs(method: Method, options: IuOptions) -> int:
    """Head-only training costs almost nothing once features are cached: it gets more epochs."""
    return options.head_epochs if method == "frozen" else options.epochs


def _loader(dataset: CaseDataset, batch_size: int, seed: int, epoch: int) -> DataLoader[Any]:
    generator = torch.Generator()
    generator.manual_seed(seed * 100_003 + epoch)
    return DataLoader(dataset, batch_size=batch_size, shuffle=True, generator=generator,
                      collate_fn=make_collate(dataset.preprocess))  # fmt: skip


@torch.no_grad()
def predict(model: ClinicModel, dataset: CaseDataset, device: torch.device) -> FloatArray:
    """(N, K) probabilities in dataset order."""
    model.eval()
    loader = DataLoader(dataset, batch_size=64, collate_fn=make_collate(dataset.preprocess))
    parts = []
    for batch in loader:
        with autocast_for(device):
            logits = model(to_device(batch, device)).logits  # (B, K)
        parts.append(torch.sigmoid(logits.float()).cpu().numpy())
    return np.concatenate(parts).astype(np.float64)


def summarise(
    runs: Sequence[MethodRun], labels: FloatArray, names: Sequence[str], epochs: int
) -> dict[str, Any]:
    """Macro AUROC mean and std over seeds, the first seed's bootstrap interval, per label."""
    metrics = [multilabel_metrics(labels, run.probabilities, names) for run in runs]
    macros = [_number(m["macro_auroc"]) for m in metrics]
    per_label = {
        name: float(np.mean([_number(m["labels"][name]["auroc"]) for m in metrics]))
        for name in names
    }  # a label without test positives has no AUROC: NaN here, null in the JSON
    return {
        "macro_auroc": float(np.mean(macros)),
        "std": float(np.std(macros)),
        "macro_auroc_runs": macros,
        "macro_auroc_ci_first_seed": metrics[0]["macro_auroc_ci"],
        "per_label": per_label,
        "trainable_parameters": runs[0].trainable_parameters,
        "total_parameters": runs[0].total_parameters,
        "train_seconds": round(float(np.mean([r.train_seconds for r in runs])), 1),
        "predict_seconds": round(float(np.mean([r.predict_seconds for r in runs])), 1),
        "epochs": epochs,
    }


def _number(value: float | None) -> float:
    return math.nan if value is None else float(value)


def protocol(split: IuSplit, config: ModelConfig, options: IuOptions) -> dict[str, Any]:
    positives = {
        name: int(sum(case.labels[name] for case in split.test)) for name in split.label_names
    }
    return {
        "source": SOURCE,
        "task": (
            "multi-label text classification of the report's Problems (coded by people from "
            "this report) from the report text only; the text states the findings, so the "
            "figures compare training methods, not image reading"
        ),
        "labels": (
            f"the {len(split.label_names)} most frequent Problems of the training subset; a "
            "problem a coded report does not list is a negative (the coders listed every "
            "problem); reports marked 'No Indexing' were never coded and are left out"
        ),
        "test_positives": positives,
        "split": (
            "patient-level: IU has no patient ids, so each study is its own patient; test = "
            f"reports whose text hash falls in the first {options.test_fraction:.0%}, so "
            "identical texts never straddle train and test"
        ),
        "training_subset": f"{len(split.train)} of {split.training_pool} training reports",
        "left_out_not_coded": split.left_out_not_coded,
        "left_out_without_text": split.left_out_without_text,
        "encoder": (
            f"all-MiniLM-L6-v2 (packaged), mean pooling, {options.max_length} tokens; "
            f"{options.config_name} projection and fusion head"
        ),
        "methods": {
            "frozen": f"base frozen; projection + head train (lr {options.head_lr})",
            "lora": (
                f"LoRA rank {config.lora.rank} alpha {config.lora.alpha} on query/key/value/"
                f"dense; adapters (lr {options.adapter_lr}) + head train"
            ),
            "full": f"every weight trains: base lr {options.base_lr}, head lr {options.head_lr}",
        },
        "training": (
            f"batch {options.batch_size}, AdamW, positive-weighted BCE, fixed epochs "
            "(no validation, no early stopping), same training subset and split for all"
        ),
    }
