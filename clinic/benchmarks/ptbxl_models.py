"""The three contenders of the PTB-XL benchmark, trained on identical data.

Datasets are built once (their preprocessing is fitted on the training records only) and
shared by every seed and model, so the contenders differ in method only.
"""

from __future__ import annotations

import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, replace
from typing import TYPE_CHECKING, Any

import numpy as np
import numpy.typing as npt
import torch
from torch import Tensor, nn
from torch.utils.data import DataLoader

from clinic.benchmarks.windows import windowed_probabilities
from clinic.data.cases import Case
from clinic.data.dataset import CaseDataset, make_collate
from clinic.data.ecg_features import ecg_features
from clinic.evaluation.features_gbm import FeaturesGbm
from clinic.evaluation.metrics import auroc
from clinic.ingest.importers.ptbxl import SUPERCLASSES
from clinic.models.config import ModelConfig, load_model_config
from clinic.models.encoders import ResNet1dClassifier
from clinic.models.loss import MultiModalContrastiveLoss
from clinic.models.model import ClinicModel
from clinic.store.store import Store
from clinic.train.data import fit_measurements, fit_preprocess, make_dataset
from clinic.train.device import autocast_for, pick_device, seed_everything, to_device
from clinic.train.embeddings import embed_dataset
from clinic.train.loops import finetune_epoch, pretrain_epoch
from clinic.train.losses import masked_bce, positive_weights
from clinic.train.runner import Reporter, feature_cache_dir

if TYPE_CHECKING:
    from clinic.benchmarks.ptbxl import PtbxlOptions

FloatArray = npt.NDArray[np.float64]
ECG_MODALITIES = ("ecg", "record", "report")
STRIDE_FRACTION = 0.5


@dataclass
class PtbxlData:
    """Datasets shared by every contender: training crops, full-length validation and test."""

    config: ModelConfig
    template: ClinicModel
    train: CaseDataset
    val: CaseDataset
    test: CaseDataset
    store: Store
    measured_train: FloatArray  # (N_train + N_val, F + 2) measured features + age + sex
    measured_test: FloatArray

    @classmethod
    def build(
        cls,
        store: Store,
        train: Sequence[Case],
        val: Sequence[Case],
        test: Sequence[Case],
        options: PtbxlOptions,
    ) -> PtbxlData:
        config = load_model_config(options.config_name)
        preprocess = fit_measurements(fit_preprocess(config, train), train, store)
        template = ClinicModel(config, preprocess, SUPERCLASSES, ECG_MODALITIES)
        template.bind_feature_cache(feature_cache_dir(store.settings.home))
        full = replace(preprocess, ecg_window=int(10 * preprocess.ecg_rate_hz))
        datasets = [
            make_dataset(train, store, template, train=True),
            make_dataset(val, store, template, train=False, preprocess=full),
            make_dataset(test, store, template, train=False, preprocess=full),
        ]
        for dataset in datasets:
            dataset.warm()
        measured_train = _feature_rows(store, [*train, *val])
        measured_test = _feature_rows(store, test)
        train_set, val_set, test_set = datasets
        return cls(
            config, template, train_set, val_set, test_set, store, measured_train, measured_test
        )

    @property
    def window(self) -> int:
        return self.template.preprocess.ecg_window


@dataclass
class OursResult:
    """Our pathway's test probabilities and its parts."""

    combined: FloatArray  # mean of ``learned_gbm`` and ``measured``
    learned_gbm: FloatArray  # boosting on measured features + pre-trained ECG embedding
    measured: FloatArray  # boosting on measured features alone
    neural: FloatArray  # the fine-tuned fusion network (reported, not in ``combined``)


def train_ours(data: PtbxlData, options: PtbxlOptions, seed: int, reporter: Reporter) -> OursResult:
    """Our ECG pathway: learned and measured features combined.

    1. The encoders are pre-trained contrastively on ECG ↔ report ↔ record of the training
       records (the reports are used here, and only here).
    2. The pre-trained ECG embedding (PCA to ``EMBEDDING_COMPONENTS`` on training ECGs) joins
       the measured ECG features + age + sex in gradient boosting; a second booster sees the
       measured features alone; their probabilities are averaged.
    3. The pre-trained model is also fine-tuned end to end (fusion of ECG, record and the
       measured-feature token) and reported as the ``neural`` part: with ~260 training ECGs it
       is weaker than boosting on measurements, so it is shown, not mixed in.
    """
    model = _pretrained_model(data, options, seed, reporter)
    learned = _learned_gbm(model, data, seed)
    measured = features_gbm_probabilities(data, seed)
    neural = _finetune_neural(model, data, options, seed, reporter)
    return OursResult((learned + measured) / 2.0, learned, measured, neural)


