"""Typed model configurations and the registry of named JSON configs.

A config carries every number the encoders assume about their inputs (image size, ECG sampling
rate and window, text length) so the data layer reads the same numbers instead of guessing them.
Loading is strict: an unknown key or a value of the wrong type is an error, never ignored, because
a silently dropped key means a model trained with settings nobody asked for.
"""

from __future__ import annotations

import dataclasses
import json
import typing
from dataclasses import dataclass, field
from importlib import resources
from importlib.resources.abc import Traversable
from typing import Any, Literal, TypeVar

XrayBackbone = Literal["efficientnet-lite0", "monai-resnet18", "small-cnn"]
RecordMixer = Literal["transformer", "mlp"]

_CONFIG_PACKAGE = "clinic.models"
_CONFIG_FOLDER = "configs"

T = TypeVar("T")


def _require(condition: bool, message: str) -> None:
    if not condition:
        raise ValueError(message)


def _require_positive(owner: str, **values: int) -> None:
    for name, value in values.items():
        _require(value > 0, f"{owner}.{name} must be positive, got {value}")


def _require_probability(owner: str, **values: float) -> None:
    for name, value in values.items():
        _require(0.0 <= value < 1.0, f"{owner}.{name} must be in [0, 1), got {value}")


@dataclass(frozen=True)
class XrayEncoderConfig:
    """Chest X-ray encoder; images arrive as (B, 1, image_size, image_size) in [0, 1]."""

    backbone: XrayBackbone = "efficientnet-lite0"
    pretrained: bool = True
    freeze_backbone: bool = False
    image_size: int = 224
    projection_hidden: int = 512

    def __post_init__(self) -> None:
        _require_positive("xray", image_size=self.image_size, hidden=self.projection_hidden)
        _require(self.image_size % 32 == 0, "xray.image_size must be a multiple of 32")
        _require(
            not (self.backbone != "efficientnet-lite0" and self.pretrained),
            f"xray: {self.backbone} has no packaged weights; set pretrained to false",
        )


@dataclass(frozen=True)
class EcgEncoderConfig:
    """12-lead ECG encoder; signals arrive as (B, 12, window_samples) in mV at sampling_rate_hz."""

    sampling_rate_hz: int = 500
    window_samples: int = 5000
    stem_channels: tuple[int, ...] = (32, 32, 64)
    stage_channels: tuple[int, ...] = (64, 128, 256, 256)
    blocks_per_stage: int = 2
    kernel_size: int = 5
    mask_embed_dim: int = 16
    projection_hidden: int = 256
    dropout: float = 0.1

    def __post_init__(self) -> None:
        _require(len(self.stem_channels) == 3, "ecg.stem_channels must name three conv layers")
        _require(len(self.stage_channels) >= 1, "ecg.stage_channels must not be empty")
        _require_positive(
            "ecg",
            sampling_rate_hz=self.sampling_rate_hz,
            window_samples=self.window_samples,
            blocks_per_stage=self.blocks_per_stage,
            mask_embed_dim=self.mask_embed_dim,
            projection_hidden=self.projection_hidden,
            min_channels=min(*self.stem_channels, *self.stage_channels),
        )
        _require(self.kernel_size % 2 == 1, "ecg.kernel_size must be odd (same padding)")
        _require_probability("ecg", dropout=self.dropout)


@dataclass(frozen=True)
class RecordEncoderConfig:
    """Tabular clinical record encoder; ``n_features`` is only known once the data layer is."""

    n_features: int = 0
    token_dim: int = 32
    mixer: RecordMixer = "transformer"
    layers: int = 2
    heads: int = 4
    dim_feedforward: int = 64
    dropout: float = 0.1
    projection_hidden: int = 128

    def __post_init__(self) -> None:
        _require(self.n_features >= 0, "record.n_features must not be negative")
        _require_positive(
            "record",
            token_dim=self.token_dim,
            layers=self.layers,
            heads=self.heads,
            dim_feedforward=self.dim_feedforward,
            projection_hidden=self.projection_hidden,
        )
        _require(self.token_dim % self.heads == 0, "record.token_dim must divide by record.heads")
        _require_probability("record", dropout=self.dropout)

    def with_features(self, n_features: int) -> RecordEncoderConfig:
        """A copy sized for ``n_features`` columns (the data layer decides F, not the JSON)."""
        return dataclasses.replace(self, n_features=n_features)


@dataclass(frozen=True)
class TextEncoderConfig:
    """Free-text report encoder (MiniLM-L6); ``random_*`` size the tiny test-only model."""

    pretrained: bool = True
    freeze_base: bool = True
    max_length: int = 128
    projection_hidden: int = 256
    random_hidden_size: int = 32
    random_layers: int = 2
    random_heads: int = 2

    def __post_init__(self) -> None:
        _require_positive(
            "report",
            max_length=self.max_length,
            projection_hidden=self.projection_hidden,
            random_hidden_size=self.random_hidden_size,
            random_layers=self.random_layers,
            random_heads=self.random_heads,
        )
        _require(self.max_length <= 512, "report.max_length must be <= 512 (BERT positions)")
        _require(
            self.random_hidden_size % self.random_heads == 0,
            "report.random_hidden_size must divide by report.random_heads",
        )


@dataclass(frozen=True)
class FusionConfig:
    """Fusion transformer over the per-modality embeddings (built elsewhere)."""

    layers: int = 2
    heads: int = 4
    dim_feedforward: int = 256
    dropout: float = 0.1
    modality_dropout: float = 0.3
    reconstruction_weight: float = 0.5

    def __post_init__(self) -> None:
        _require_positive(
            "fusion", layers=self.layers, heads=self.heads, dim_feedforward=self.dim_feedforward
        )
        _require_probability("fusion", dropout=self.dropout, modality_dropout=self.modality_dropout)
        _require(self.reconstruction_weight >= 0.0, "fusion.reconstruction_weight must be >= 0")


