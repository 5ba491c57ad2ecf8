"""The three training stages behind ``clinic train``: pretrain, finetune, calibrate.

Each stage reads a cohort from the store, trains, and writes the model folder atomically; a
killed run resumes from its last finished epoch. Seeds are fixed, so two runs with the same
inputs give the same weights on the same machine.

Pretrain and finetune also run as one rank of a data-parallel group (clinic.train.distributed):
every rank trains on its share of the same global batches, and rank 0 alone writes checkpoints,
the model and its card while the others wait, so the files are those of a single process.
"""

from __future__ import annotations

import datetime as dt
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Protocol

import numpy as np
import torch
from torch.utils.data import DataLoader

from clinic.audit.chain import AuditKey, append_event
from clinic.data.cases import label_matrix
from clinic.data.dataset import CaseDataset, make_collate
from clinic.data.splits import SplitPlan
from clinic.ingest.writer import current_actor
from clinic.models.calibration import fit_calibration
from clinic.models.config import ModelConfig, load_model_config
from clinic.models.loss import MultiModalContrastiveLoss
from clinic.models.model import ClinicModel
from clinic.store.store import Store
from clinic.train.adapters import attach_model_adapters, save_model_adapters
from clinic.train.artifacts import (
    CARD_FILE,
    TrainingState,
    clear_checkpoint,
    describe_model,
    load_checkpoint,
    load_model,
    model_dir,
    read_json,
    save_calibration,
    save_checkpoint,
    save_model,
    write_json,
)
from clinic.train.data import (
    CohortData,
    fit_measurements,
    fit_preprocess,
    load_cohort,
    make_dataset,
)
from clinic.train.device import pick_device, seed_everything
from clinic.train.distributed import (
    barrier,
    is_rank_zero,
    replicate,
    share_collate,
    worker_device,
)
from clinic.train.embeddings import embed_dataset
from clinic.train.loops import finetune_epoch, pretrain_epoch
from clinic.train.losses import positive_weights
from schemas.modalities import all_subsets, subset_name


class Reporter(Protocol):
    """Progress sink: the CLI draws bars, tests collect messages."""

    def start(self, description: str, total: int) -> None: ...
    def advance(self, amount: int) -> None: ...
    def note(self, message: str) -> None: ...


class QuietReporter:
    def start(self, description: str, total: int) -> None:
        pass

    def advance(self, amount: int) -> None:
        pass

    def note(self, message: str) -> None:
        pass


@dataclass(frozen=True)
class TrainRequest:
    """What ``clinic train`` was asked to do."""

    home: Path
    model_name: str
    cohort: str | None
    config_name: str = "cpu-small"
    epochs: int = 5
    batch_size: int = 32
    lr: float = 1e-3
    seed: int = 0
    device: str | None = None
    label_vocabulary: str | None = None
    label_names: tuple[str, ...] = ()
    split_plan: SplitPlan = field(default_factory=SplitPlan)
    measure_ecg: bool = True
    min_auroc: float = 0.6
    config: ModelConfig | None = None  # overrides config_name (tests, notebooks)
    adapter: str | None = None  # finetune trains only LoRA adapters + head under this name


def pretrain(store: Store, request: TrainRequest, reporter: Reporter) -> dict[str, Any]:
    """Contrastive pre-training of every encoder on the cohort's training split."""
    seed_everything(request.seed)
    data = _load(store, request)
    config = request.config or load_model_config(request.config_name)
    preprocess = fit_preprocess(config, data.splits["train"])
    if request.measure_ecg:
        preprocess = fit_measurements(preprocess, data.splits["train"], store)
    model = ClinicModel(config, preprocess, data.label_names)
    directory = model_dir(request.home, request.model_name)
    history = _train_stage(store, request, data, model, directory, "pretrain", reporter)

    def publish() -> dict[str, Any]:
        weights = save_model(model, directory)
        card = _card(model, data, request, directory, {"pretrain": history}, weights)
        write_json(directory / "card.json", card)
        audit_training(store, "model.pretrain", request, weights)
        return card

    return _on_rank_zero(publish, directory)


