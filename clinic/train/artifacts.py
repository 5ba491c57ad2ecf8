"""Model artifacts on disk: weights (safetensors), configs, calibration and the model card.

    models/<name>/
        model.json            configs, preprocessing, label names, modalities
        weights.safetensors   every weight (base encoders, fusion, head)
        calibration.json      per-subset calibration map (after ``clinic train calibrate``)
        adapters/<encoder>/<adapter>/   LoRA adapters, each with its base hash
        card.json             what a reviewer needs: data split, metrics, content hashes
        checkpoint/           resumable training state (weights + optimiser + epoch)

Every file is written to a temporary name and renamed, so a kill never leaves a half model.
"""

from __future__ import annotations

import hashlib
import json
import os
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch
from safetensors.torch import load_file, save_file

from clinic.data.dataset import PreprocessConfig
from clinic.models.calibration import CalibrationMap
from clinic.models.config import model_config_from_dict, model_config_to_dict
from clinic.models.model import ClinicModel
from clinic.train.errors import ModelNotFoundError

__all__ = ["ModelNotFoundError"]  # re-exported: callers catch it from here

MODEL_FILE = "model.json"
WEIGHTS_FILE = "weights.safetensors"
CALIBRATION_FILE = "calibration.json"
CARD_FILE = "card.json"


def models_root(home: Path) -> Path:
    return home / "models"


def model_dir(home: Path, name: str) -> Path:
    if not name or "/" in name or name.startswith("."):
        raise ValueError(f"invalid model name {name!r}: use letters, digits, '-' or '_'")
    return models_root(home) / name


def write_atomic(path: Path, data: bytes) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    temporary = path.with_name(f".{path.name}.{os.getpid()}.tmp")
    temporary.write_bytes(data)
    temporary.replace(path)


def write_json(path: Path, data: Mapping[str, Any]) -> None:
    write_atomic(path, (json.dumps(data, indent=2, sort_keys=True) + "\n").encode())


def read_json(path: Path) -> dict[str, Any]:
    data = json.loads(path.read_text())
    if not isinstance(data, dict):
        raise ValueError(f"{path} does not hold a JSON object")
    return data


def state_hash(state: Mapping[str, torch.Tensor]) -> str:
    """sha256 over sorted names, dtypes, shapes and bytes: the identity of a set of weights."""
    digest = hashlib.sha256()
    for name in sorted(state):
        tensor = state[name].detach().cpu().contiguous()
        digest.update(f"{name}|{tensor.dtype}|{tuple(tensor.shape)}|".encode())
        digest.update(
            tensor.reshape(-1).view(torch.uint8).numpy().tobytes() if tensor.numel() else b""
        )
    return digest.hexdigest()


def plain_state(model: torch.nn.Module) -> dict[str, torch.Tensor]:
    """State dict with shared storage broken apart (safetensors refuses aliases)."""
    return {
        name: tensor.detach().cpu().clone().contiguous()
        for name, tensor in model.state_dict().items()
    }


def save_tensors(state: Mapping[str, torch.Tensor], path: Path) -> None:
    """Write a safetensors file atomically (temporary name, then rename)."""
    path.parent.mkdir(parents=True, exist_ok=True)
    temporary = path.with_name(f".{path.name}.{os.getpid()}.tmp")
    save_file(dict(state), str(temporary))
    temporary.replace(path)


def save_model(model: ClinicModel, directory: Path) -> str:
    """Write model.json and weights; returns the weights' content hash."""
    state = plain_state(model)
    save_tensors(state, directory / WEIGHTS_FILE)
    write_json(directory / MODEL_FILE, describe_model(model))
    return state_hash(state)


def describe_model(model: ClinicModel) -> dict[str, Any]:
    return {
        "config": model_config_to_dict(model.config),
        "preprocess": model.preprocess.to_json(),
        "label_names": list(model.label_names),
        "modalities": list(model.modalities),
    }


def build_model(description: Mapping[str, Any]) -> ClinicModel:
    """A fresh model from a model.json description (weights not loaded)."""
    return ClinicModel(
        model_config_from_dict(description["config"]),
        PreprocessConfig.from_json(description["preprocess"]),
        description["label_names"],
        description["modalities"],
    )


def load_model(directory: Path) -> ClinicModel:
    """Model with its weights, in eval mode; a clear error when the folder is not a model."""
    if not (directory / MODEL_FILE).is_file() or not (directory / WEIGHTS_FILE).is_file():
        raise ModelNotFoundError(
            f"no trained model in {directory} (expected {MODEL_FILE}, {WEIGHTS_FILE})"
        )
    model = build_model(read_json(directory / MODEL_FILE))
    model.load_state_dict(load_file(str(directory / WEIGHTS_FILE)))
    return model.eval()


def weights_hash(directory: Path) -> str:
    return state_hash(load_file(str(directory / WEIGHTS_FILE)))


def save_calibration(directory: Path, calibration: CalibrationMap) -> str:
    write_json(directory / CALIBRATION_FILE, calibration.to_json())
    return calibration.content_hash()


def load_calibration(directory: Path) -> CalibrationMap | None:
    path = directory / CALIBRATION_FILE
    return CalibrationMap.from_json(read_json(path)) if path.is_file() else None


@dataclass
class TrainingState:
    """Where a resumable run stands: the next epoch to run and the history so far."""

    stage: str
    next_epoch: int
    history: list[dict[str, Any]]


def save_checkpoint(
    directory: Path, model: ClinicModel, optimiser: torch.optim.Optimizer, state: TrainingState
) -> None:
    """Weights, optimiser and epoch, each file atomically; state.json last marks it complete."""
    folder = directory / "checkpoint"
    folder.mkdir(parents=True, exist_ok=True)
    save_tensors(plain_state(model), folder / "weights.safetensors")
    temporary_optimiser = folder / f".optimiser.{os.getpid()}.tmp"
    torch.save(optimiser.state_dict(), temporary_optimiser)
    temporary_optimiser.replace(folder / "optimiser.pt")
    write_json(folder / "state.json", {"stage": state.stage, "next_epoch": state.next_epoch,
                                       "history": state.history})  # fmt: skip


def load_checkpoint(
    directory: Path, model: ClinicModel, optimiser: torch.optim.Optimizer, stage: str
) -> TrainingState | None:
    """Resume ``stage`` from its checkpoint; None when there is none for this stage."""
    folder = directory / "checkpoint"
    if not (folder / "state.json").is_file():
        return None
    saved = read_json(folder / "state.json")
    if saved["stage"] != stage:
        return None
    model.load_state_dict(load_file(str(folder / "weights.safetensors")))
    optimiser.load_state_dict(torch.load(folder / "optimiser.pt", weights_only=True))
    return TrainingState(stage, int(saved["next_epoch"]), list(saved["history"]))


def clear_checkpoint(directory: Path) -> None:
    folder = directory / "checkpoint"
    for name in ("state.json", "weights.safetensors", "optimiser.pt"):
        (folder / name).unlink(missing_ok=True)
