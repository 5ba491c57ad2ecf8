"""The config registry: packaged JSON files load strictly and round-trip exactly."""

from __future__ import annotations

import dataclasses
import json
from importlib import resources
from typing import Any

import pytest

from clinic.models.config import (
    EcgEncoderConfig,
    ModelConfig,
    RecordEncoderConfig,
    XrayEncoderConfig,
    list_model_configs,
    load_model_config,
    model_config_from_dict,
    model_config_to_dict,
)


def packaged_json(name: str) -> dict[str, Any]:
    text = resources.files("clinic.models").joinpath("configs", f"{name}.json").read_text()
    data: dict[str, Any] = json.loads(text)
    return data


def test_both_named_configs_are_listed() -> None:
    assert {"cpu-small", "gpu-base"} <= set(list_model_configs())
    assert list_model_configs() == sorted(list_model_configs())


@pytest.mark.parametrize("name", ["cpu-small", "gpu-base"])
def test_packaged_config_round_trips_exactly(name: str) -> None:
    config = load_model_config(name)
    as_dict = model_config_to_dict(config)
    assert as_dict == packaged_json(name)
    assert model_config_from_dict(json.loads(json.dumps(as_dict))) == config
    assert isinstance(config.ecg.stage_channels, tuple)


def test_cpu_small_is_small_and_gpu_base_is_larger() -> None:
    small, base = load_model_config("cpu-small"), load_model_config("gpu-base")
    assert (small.embed_dim, small.xray.image_size, small.ecg.sampling_rate_hz) == (128, 128, 100)
    assert (base.embed_dim, base.xray.image_size, base.ecg.sampling_rate_hz) == (256, 224, 500)
    for config in (small, base):  # both windows are 10 s at their own rate
        assert config.ecg.window_samples == 10 * config.ecg.sampling_rate_hz
    assert sum(base.ecg.stage_channels) > sum(small.ecg.stage_channels)


def test_unknown_config_name_lists_the_known_ones() -> None:
    with pytest.raises(KeyError, match="cpu-small"):
        load_model_config("no-such-config")


@pytest.mark.parametrize(
    ("path", "key"),
    [((), "embed_dims"), (("ecg",), "sample_rate"), (("fusion",), "depth")],
)
def test_unknown_keys_are_errors(path: tuple[str, ...], key: str) -> None:
    data = packaged_json("cpu-small")
    section = data
    for part in path:
        section = section[part]
    section[key] = 1
    with pytest.raises(ValueError, match=key):
        model_config_from_dict(data)


@pytest.mark.parametrize(
    ("section", "key", "value"),
    [
        ("xray", "image_size", "128"),
        ("xray", "image_size", True),
        ("xray", "pretrained", 1),
        ("xray", "backbone", "vit"),
        ("ecg", "stem_channels", 16),
        ("record", "mixer", "rnn"),
        ("xray", "image_size", 100),  # not a multiple of 32
        ("fusion", "dropout", 1.5),
    ],
)
def test_badly_typed_or_invalid_values_are_errors(section: str, key: str, value: object) -> None:
    data = packaged_json("cpu-small")
    data[section][key] = value
    with pytest.raises(ValueError):
        model_config_from_dict(data)


def test_integers_are_accepted_for_float_fields() -> None:
    data = packaged_json("cpu-small")
    data["fusion"]["dropout"] = 0
    config = model_config_from_dict(data)
    assert config.fusion.dropout == 0.0 and isinstance(config.fusion.dropout, float)


def test_missing_keys_take_defaults() -> None:
    assert model_config_from_dict({}) == ModelConfig()
    assert model_config_from_dict({"ecg": {"kernel_size": 7}}).ecg == EcgEncoderConfig(
        kernel_size=7
    )


def test_with_features_returns_a_sized_copy() -> None:
    record = RecordEncoderConfig()
    sized = record.with_features(17)
    assert (sized.n_features, record.n_features) == (17, 0)
    assert dataclasses.replace(sized, n_features=0) == record


def test_configs_are_frozen() -> None:
    config = load_model_config("cpu-small")
    with pytest.raises(dataclasses.FrozenInstanceError):
        config.embed_dim = 3  # type: ignore[misc]


def test_monai_backbone_refuses_pretrained() -> None:
    with pytest.raises(ValueError, match="pretrained"):
        XrayEncoderConfig(backbone="monai-resnet18", pretrained=True)
    assert XrayEncoderConfig(backbone="monai-resnet18", pretrained=False).image_size == 224
