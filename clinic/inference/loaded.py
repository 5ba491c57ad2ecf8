"""A trained model ready to predict: weights, adapter, calibration and lineage, loaded once."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import torch

from clinic.inference.lineage import ModelLineage, directory_hash
from clinic.models.calibration import CalibrationMap
from clinic.models.model import ClinicModel
from clinic.train.adapters import adapters_dir, load_model_adapters
from clinic.train.artifacts import (
    ModelNotFoundError,
    load_calibration,
    load_model,
    model_dir,
    plain_state,
    state_hash,
)
from clinic.train.device import pick_device
from clinic.train.runner import feature_cache_dir


class ModelNotCalibratedError(RuntimeError):
    """Predictions are calibrated probabilities; an uncalibrated model cannot give them."""


@dataclass
class LoadedModel:
    name: str
    adapter: str | None
    model: ClinicModel
    calibration: CalibrationMap
    lineage: ModelLineage
    device: torch.device

    @property
    def label_names(self) -> tuple[str, ...]:
        return self.model.label_names


def load_for_inference(
    home: Path, name: str, adapter: str | None = None, device: str | None = None
) -> LoadedModel:
    """Load model ``name`` (and ``adapter``) from ``home``; hashes are taken from what is loaded.

    The base weights hash is computed before the adapter is attached, so it names the same base
    weights an adapter was trained against.
    """
    directory = model_dir(home, name)
    model = load_model(directory)
    weights = state_hash(plain_state(model))
    adapter_sha: str | None = None
    if adapter:
        folder = adapters_dir(directory, adapter)
        if not (folder / "adapter.json").is_file():
            raise ModelNotFoundError(f"model {name!r} has no adapter {adapter!r} ({folder})")
        load_model_adapters(model, directory, adapter)
        adapter_sha = directory_hash(folder)
    calibration = load_calibration(directory)
    if calibration is None:
        raise ModelNotCalibratedError(
            f"model {name!r} is not calibrated: run `clinic train calibrate --model {name} "
            "--cohort COHORT` first"
        )
    chosen = pick_device(device)
    model.to(chosen).eval()
    model.bind_feature_cache(feature_cache_dir(home))
    lineage = ModelLineage(
        weights=weights,
        adapter=adapter_sha,
        preprocess=model.preprocess.content_hash(),
        calibration=calibration.content_hash(),
    )
    return LoadedModel(name, adapter, model, calibration, lineage, chosen)
