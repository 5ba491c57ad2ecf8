"""One encoder per modality, each mapping its input into the shared D-dim unit sphere.

The modality classes live in their own modules (``xray``, ``ecg``, ``text``, ``record``); this
module re-exports them and builds the set a model needs from one :class:`ModelConfig`.
"""

from __future__ import annotations

from torch import nn

from clinic.models.config import ModelConfig
from clinic.models.ecg import EcgEncoder, ResNet1dClassifier
from clinic.models.record import RecordEncoder
from clinic.models.text import TextEncoder
from clinic.models.xray import XrayEncoder


def build_encoders(config: ModelConfig, n_record_features: int) -> nn.ModuleDict:
    """Encoders keyed by modality name in canonical order (xray, ecg, record, report)."""
    dim = config.embed_dim
    return nn.ModuleDict(
        {
            "xray": XrayEncoder(config.xray, dim),
            "ecg": EcgEncoder(config.ecg, dim),
            "record": RecordEncoder(config.record.with_features(n_record_features), dim),
            "report": TextEncoder(config.report, dim),
        }
    )


__all__ = [
    "EcgEncoder",
    "RecordEncoder",
    "ResNet1dClassifier",
    "TextEncoder",
    "XrayEncoder",
    "build_encoders",
]
