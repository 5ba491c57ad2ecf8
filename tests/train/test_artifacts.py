"""Model artifacts: a saved model reloads to identical outputs, weights hash by content,
checkpoints resume exactly, and atomic writes leave no temporary files behind."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch
from safetensors.torch import load_file
from torch import Tensor

from clinic.data.dataset import PreprocessConfig, input_shapes
from clinic.data.records import RecordNormalizer
from clinic.models.calibration import CalibrationMap, SubsetCalibration
from clinic.models.model import ClinicModel
from clinic.train.artifacts import (
    CALIBRATION_FILE,
    MODEL_FILE,
    WEIGHTS_FILE,
    ModelNotFoundError,
    TrainingState,
    clear_checkpoint,
    load_calibration,
    load_checkpoint,
    load_model,
    model_dir,
    plain_state,
    read_json,
    save_calibration,
    save_checkpoint,
    save_model,
    state_hash,
    weights_hash,
    write_json,
)
from tests.modelkit import tiny_config

LABELS = ("af", "mi")
BATCH = 4


def tiny_preprocess() -> PreprocessConfig:
    config = tiny_config()
    record = RecordNormalizer(("age_years", "heart_rate_bpm", "is_female"), (60.0, 70.0, 0.5),
                              (10.0, 12.0, 0.5))  # fmt: skip
    return PreprocessConfig(
        image_size=config.xray.image_size,
        ecg_rate_hz=config.ecg.sampling_rate_hz,
        ecg_window=config.ecg.window_samples,
        text_max_length=config.report.max_length,
        record=record,
    )


def tiny_model(seed: int = 0, modalities: tuple[str, ...] = ("xray", "ecg", "record", "report")
               ) -> ClinicModel:  # fmt: skip
    torch.manual_seed(seed)
    return ClinicModel(tiny_config(), tiny_preprocess(), LABELS, modalities).eval()


def random_batch(preprocess: PreprocessConfig, seed: int = 0) -> dict[str, Tensor]:
    """Every input filled at random; row 0 lacks the X-ray and row 1 the report."""
    generator = torch.Generator().manual_seed(seed)
    batch = {key: torch.rand((BATCH, *shape), generator=generator)
             for key, shape in input_shapes(preprocess).items()}  # fmt: skip
    batch["report_input_ids"] = torch.randint(1, 1000, batch["report_input_ids"].shape,
                                              generator=generator)  # fmt: skip
    batch["report_attention_mask"] = torch.ones_like(batch["report_input_ids"])
    batch["ecg_lead_mask"] = torch.ones_like(batch["ecg_lead_mask"], dtype=torch.bool)
    batch["labels"] = torch.zeros(BATCH, len(LABELS))
    for modality in ("xray", "ecg", "record", "report"):
        batch[f"present_{modality}"] = torch.ones(BATCH, dtype=torch.bool)
    batch["present_xray"][0] = False
    batch["present_report"][1] = False
    return batch


def logits_of(model: ClinicModel, batch: dict[str, Tensor]) -> Tensor:
    with torch.no_grad():
        logits: Tensor = model(batch).logits
    return logits


def leftover_temporaries(root: Path) -> list[Path]:
    return [p for p in root.rglob("*") if p.name.startswith(".") or p.name.endswith(".tmp")]


# --- save / load -----------------------------------------------------------------------------


def test_saved_model_reloads_with_identical_outputs(tmp_path: Path) -> None:
    model = tiny_model(seed=1)
    batch = random_batch(model.preprocess)
    save_model(model, tmp_path / "m")
    torch.manual_seed(99)  # a fresh model built now would get other random weights
    loaded = load_model(tmp_path / "m")
    assert not loaded.training
    assert torch.equal(logits_of(loaded, batch), logits_of(model, batch))
    assert loaded.label_names == LABELS
    assert loaded.modalities == model.modalities
    assert loaded.preprocess == model.preprocess
    assert loaded.config == model.config


def test_a_subset_model_reloads_as_a_subset_model(tmp_path: Path) -> None:
    model = tiny_model(modalities=("ecg", "record"))
    save_model(model, tmp_path / "m")
    loaded = load_model(tmp_path / "m")
    assert loaded.modalities == ("ecg", "record")
    assert set(loaded.encoders) == {"ecg", "record"}
    batch = random_batch(model.preprocess, seed=2)
    assert torch.equal(logits_of(loaded, batch), logits_of(model, batch))


def test_model_json_describes_the_model(tmp_path: Path) -> None:
    model = tiny_model()
    save_model(model, tmp_path)
    description = read_json(tmp_path / MODEL_FILE)
    assert description["label_names"] == list(LABELS)
    assert description["modalities"] == list(model.modalities)
    assert PreprocessConfig.from_json(description["preprocess"]) == model.preprocess


def test_save_model_returns_the_weights_content_hash(tmp_path: Path) -> None:
    model = tiny_model()
    returned = save_model(model, tmp_path)
    assert returned == weights_hash(tmp_path) == state_hash(model.state_dict())
    assert set(load_file(str(tmp_path / WEIGHTS_FILE))) == set(model.state_dict())


def test_a_trained_step_changes_the_saved_hash(tmp_path: Path) -> None:
    model = tiny_model()
    before = save_model(model, tmp_path / "a")
    with torch.no_grad():
        model.fusion.head.bias.add_(0.01)
    assert save_model(model, tmp_path / "b") != before


@pytest.mark.parametrize("files", [(), (MODEL_FILE,), (WEIGHTS_FILE,)])
def test_a_folder_without_a_model_raises_model_not_found(
    tmp_path: Path, files: tuple[str, ...]
) -> None:
    for name in files:
        (tmp_path / name).write_text("{}")
    with pytest.raises(ModelNotFoundError, match="no trained model"):
        load_model(tmp_path)
    with pytest.raises(ModelNotFoundError):
        load_model(tmp_path / "missing")


@pytest.mark.parametrize("name", ["", "a/b", ".hidden", "..", "./x"])
def test_model_dir_rejects_names_that_escape_the_models_folder(name: str) -> None:
    with pytest.raises(ValueError, match="invalid model name"):
        model_dir(Path("/home"), name)


def test_model_dir_is_under_models() -> None:
    assert model_dir(Path("/home"), "ecg-v2_1") == Path("/home/models/ecg-v2_1")


# --- state_hash ------------------------------------------------------------------------------


def sample_state() -> dict[str, Tensor]:
    return {"b.weight": torch.arange(6.0).reshape(2, 3), "a.bias": torch.tensor([1.0, -2.0]),
            "a.count": torch.tensor(3), "a.mask": torch.tensor([True, False])}  # fmt: skip


def test_state_hash_is_stable_and_order_free() -> None:
    state = sample_state()
    assert state_hash(state) == state_hash(sample_state())
    assert state_hash(dict(reversed(list(state.items())))) == state_hash(state)
    assert len(state_hash(state)) == 64


def test_state_hash_is_sensitive_to_values_names_dtypes_and_shapes() -> None:
    reference = state_hash(sample_state())
    changed_value = sample_state()
    changed_value["b.weight"][1, 2] = 5.000001
    renamed = sample_state()
    renamed["c.weight"] = renamed.pop("b.weight")
    retyped = sample_state()
    retyped["b.weight"] = retyped["b.weight"].double()
    reshaped = sample_state()
    reshaped["b.weight"] = reshaped["b.weight"].reshape(3, 2)
    fewer = sample_state()
    del fewer["a.mask"]
    hashes = [state_hash(s) for s in (changed_value, renamed, retyped, reshaped, fewer)]
    assert reference not in hashes
    assert len(set(hashes)) == len(hashes)


def test_plain_state_breaks_shared_storage() -> None:
    model = torch.nn.Linear(2, 2)
    state = plain_state(model)
    state["weight"].zero_()
    assert model.weight.abs().sum() > 0


# --- checkpoints -----------------------------------------------------------------------------


def trained_pair(seed: int) -> tuple[ClinicModel, torch.optim.Optimizer]:
    model = tiny_model(seed=seed)
    optimiser = torch.optim.AdamW(model.parameters(), lr=1e-2)
    model.train()
    loss: Tensor = model(random_batch(model.preprocess, seed=seed)).logits.square().mean()
    loss.backward()  # type: ignore[no-untyped-call]
    optimiser.step()
    return model.eval(), optimiser


def test_checkpoint_round_trip_restores_weights_optimiser_and_state(tmp_path: Path) -> None:
    model, optimiser = trained_pair(seed=1)
    state = TrainingState("pretrain", 3, [{"epoch": 1, "loss": 2.5}, {"epoch": 2, "loss": 2.0}])
    save_checkpoint(tmp_path, model, optimiser, state)

    fresh = tiny_model(seed=2)
    fresh_optimiser = torch.optim.AdamW(fresh.parameters(), lr=1e-2)
    resumed = load_checkpoint(tmp_path, fresh, fresh_optimiser, "pretrain")
    assert resumed == state
    assert state_hash(fresh.state_dict()) == state_hash(model.state_dict())
    saved_steps = [s["step"] for s in optimiser.state_dict()["state"].values()]
    loaded_steps = [s["step"] for s in fresh_optimiser.state_dict()["state"].values()]
    assert saved_steps and loaded_steps == saved_steps
    batch = random_batch(model.preprocess, seed=5)
    assert torch.equal(logits_of(fresh, batch), logits_of(model, batch))


def test_a_checkpoint_of_another_stage_is_not_resumed(tmp_path: Path) -> None:
    model, optimiser = trained_pair(seed=1)
    save_checkpoint(tmp_path, model, optimiser, TrainingState("pretrain", 1, []))
    other = tiny_model(seed=3)
    before = state_hash(other.state_dict())
    other_optimiser = torch.optim.AdamW(other.parameters())
    assert load_checkpoint(tmp_path, other, other_optimiser, "finetune") is None
    assert state_hash(other.state_dict()) == before


def test_cleared_or_missing_checkpoints_are_not_resumed(tmp_path: Path) -> None:
    model, optimiser = trained_pair(seed=1)
    assert load_checkpoint(tmp_path, model, optimiser, "pretrain") is None
    save_checkpoint(tmp_path, model, optimiser, TrainingState("pretrain", 1, []))
    clear_checkpoint(tmp_path)
    assert load_checkpoint(tmp_path, model, optimiser, "pretrain") is None
    assert list((tmp_path / "checkpoint").iterdir()) == []
    clear_checkpoint(tmp_path)  # clearing twice is harmless


# --- calibration files and atomic writes -----------------------------------------------------


def test_calibration_round_trip(tmp_path: Path) -> None:
    assert load_calibration(tmp_path) is None
    fitted = SubsetCalibration([1.5, 0.8], [0.1, -0.2], [0.9, None], [0.05, None], n=40)
    calibration = CalibrationMap(LABELS, {"ecg": fitted}, min_auroc=0.7)
    digest = save_calibration(tmp_path, calibration)
    loaded = load_calibration(tmp_path)
    assert loaded == calibration
    assert loaded is not None and loaded.content_hash() == digest
    assert (tmp_path / CALIBRATION_FILE).is_file()


def test_atomic_writes_leave_no_temporary_files(tmp_path: Path) -> None:
    model, optimiser = trained_pair(seed=1)
    save_model(model, tmp_path)
    save_model(model, tmp_path)  # overwriting too
    save_checkpoint(tmp_path, model, optimiser, TrainingState("finetune", 1, []))
    write_json(tmp_path / "card.json", {"name": "m"})
    save_calibration(tmp_path, CalibrationMap(LABELS, {}))
    assert leftover_temporaries(tmp_path) == []
    assert {p.name for p in tmp_path.iterdir()} == {
        MODEL_FILE, WEIGHTS_FILE, CALIBRATION_FILE, "card.json", "checkpoint"}  # fmt: skip


def test_a_failed_json_write_keeps_the_previous_file(tmp_path: Path) -> None:
    path = tmp_path / "card.json"
    write_json(path, {"version": 1})
    with pytest.raises(TypeError):
        write_json(path, {"version": object()})
    assert json.loads(path.read_text()) == {"version": 1}
    assert leftover_temporaries(tmp_path) == []


def test_read_json_refuses_non_objects(tmp_path: Path) -> None:
    (tmp_path / "list.json").write_text("[1, 2]")
    with pytest.raises(ValueError, match="JSON object"):
        read_json(tmp_path / "list.json")
