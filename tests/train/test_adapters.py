"""LoRA adaptation through the training stages: only adapters + head train, the base is untouched,
adapters reload onto the same base and are refused on another."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch

from clinic.models.lora import AdapterBaseMismatch, base_content_hash
from clinic.settings import Settings
from clinic.store.store import Store
from clinic.train.adapters import adapters_dir, load_model_adapters
from clinic.train.artifacts import load_model, model_dir, weights_hash
from clinic.train.runner import QuietReporter, TrainRequest, finetune, pretrain
from tests.modelkit import TINY_COHORT, tiny_config


def _request(home: Path, adapter: str | None = None) -> TrainRequest:
    return TrainRequest(
        home=home, model_name="m", cohort=TINY_COHORT, epochs=1, batch_size=8,
        config=tiny_config(), adapter=adapter, measure_ecg=False,
    )  # fmt: skip


@pytest.fixture
def pretrained(tiny_phantom: Settings, tmp_path: Path) -> tuple[Store, Path]:
    store = Store.open(tiny_phantom, migrate=False)
    pretrain(store, _request(tmp_path), QuietReporter())
    return store, tmp_path


def test_adapter_finetune_leaves_the_base_untouched(pretrained: tuple[Store, Path]) -> None:
    store, home = pretrained
    directory = model_dir(home, "m")
    before = weights_hash(directory)
    base = load_model(directory)
    encoder_hashes = {m: base_content_hash(base.encoders[m]) for m in base.modalities}
    card = finetune(store, _request(home, adapter="site-a"), QuietReporter())
    assert weights_hash(directory) == before
    manifest = card["adapters"]["site-a"]
    assert manifest["encoder_base_hashes"] == encoder_hashes
    assert manifest["trainable_parameters"] < sum(p.numel() for p in base.parameters())
    folder = adapters_dir(directory, "site-a")
    assert {p.name for p in folder.iterdir()} >= {"adapter.json", "head.safetensors", "ecg"}


def test_adapter_reloads_onto_the_base_and_changes_outputs(pretrained: tuple[Store, Path]) -> None:
    store, home = pretrained
    finetune(store, _request(home, adapter="site-a"), QuietReporter())
    directory = model_dir(home, "m")
    model = load_model(directory)
    head_before = {k: v.clone() for k, v in model.fusion.state_dict().items()}
    load_model_adapters(model, directory, "site-a")
    changed = any(not torch.equal(head_before[k], v) for k, v in model.fusion.state_dict().items())
    assert changed
    again = load_model(directory)
    load_model_adapters(again, directory, "site-a")
    for key, value in model.state_dict().items():
        assert torch.equal(value, again.state_dict()[key])


def test_adapter_on_another_base_is_refused(pretrained: tuple[Store, Path]) -> None:
    store, home = pretrained
    finetune(store, _request(home, adapter="site-a"), QuietReporter())
    directory = model_dir(home, "m")
    model = load_model(directory)
    with torch.no_grad():
        next(model.encoders["ecg"].parameters()).add_(0.01)
    with pytest.raises(AdapterBaseMismatch):
        load_model_adapters(model, directory, "site-a")