def finetune(store: Store, request: TrainRequest, reporter: Reporter) -> dict[str, Any]:
    """Supervised training of encoders + fusion (modality dropout + reconstruction)."""
    seed_everything(request.seed)
    directory = model_dir(request.home, request.model_name)
    model = load_model(directory)
    data = _load(store, request, model.label_names)
    if request.adapter:
        return _finetune_adapter(store, request, data, model, directory, reporter)
    history = _train_stage(store, request, data, model, directory, "finetune", reporter)

    def publish() -> dict[str, Any]:
        weights = save_model(model, directory)
        previous = _previous_history(directory)
        card = _card(model, data, request, directory, {**previous, "finetune": history}, weights)
        write_json(directory / "card.json", card)
        audit_training(store, "model.finetune", request, weights)
        return card

    return _on_rank_zero(publish, directory)


def _finetune_adapter(
    store: Store,
    request: TrainRequest,
    data: CohortData,
    model: ClinicModel,
    directory: Path,
    reporter: Reporter,
) -> dict[str, Any]:
    """Train LoRA adapters + head only; the base weights file is left untouched."""
    adapter = request.adapter or ""
    base_hashes = attach_model_adapters(model, adapter)
    stage = f"adapter:{adapter}"
    history = _train_stage(store, request, data, model, directory, stage, reporter)

    def publish() -> dict[str, Any]:
        manifest = save_model_adapters(model, directory, adapter, base_hashes)
        card = read_json(directory / "card.json")
        trainable = int(sum(p.numel() for p in model.parameters() if p.requires_grad))
        card.setdefault("adapters", {})[adapter] = {
            **manifest,
            "cohort": request.cohort,
            "data": data.summary(),
            "training": history,
            "trainable_parameters": trainable,
        }
        write_json(directory / "card.json", card)
        audit_training(store, "model.adapter", request, manifest["head_sha256"])
        return card

    return _on_rank_zero(publish, directory)


def calibrate(store: Store, request: TrainRequest, reporter: Reporter) -> dict[str, Any]:
    """Per-subset Platt scaling on the validation split; ECE and reliability into the card."""
    directory = model_dir(request.home, request.model_name)
    model = load_model(directory)
    data = _load(store, request, model.label_names)
    device = pick_device(request.device)
    model.to(device)
    model.bind_feature_cache(feature_cache_dir(request.home))
    dataset = make_dataset(data.splits["val"], store, model, train=False)
    reporter.start("embedding validation cases", len(dataset))
    table = embed_dataset(model, dataset, device, progress=reporter.advance)
    logits, labels = {}, {}
    labels_np = table.labels.double().numpy()
    for subset in all_subsets(model.modalities):
        rows = table.having(subset)
        if int(rows.sum()) == 0:
            continue
        view = table.rows(rows.nonzero(as_tuple=True)[0]).with_subset(subset)
        with torch.no_grad():
            out = model.fusion.cpu()(view.embeddings, view.present).logits
        logits[subset_name(subset)] = out.double().numpy()
        labels[subset_name(subset)] = labels_np[rows.numpy()]
    calibration = fit_calibration(logits, labels, model.label_names, min_auroc=request.min_auroc)
    calibration_hash = save_calibration(directory, calibration)
    card = read_json(directory / "card.json")
    card["calibration"] = {
        "sha256": calibration_hash,
        "subsets": {
            name: {"n": c.n, "ece": c.ece, "auroc": c.auroc}
            for name, c in calibration.subsets.items()
        },
        "min_auroc": request.min_auroc,
    }
    write_json(directory / "card.json", card)
    audit_training(store, "model.calibrate", request, calibration_hash)
    return card


def audit_training(store: Store, action: str, request: TrainRequest, artifact: str) -> None:
    """Training reads every case of a cohort: one audit event per finished stage."""
    with store.session() as session:
        append_event(
            session, AuditKey.from_settings(store.settings), actor=current_actor(),
            role="system", action=action, resource_type="model", resource_id=request.model_name,
            details={"cohort": request.cohort, "adapter": request.adapter, "sha256": artifact},
        )  # fmt: skip
        session.commit()


def feature_cache_dir(home: Path) -> Path:
    """Where frozen-backbone features persist between stages (safe to delete)."""
    return home / "cache" / "features"


def _on_rank_zero(publish: Callable[[], dict[str, Any]], directory: Path) -> dict[str, Any]:
    """Run ``publish`` (write the model, its card, the audit event) on rank 0 only; every rank
    returns the card, the others reading it once rank 0 has written it."""
    card = publish() if is_rank_zero() else {}
    barrier()
    return card if is_rank_zero() else read_json(directory / CARD_FILE)


