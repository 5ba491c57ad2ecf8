"""ClinicModel: four encoders into one space, then fusion and a multi-label head.

    batch ──► encoders[m] (rows where m is present) ──► (B, D) unit vectors per modality
                                                          │  (+ measured ECG features)
                                                          ▼
                               ModalityFusion (padding mask, modality dropout)
                                                          ▼
                                       logits (B, K), fused (B, D)

Encoders run only on the rows that have their modality, so a batch of ECG-only cases never pays
for the image network. ``modalities`` restricts a model to a subset (a dedicated single- or
sub-set model for baselines shares all the code).
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Self

import torch
from torch import Tensor, nn
from torch.nn import functional

from clinic.data.dataset import PreprocessConfig
from clinic.models._projection import l2_normalise
from clinic.models.cache import FrozenFeatureCache, token_keys
from clinic.models.config import ModelConfig
from clinic.models.encoders import build_encoders
from clinic.models.fusion import ModalityFusion, drop_modalities
from clinic.models.lora import attached_adapters, base_content_hash
from clinic.models.loss import LogitScale
from schemas.modalities import MODALITIES

_INPUT_KEYS = {
    "xray": ("xray",),
    "ecg": ("ecg", "ecg_lead_mask"),
    "record": ("record", "record_missing"),
    "report": ("report_input_ids", "report_attention_mask"),
}


@dataclass
class ModelOutput:
    logits: Tensor  # (B, K)
    fused: Tensor  # (B, D)
    embeddings: dict[str, Tensor]  # modality → (B, D), zeros where absent
    present: dict[str, Tensor]  # modality → (B,) bool, after modality dropout
    reconstruction_loss: Tensor


def trim_padding(input_ids: Tensor, attention_mask: Tensor) -> list[Tensor]:
    """Drop the padding columns no row of the batch uses: attention over fixed-length padded
    reports costs as much for the padding as for the words, and the result is identical."""
    used = int(attention_mask.sum(dim=1).max().item()) if attention_mask.numel() else 1
    width = max(used, 1)
    return [input_ids[:, :width], attention_mask[:, :width]]


class MeasurementEncoder(nn.Module):
    """Measured ECG features (intervals, amplitudes, ST levels) → a residual in the ECG space."""

    def __init__(self, n_features: int, embed_dim: int, hidden: int = 128) -> None:
        super().__init__()
        self.net = nn.Sequential(
            nn.Linear(2 * n_features, hidden),
            nn.GELU(),
            nn.Dropout(0.1),
            nn.Linear(hidden, embed_dim),
        )

    def forward(self, values: Tensor, missing: Tensor) -> Tensor:
        out: Tensor = self.net(torch.cat([values, missing], dim=1))
        return out  # (B, D)


class ClinicModel(nn.Module):
    """The whole model; ``label_names`` fixes the head's output order by name."""

    def __init__(
        self,
        config: ModelConfig,
        preprocess: PreprocessConfig,
        label_names: Sequence[str],
        modalities: Sequence[str] = MODALITIES,
    ) -> None:
        super().__init__()
        self.config, self.preprocess = config, preprocess
        self.label_names = tuple(label_names)
        self.modalities = tuple(m for m in MODALITIES if m in set(modalities))
        encoders = build_encoders(config, max(preprocess.n_record_features, 1))
        self.encoders = nn.ModuleDict({m: encoders[m] for m in self.modalities})
        self.measurements = (
            MeasurementEncoder(preprocess.n_measurements, config.embed_dim)
            if preprocess.n_measurements and "ecg" in self.modalities
            else None
        )
        f = config.fusion
        self.fusion = ModalityFusion(
            config.embed_dim, len(self.label_names), layers=f.layers, heads=f.heads,
            dim_feedforward=f.dim_feedforward, dropout=f.dropout,
        )  # fmt: skip
        self.logit_scale = LogitScale()
        self.feature_cache = FrozenFeatureCache()
        self.encoders_frozen = False  # set while training adapters: base statistics stay fixed

    def train(self, mode: bool = True) -> Self:
        """With ``encoders_frozen`` the encoders stay in eval mode: BatchNorm running statistics
        are part of the base weights an adapter is tied to, and must not drift."""
        super().train(mode)
        if self.encoders_frozen:
            self.encoders.eval()
        return self

    def present_masks(self, batch: Mapping[str, Tensor]) -> dict[str, Tensor]:
        """Presence per modality this model uses (rows without it, or modalities it ignores: no)."""
        return {m: batch[f"present_{m}"].bool() for m in self.modalities}

    def embed(self, batch: Mapping[str, Tensor]) -> dict[str, Tensor]:
        """Unit embeddings (B, D) per modality of this model; zero rows where absent."""
        present = self.present_masks(batch)
        out: dict[str, Tensor] = {}
        for modality in self.modalities:
            rows = present[modality]
            size = (rows.shape[0], self.config.embed_dim)
            full = torch.zeros(size, device=rows.device)
            if bool(rows.any()):
                encoded = self._encode(modality, batch, rows)
                full = full.to(encoded.dtype).index_put((rows.nonzero(as_tuple=True)[0],), encoded)
            out[modality] = full
        return out

    def _encode(self, modality: str, batch: Mapping[str, Tensor], rows: Tensor) -> Tensor:
        encoder: Any = self.encoders[modality]
        inputs = [batch[key][rows] for key in _INPUT_KEYS[modality]]
        if modality == "report":
            inputs = trim_padding(inputs[0], inputs[1])
        if self._backbone_frozen(modality):
            keys = token_keys(*inputs) if modality == "report" else None
            pooled = self.feature_cache.features(modality, encoder.features, *inputs, keys=keys)
            out: Tensor = l2_normalise(encoder.projection(pooled))
        else:
            out = encoder(*inputs)
        if modality == "ecg" and self.measurements is not None:
            measured = self.measurements(
                batch["ecg_measurements"][rows], batch["ecg_measurements_missing"][rows]
            )
            out = functional.normalize(out + measured, dim=-1)
        return out

    def bind_feature_cache(self, directory: Path) -> None:
        """Persist frozen-backbone features under ``directory``, keyed by the backbone weights."""
        namespaces: dict[str, str] = {}
        for modality in ("xray", "report"):
            if modality in self.modalities and self._backbone_frozen(modality):
                encoder: Any = self.encoders[modality]
                backbone = encoder.backbone if modality == "xray" else encoder.base
                namespaces[modality] = base_content_hash(backbone)
        self.feature_cache.bind(directory, namespaces)

    def _backbone_frozen(self, modality: str) -> bool:
        """True when the encoder's backbone is frozen and carries no adapters (cacheable)."""
        encoder: Any = self.encoders[modality]
        config = encoder.config
        frozen = getattr(config, "freeze_backbone", False) or getattr(config, "freeze_base", False)
        return modality in ("xray", "report") and frozen and not attached_adapters(encoder)

    def forward(
        self,
        batch: Mapping[str, Tensor],
        *,
        drop_probability: float = 0.0,
        hide: Sequence[str] = (),
    ) -> ModelOutput:
        """Encode, optionally drop modalities (training) or ``hide`` some (evaluation), fuse."""
        embeddings = self.embed(batch)
        return self.fuse(embeddings, self.present_masks(batch), drop_probability, hide)

    def fuse(
        self,
        embeddings: Mapping[str, Tensor],
        present: Mapping[str, Tensor],
        drop_probability: float = 0.0,
        hide: Sequence[str] = (),
    ) -> ModelOutput:
        """Fusion step alone: also used on cached embeddings, where encoders are frozen."""
        visible: dict[str, Tensor] = {
            m: mask & (m not in hide) for m, mask in present.items() if m in self.modalities
        }
        kept, dropped = drop_modalities(visible, drop_probability if self.training else 0.0)
        fused = self.fusion(embeddings, kept, dropped)
        return ModelOutput(
            fused.logits, fused.fused, dict(embeddings), kept, fused.reconstruction_loss
        )