@dataclass(frozen=True)
class LoraConfig:
    """LoRA adapter sizes for the encoders' ``lora_targets`` (applied elsewhere)."""

    rank: int = 8
    alpha: int = 16
    dropout: float = 0.0

    def __post_init__(self) -> None:
        _require_positive("lora", rank=self.rank, alpha=self.alpha)
        _require_probability("lora", dropout=self.dropout)


@dataclass(frozen=True)
class ModelConfig:
    """Everything needed to build the encoders and fusion model into one D-dim space."""

    embed_dim: int = 128
    xray: XrayEncoderConfig = field(default_factory=XrayEncoderConfig)
    ecg: EcgEncoderConfig = field(default_factory=EcgEncoderConfig)
    record: RecordEncoderConfig = field(default_factory=RecordEncoderConfig)
    report: TextEncoderConfig = field(default_factory=TextEncoderConfig)
    fusion: FusionConfig = field(default_factory=FusionConfig)
    lora: LoraConfig = field(default_factory=LoraConfig)

    def __post_init__(self) -> None:
        _require_positive("model", embed_dim=self.embed_dim)
        _require(self.embed_dim % self.fusion.heads == 0, "embed_dim must divide by fusion.heads")


def _convert(value: object, hint: Any, where: str) -> object:
    """Check one JSON value against a field's type hint and turn it into the field's type."""
    origin = typing.get_origin(hint)
    if dataclasses.is_dataclass(hint) and isinstance(hint, type):
        if not isinstance(value, dict):
            raise ValueError(f"{where}: expected an object, got {value!r}")
        return _dataclass_from_dict(hint, value, where)
    if origin is Literal:
        if value not in typing.get_args(hint):
            raise ValueError(f"{where}: {value!r} is not one of {list(typing.get_args(hint))}")
        return value
    if origin is tuple:
        if not isinstance(value, list | tuple):
            raise ValueError(f"{where}: expected a list, got {value!r}")
        item_hint = typing.get_args(hint)[0]
        return tuple(_convert(item, item_hint, f"{where}[{i}]") for i, item in enumerate(value))
    return _convert_scalar(value, hint, where)


def _convert_scalar(value: object, hint: Any, where: str) -> object:
    if hint is bool and isinstance(value, bool):
        return value
    if hint is int and isinstance(value, int) and not isinstance(value, bool):
        return value
    if hint is float and isinstance(value, int | float) and not isinstance(value, bool):
        return float(value)
    if hint is str and isinstance(value, str):
        return value
    raise ValueError(f"{where}: expected {getattr(hint, '__name__', hint)}, got {value!r}")


def _dataclass_from_dict(cls: type[T], data: dict[str, Any], where: str) -> T:
    hints = typing.get_type_hints(cls)
    known = {f.name for f in dataclasses.fields(cls)}  # type: ignore[arg-type]
    unknown = sorted(set(data) - known)
    if unknown:
        raise ValueError(f"{where}: unknown keys {unknown}; known: {sorted(known)}")
    kwargs = {key: _convert(value, hints[key], f"{where}.{key}") for key, value in data.items()}
    return cls(**kwargs)


def model_config_from_dict(data: dict[str, Any]) -> ModelConfig:
    """Strict inverse of :func:`model_config_to_dict`; missing keys take the dataclass default."""
    return _dataclass_from_dict(ModelConfig, data, "model")


def _to_plain(value: object) -> object:
    if dataclasses.is_dataclass(value) and not isinstance(value, type):
        return {f.name: _to_plain(getattr(value, f.name)) for f in dataclasses.fields(value)}
    if isinstance(value, tuple):
        return [_to_plain(item) for item in value]
    return value


def model_config_to_dict(config: ModelConfig) -> dict[str, Any]:
    """JSON-ready nested dict (tuples become lists); round-trips exactly."""
    plain = _to_plain(config)
    assert isinstance(plain, dict)
    return plain


def _config_files() -> dict[str, Traversable]:
    folder = resources.files(_CONFIG_PACKAGE).joinpath(_CONFIG_FOLDER)
    return {
        entry.name.removesuffix(".json"): entry
        for entry in folder.iterdir()
        if entry.is_file() and entry.name.endswith(".json")
    }


def list_model_configs() -> list[str]:
    """Names of the packaged configs, sorted (``"cpu-small"``, ``"gpu-base"``, ...)."""
    return sorted(_config_files())


def load_model_config(name: str) -> ModelConfig:
    """Read the packaged config ``configs/<name>.json``; unknown names raise ``KeyError``."""
    files = _config_files()
    if name not in files:
        raise KeyError(f"unknown model config {name!r}; known: {sorted(files)}")
    data = json.loads(files[name].read_text(encoding="utf-8"))
    if not isinstance(data, dict):
        raise ValueError(f"model config {name!r} must be a JSON object")
    return model_config_from_dict(data)


__all__ = [
    "EcgEncoderConfig",
    "FusionConfig",
    "LoraConfig",
    "ModelConfig",
    "RecordEncoderConfig",
    "RecordMixer",
    "TextEncoderConfig",
    "XrayBackbone",
    "XrayEncoderConfig",
    "list_model_configs",
    "load_model_config",
    "model_config_from_dict",
    "model_config_to_dict",
]