EMBEDDING_COMPONENTS = 8


def _learned_gbm(model: ClinicModel, data: PtbxlData, seed: int) -> FloatArray:
    """Boosting on measured features + the principal components of the pre-trained ECG
    embedding (computed from the ECG alone: no report or record enters the embedding)."""
    from sklearn.decomposition import PCA

    measurements, model.measurements = model.measurements, None
    device = next(model.parameters()).device
    train = np.concatenate([_ecg_embedding(model, data.train, device),
                            _ecg_embedding(model, data.val, device)])  # fmt: skip
    test = _ecg_embedding(model, data.test, device)
    model.measurements = measurements
    pca = PCA(EMBEDDING_COMPONENTS, random_state=seed).fit(train)
    x_train = np.concatenate([data.measured_train, pca.transform(train)], axis=1)
    x_test = np.concatenate([data.measured_test, pca.transform(test)], axis=1)
    labels = np.concatenate([data.train.labels, data.val.labels])
    booster = FeaturesGbm().fit(x_train, labels, SUPERCLASSES, seed=seed)
    return np.asarray(booster.predict_proba(x_test), np.float64)


def _ecg_embedding(model: ClinicModel, dataset: CaseDataset, device: torch.device) -> FloatArray:
    """(N, D) embeddings of the whole 10 s ECGs (global pooling accepts any length)."""
    preprocess = replace(
        dataset.preprocess, ecg_window=int(10 * dataset.preprocess.ecg_rate_hz), measurements=None
    )
    whole = CaseDataset(dataset.cases, dataset.blobs, preprocess, label_names=dataset.label_names)
    table = embed_dataset(model, whole, device)
    return np.asarray(table.embeddings["ecg"].numpy(), np.float64)


def _pretrained_model(
    data: PtbxlData, options: PtbxlOptions, seed: int, reporter: Reporter
) -> ClinicModel:
    """Contrastive pre-training (ECG ↔ report ↔ record) on the training records."""
    seed_everything(seed)
    device = pick_device(options.device)
    model = ClinicModel(data.config, data.template.preprocess, SUPERCLASSES, ECG_MODALITIES)
    model.feature_cache = data.template.feature_cache  # frozen MiniLM features, shared
    model.to(device)
    optimiser = torch.optim.AdamW(model.parameters(), lr=1e-3, weight_decay=1e-2)
    loss_fn = MultiModalContrastiveLoss()
    for epoch in range(options.pretrain_epochs):
        result = pretrain_epoch(model, _loader(data.train, seed, epoch), optimiser, device, loss_fn)
        if epoch + 1 == options.pretrain_epochs:
            reporter.note(f"  pre-training loss {result.loss:.3f}")
    return model


def _finetune_neural(
    model: ClinicModel, data: PtbxlData, options: PtbxlOptions, seed: int, reporter: Reporter
) -> FloatArray:
    """ECG + record fine-tuning of the pre-trained model, sliding-window prediction."""
    device = next(model.parameters()).device
    fused = model.config.fusion
    weights = positive_weights(torch.from_numpy(data.train.labels))
    optimiser = torch.optim.AdamW(model.parameters(), lr=1e-3, weight_decay=1e-2)
    schedule = _cosine(optimiser, options.finetune_epochs)

    def step(epoch: int) -> None:
        finetune_epoch(
            model, _loader(data.train, seed, 1000 + epoch), optimiser, device,
            drop_probability=fused.modality_dropout,
            reconstruction_weight=fused.reconstruction_weight, pos_weight=weights,
            hide=("report",),
        )  # fmt: skip
        schedule.step()

    def logits(batch: dict[str, Tensor]) -> Tensor:
        with autocast_for(device):
            out: Tensor = model(batch, hide=("report",)).logits
        return out

    return _fit_and_predict(model, step, logits, data, options.finetune_epochs, device, reporter)


