"""The training stages end to end on the tiny phantom cohort: pretrain → finetune → calibrate
writes a complete model folder, a killed run resumes from its last epoch, and fixed seeds give
identical weights."""

from __future__ import annotations

import json
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
import torch

import clinic.train.runner as runner
from clinic.data.cases import load_cases
from clinic.settings import Settings
from clinic.store.store import Store
from clinic.train.artifacts import (
    CALIBRATION_FILE,
    CARD_FILE,
    MODEL_FILE,
    WEIGHTS_FILE,
    ModelNotFoundError,
    load_calibration,
    load_model,
    model_dir,
    save_checkpoint,
    weights_hash,
)
from clinic.train.loops import pretrain_epoch
from clinic.train.runner import TrainRequest, calibrate, finetune, pretrain
from schemas.modalities import all_subsets, subset_name
from tests.modelkit import TINY_COHORT, TINY_PATIENTS, tiny_config


class RecordingReporter:
    """Keeps what a run reports, so tests can see resumption and progress."""

    def __init__(self) -> None:
        self.notes: list[str] = []
        self.stages: list[str] = []
        self.advanced = 0

    def start(self, description: str, total: int) -> None:
        self.stages.append(description)

    def advance(self, amount: int) -> None:
        self.advanced += amount

    def note(self, message: str) -> None:
        self.notes.append(message)


class SimulatedKillError(Exception):
    """Stands in for the process dying right after a checkpoint was written."""


@pytest.fixture(scope="module")
def phantom(tiny_phantom: Settings) -> Iterator[Store]:
    opened = Store.open(tiny_phantom, migrate=False)
    yield opened
    opened.close()


def request_for(home: Path, name: str = "tiny-model", **changes: Any) -> TrainRequest:
    values: dict[str, Any] = {"home": home, "model_name": name, "cohort": TINY_COHORT,
                              "config": tiny_config(), "epochs": 1, "batch_size": 8}  # fmt: skip
    return TrainRequest(**{**values, **changes})


def cohort_size(store: Store) -> int:
    with store.session() as session:
        return len(load_cases(session, cohort=TINY_COHORT))


def test_pretrain_finetune_calibrate_end_to_end(phantom: Store, tmp_path: Path) -> None:
    request = request_for(tmp_path)
    reporter = RecordingReporter()
    directory = model_dir(tmp_path, request.model_name)

    pretrained = pretrain(phantom, request, reporter)
    assert pretrained["hashes"]["weights"] == weights_hash(directory)
    finetuned = finetune(phantom, request, reporter)
    card = calibrate(phantom, request, reporter)

    files = {p.name for p in directory.iterdir() if p.is_file()}
    assert {MODEL_FILE, WEIGHTS_FILE, CARD_FILE, CALIBRATION_FILE} <= files
    assert card == json.loads((directory / CARD_FILE).read_text())
    model = load_model(directory)
    assert card["hashes"]["weights"] == weights_hash(directory) == finetuned["hashes"]["weights"]
    assert card["hashes"]["weights"] != pretrained["hashes"]["weights"]
    assert card["hashes"]["preprocess"] == model.preprocess.content_hash()
    assert card["label_names"] == list(model.label_names)
    assert set(card["training"]) == {"pretrain", "finetune"}
    assert [e["epoch"] for e in card["training"]["finetune"]] == [1]

    data = card["data"]
    assert sum(data[s]["cases"] for s in ("train", "val", "test")) == cohort_size(phantom)
    assert sum(data[s]["patients"] for s in ("train", "val", "test")) == TINY_PATIENTS
    assert data["train"]["cases"] > 0 and data["val"]["cases"] > 0

    calibration = load_calibration(directory)
    assert calibration is not None
    assert card["calibration"]["sha256"] == calibration.content_hash()
    assert calibration.label_names == model.label_names
    assert set(calibration.subsets) <= {subset_name(s) for s in all_subsets()}
    assert calibration.subsets

    assert not (directory / "checkpoint" / "state.json").exists()
    assert reporter.advanced > 0
    assert any(stage.startswith("pretrain epoch 1/1") for stage in reporter.stages)


def test_a_killed_run_resumes_from_its_last_epoch(
    phantom: Store, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    request = request_for(tmp_path, epochs=2)
    directory = model_dir(tmp_path, request.model_name)
    real_save = save_checkpoint

    def save_then_die(*args: Any, **kwargs: Any) -> None:
        real_save(*args, **kwargs)
        raise SimulatedKillError

    monkeypatch.setattr(runner, "save_checkpoint", save_then_die)
    with pytest.raises(SimulatedKillError):
        pretrain(phantom, request, RecordingReporter())
    assert not (directory / MODEL_FILE).exists()
    saved = json.loads((directory / "checkpoint" / "state.json").read_text())
    assert saved["stage"] == "pretrain" and saved["next_epoch"] == 1

    epochs_run: list[int] = []
    real_epoch = pretrain_epoch

    def counted_epoch(*args: Any, **kwargs: Any) -> Any:
        epochs_run.append(1)
        return real_epoch(*args, **kwargs)

    monkeypatch.setattr(runner, "save_checkpoint", real_save)
    monkeypatch.setattr(runner, "pretrain_epoch", counted_epoch)
    reporter = RecordingReporter()
    card = pretrain(phantom, request, reporter)

    assert len(epochs_run) == 1
    assert "resuming pretrain at epoch 2" in reporter.notes
    history = card["training"]["pretrain"]
    assert [entry["epoch"] for entry in history] == [1, 2]
    assert history[0] == saved["history"][0]
    assert not (directory / "checkpoint" / "state.json").exists()
    assert card["hashes"]["weights"] == weights_hash(directory)


def test_fixed_seeds_give_identical_weights(phantom: Store, tmp_path: Path) -> None:
    first = pretrain(phantom, request_for(tmp_path / "a"), RecordingReporter())
    second = pretrain(phantom, request_for(tmp_path / "b"), RecordingReporter())
    other = pretrain(phantom, request_for(tmp_path / "c", seed=1), RecordingReporter())
    assert first["hashes"] == second["hashes"]
    assert first["training"] == second["training"]
    assert other["hashes"]["weights"] != first["hashes"]["weights"]
    torch.testing.assert_close(
        load_model(model_dir(tmp_path / "a", "tiny-model")).state_dict(),
        load_model(model_dir(tmp_path / "b", "tiny-model")).state_dict(),
        rtol=0.0,
        atol=0.0,
    )


def test_finetune_without_a_pretrained_model_fails_clearly(phantom: Store, tmp_path: Path) -> None:
    with pytest.raises(ModelNotFoundError):
        finetune(phantom, request_for(tmp_path), RecordingReporter())