def _load(
    store: Store, request: TrainRequest, label_names: Sequence[str] | None = None
) -> CohortData:
    names = label_names or request.label_names or None
    return load_cohort(
        store,
        request.cohort,
        plan=request.split_plan,
        label_vocabulary=request.label_vocabulary,
        label_names=names,
    )


def _train_stage(
    store: Store,
    request: TrainRequest,
    data: CohortData,
    model: ClinicModel,
    directory: Path,
    stage: str,
    reporter: Reporter,
) -> list[dict[str, Any]]:
    """Run ``request.epochs`` epochs of ``stage``, checkpointing after each, resuming if killed."""
    device = worker_device(request.device)
    model.to(device)
    model.bind_feature_cache(feature_cache_dir(request.home))
    dataset = make_dataset(data.splits["train"], store, model, train=True, seed=request.seed)
    trainable = [p for p in model.parameters() if p.requires_grad]
    optimiser = torch.optim.AdamW(trainable, lr=request.lr, weight_decay=1e-2)
    resumed = load_checkpoint(directory, model, optimiser, stage)
    state = resumed or TrainingState(stage, 0, [])
    if resumed:
        reporter.note(f"resuming {stage} at epoch {state.next_epoch + 1}")
    pos_weight = positive_weights(torch.from_numpy(dataset.labels))
    loss_fn = MultiModalContrastiveLoss()
    with replicate(model, device, request.seed) as replica:
        for epoch in range(state.next_epoch, request.epochs):
            loader = _loader(dataset, request, epoch)
            reporter.start(f"{stage} epoch {epoch + 1}/{request.epochs}", len(dataset))
            if stage == "pretrain":
                result = pretrain_epoch(
                    model, loader, optimiser, device, loss_fn, reporter.advance, replica=replica
                )
            else:
                fusion = model.config.fusion
                result = finetune_epoch(
                    model, loader, optimiser, device,
                    drop_probability=fusion.modality_dropout,
                    reconstruction_weight=fusion.reconstruction_weight,
                    pos_weight=pos_weight, progress=reporter.advance, replica=replica,
                )  # fmt: skip
            state.history.append({"epoch": epoch + 1, "loss": result.loss, **result.parts})
            state.next_epoch = epoch + 1
            if is_rank_zero():
                save_checkpoint(directory, model, optimiser, state)
            barrier()  # no rank runs ahead of a checkpoint it might have to resume from
            reporter.note(f"{stage} epoch {epoch + 1}: loss {result.loss:.4f}")
    if is_rank_zero():
        clear_checkpoint(directory)
    barrier()
    return state.history


def _loader(dataset: CaseDataset, request: TrainRequest, epoch: int) -> DataLoader[Any]:
    generator = torch.Generator()
    generator.manual_seed(request.seed * 1000 + epoch)
    return DataLoader(
        dataset,
        batch_size=request.batch_size,
        shuffle=True,
        generator=generator,
        collate_fn=share_collate(make_collate(dataset.preprocess)),
        drop_last=len(dataset) > request.batch_size,
    )


def _previous_history(directory: Path) -> dict[str, Any]:
    path = directory / "card.json"
    if not path.is_file():
        return {}
    training = read_json(path).get("training", {})
    return dict(training) if isinstance(training, dict) else {}


def _card(
    model: ClinicModel,
    data: CohortData,
    request: TrainRequest,
    directory: Path,
    history: dict[str, Any],
    weights_sha256: str,
) -> dict[str, Any]:
    """The model card: what it is, what it saw, how it trained, and the hashes that pin it."""
    described = describe_model(model)
    return {
        "name": request.model_name,
        "created_at": dt.datetime.now(dt.UTC).isoformat(),
        "cohort": request.cohort,
        "config_name": request.config_name,
        "config": described["config"],
        "label_names": described["label_names"],
        "modalities": described["modalities"],
        "data": data.summary(),
        "training": history,
        "seed": request.seed,
        "hashes": {
            "weights": weights_sha256,
            "preprocess": model.preprocess.content_hash(),
        },
        "parameters": {
            "total": int(sum(p.numel() for p in model.parameters())),
            "trainable": int(sum(p.numel() for p in model.parameters() if p.requires_grad)),
        },
        "positives_in_training": _positives(data, model.label_names),
        "directory": str(directory),
    }


def _positives(data: CohortData, names: Sequence[str]) -> dict[str, int]:
    matrix = label_matrix(data.splits["train"], names)
    return {name: int(np.nansum(matrix[:, k] >= 0.5)) for k, name in enumerate(names)}