def train_resnet1d(
    data: PtbxlData, options: PtbxlOptions, seed: int, reporter: Reporter
) -> FloatArray:
    """The supervised 1-D ResNet baseline on the same trunk, crops and windows."""
    seed_everything(seed)
    device = pick_device(options.device)
    model = ResNet1dClassifier(data.config.ecg, len(SUPERCLASSES)).to(device)
    optimiser = torch.optim.AdamW(model.parameters(), lr=1e-3, weight_decay=1e-2)
    schedule = _cosine(optimiser, options.baseline_epochs)
    weights = positive_weights(torch.from_numpy(data.train.labels)).to(device)

    def step(epoch: int) -> None:
        model.train()
        for batch in _loader(data.train, seed, 1000 + epoch):
            moved = to_device(batch, device)
            with autocast_for(device):
                out = model(moved["ecg"], moved["ecg_lead_mask"])
            loss = masked_bce(out, moved["labels"], weights)
            optimiser.zero_grad()
            loss.backward()  # type: ignore[no-untyped-call]
            optimiser.step()
        schedule.step()

    def logits(batch: dict[str, Tensor]) -> Tensor:
        with autocast_for(device):
            out: Tensor = model(batch["ecg"], batch["ecg_lead_mask"])
        return out

    return _fit_and_predict(model, step, logits, data, options.baseline_epochs, device, reporter)


def _fit_and_predict(
    model: nn.Module,
    step: Callable[[int], None],
    logits: Callable[[dict[str, Tensor]], Tensor],
    data: PtbxlData,
    epochs: int,
    device: torch.device,
    reporter: Reporter,
) -> FloatArray:
    """Train for ``epochs``, keep the weights with the best validation macro AUROC, predict."""
    best: tuple[float, dict[str, Tensor]] | None = None
    for epoch in range(epochs):
        step(epoch)
        score = macro_auroc(predict(model, logits, data.val, data.window, device), data.val.labels)
        if best is None or score > best[0]:
            best = (score, {k: v.detach().clone() for k, v in model.state_dict().items()})
        reporter.note(
            f"  {time.strftime('%H:%M:%S')} epoch {epoch + 1}/{epochs}: "
            f"validation macro AUROC {score:.3f}"
        )
    if best is not None:
        model.load_state_dict(best[1])
    return predict(model, logits, data.test, data.window, device)


@torch.no_grad()
def predict(
    model: nn.Module,
    logits: Callable[[dict[str, Tensor]], Tensor],
    dataset: CaseDataset,
    window: int,
    device: torch.device,
) -> FloatArray:
    """(N, K) window-averaged probabilities over a full-length dataset."""
    model.eval()
    loader = DataLoader(dataset, batch_size=64, collate_fn=make_collate(dataset.preprocess))
    stride = max(1, int(window * STRIDE_FRACTION))
    parts = [
        windowed_probabilities(to_device(batch, device), logits, window, stride) for batch in loader
    ]
    return np.concatenate(parts)


def macro_auroc(probabilities: FloatArray, labels: npt.NDArray[Any]) -> float:
    values = [auroc(labels[:, k], probabilities[:, k]) for k in range(labels.shape[1])]
    defined = [v for v in values if np.isfinite(v)]
    return float(np.mean(defined)) if defined else 0.0


def features_gbm_probabilities(data: PtbxlData, seed: int = 0) -> FloatArray:
    """Handcrafted features + age + sex into per-label gradient boosting."""
    labels = np.concatenate([data.train.labels, data.val.labels])
    model = FeaturesGbm().fit(data.measured_train, labels, SUPERCLASSES, seed=seed)
    return np.asarray(model.predict_proba(data.measured_test), np.float64)


def _feature_rows(store: Store, cases: Sequence[Case]) -> FloatArray:
    rows = []
    for case in cases:
        signal = np.asarray(store.blobs.get_array(case.ecg_blob or ""), dtype=np.float32)
        measured = ecg_features(signal, float(case.ecg_rate_hz)).astype(np.float64)
        record = case.record or {}
        demographics = [record.get("age_years", np.nan), record.get("is_female", np.nan)]
        rows.append(np.concatenate([measured, np.asarray(demographics, dtype=np.float64)]))
    return np.stack(rows)


def _loader(dataset: CaseDataset, seed: int, epoch: int) -> DataLoader[Any]:
    generator = torch.Generator()
    generator.manual_seed(seed * 100_003 + epoch)
    return DataLoader(
        dataset, batch_size=32, shuffle=True, generator=generator, drop_last=True,
        collate_fn=make_collate(dataset.preprocess),
    )  # fmt: skip


def _cosine(optimiser: torch.optim.Optimizer, epochs: int) -> torch.optim.lr_scheduler.LRScheduler:
    return torch.optim.lr_scheduler.CosineAnnealingLR(optimiser, T_max=max(epochs, 1))
