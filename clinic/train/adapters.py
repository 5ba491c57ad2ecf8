"""Site or task adaptation with LoRA: the base model stays frozen, only adapters and the head train.

    models/<name>/adapters/<adapter>/
        <modality>/adapter.safetensors, adapter.json   one LoRA adapter per encoder, each with
                                                        its encoder's base content hash
        head.safetensors                                the fusion + head weights for this task
        adapter.json                                    which encoders, head hash, base weights hash

An adapter folder is small and can be swapped onto the same base without reloading it; an
adapter saved against other base weights is refused (:class:`AdapterBaseMismatch`).
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

from safetensors.torch import load_file

from clinic.models.lora import (
    AdapterSpec,
    attach_adapter,
    attached_adapters,
    base_content_hash,
    load_adapter,
    save_adapter,
    set_active_adapter,
)
from clinic.models.model import ClinicModel
from clinic.train.artifacts import plain_state, read_json, save_tensors, state_hash, write_json

HEAD_FILE = "head.safetensors"


def adapters_dir(model_directory: Path, adapter: str) -> Path:
    if not adapter or "/" in adapter or adapter.startswith("."):
        raise ValueError(f"invalid adapter name {adapter!r}")
    return model_directory / "adapters" / adapter


def attach_model_adapters(model: ClinicModel, adapter: str) -> dict[str, str]:
    """Attach a LoRA adapter named ``adapter`` to every encoder; freeze every base weight.

    Returns modality → the encoder's base content hash (taken before attaching). The fusion
    transformer and head stay trainable: a new task needs its own head.
    """
    spec_of = model.config.lora
    hashes: dict[str, str] = {}
    for modality in model.modalities:
        encoder = model.encoders[modality]
        hashes[modality] = base_content_hash(encoder)
        targets = tuple(getattr(encoder, "lora_targets", ()))
        spec = AdapterSpec(target_modules=targets, rank=spec_of.rank, alpha=spec_of.alpha,
                           dropout=spec_of.dropout)  # fmt: skip
        attach_adapter(encoder, spec, adapter)
    model.encoders_frozen = True
    if model.measurements is not None:
        model.measurements.requires_grad_(False)
    model.logit_scale.requires_grad_(False)
    return hashes


def save_model_adapters(
    model: ClinicModel, model_directory: Path, adapter: str, base_hashes: dict[str, str]
) -> dict[str, Any]:
    """Write every encoder's adapter and the head; returns the adapter manifest."""
    folder = adapters_dir(model_directory, adapter)
    for modality in model.modalities:
        save_adapter(model.encoders[modality], adapter, folder / modality,
                     base_hash=base_hashes[modality])  # fmt: skip
    head = plain_state(model.fusion)
    save_tensors(head, folder / HEAD_FILE)
    manifest = {
        "adapter": adapter,
        "modalities": list(model.modalities),
        "head_sha256": state_hash(head),
        "encoder_base_hashes": base_hashes,
    }
    write_json(folder / "adapter.json", manifest)
    return manifest


def load_model_adapters(model: ClinicModel, model_directory: Path, adapter: str) -> None:
    """Attach (or switch to) ``adapter`` on every encoder and load its head.

    Each encoder's adapter is checked against that encoder's base hash, so adapters trained on
    another base are refused before any weight changes.
    """
    folder = adapters_dir(model_directory, adapter)
    manifest = read_json(folder / "adapter.json")
    for modality in manifest["modalities"]:
        encoder = model.encoders[modality]
        if adapter in attached_adapters(encoder):
            set_active_adapter(encoder, adapter)
        else:
            load_adapter(encoder, folder / modality, adapter)
    model.fusion.load_state_dict(load_file(str(folder / HEAD_FILE)))
