"""Clinical record encoder: one token per feature (FT-Transformer style) → shared space.

Each feature f becomes ``value_f * w_f + b_f``, or a learned per-feature "missing" token where it
is absent, so the encoder sees *that* a value is missing rather than an imputed number, and the
value stored under a missing feature cannot change the embedding.
"""

from __future__ import annotations

import torch
from torch import Tensor, nn

from clinic.models._projection import ProjectionHead, l2_normalise
from clinic.models.config import RecordEncoderConfig


class FeatureTokenizer(nn.Module):
    """(B, F) values + (B, F) missing flags → (B, F, d) tokens."""

    def __init__(self, n_features: int, token_dim: int) -> None:
        super().__init__()
        self.weight = nn.Parameter(torch.randn(n_features, token_dim) * 0.1)
        self.bias = nn.Parameter(torch.zeros(n_features, token_dim))
        self.missing = nn.Parameter(torch.randn(n_features, token_dim) * 0.1)

    def forward(self, values: Tensor, missing: Tensor) -> Tensor:
        absent = missing.to(torch.bool).unsqueeze(-1)  # (B, F, 1)
        # Zero first: a NaN under a missing flag would otherwise poison the gradients of w_f.
        clean = values.to(self.weight.dtype).unsqueeze(-1).masked_fill(absent, 0.0)
        tokens = clean * self.weight + self.bias  # (B, F, d)
        return torch.where(absent, self.missing.to(tokens.dtype), tokens)


class TransformerBlock(nn.Module):
    """Pre-norm self-attention + GELU feed-forward.

    Written out rather than ``nn.TransformerEncoderLayer``, whose eval-mode fast path reads
    ``linear1.weight`` directly and so would silently skip LoRA adapters wrapped around it.
    """

    def __init__(self, dim: int, heads: int, dim_feedforward: int, dropout: float) -> None:
        super().__init__()
        self.attention_norm = nn.LayerNorm(dim)
        self.attention = nn.MultiheadAttention(dim, heads, dropout=dropout, batch_first=True)
        self.feedforward_norm = nn.LayerNorm(dim)
        self.linear1 = nn.Linear(dim, dim_feedforward)
        self.activation = nn.GELU()
        self.linear2 = nn.Linear(dim_feedforward, dim)
        self.dropout = nn.Dropout(dropout)

    def forward(self, tokens: Tensor) -> Tensor:
        normed = self.attention_norm(tokens)  # (B, N, d)
        attended, _ = self.attention(normed, normed, normed, need_weights=False)
        tokens = tokens + self.dropout(attended)
        hidden = self.activation(self.linear1(self.feedforward_norm(tokens)))  # (B, N, ff)
        out: Tensor = tokens + self.dropout(self.linear2(self.dropout(hidden)))
        return out


class TransformerMixer(nn.Module):
    """Self-attention over [CLS] + F feature tokens; the CLS output summarises the record."""

    lora_targets: tuple[str, ...] = ("linear1", "linear2")

    def __init__(self, config: RecordEncoderConfig) -> None:
        super().__init__()
        self.cls = nn.Parameter(torch.randn(1, 1, config.token_dim) * 0.1)
        self.blocks = nn.Sequential(
            *(
                TransformerBlock(
                    config.token_dim, config.heads, config.dim_feedforward, config.dropout
                )
                for _ in range(config.layers)
            )
        )
        self.norm = nn.LayerNorm(config.token_dim)
        self.out_features = config.token_dim

    def forward(self, tokens: Tensor) -> Tensor:
        cls = self.cls.expand(tokens.shape[0], -1, -1).to(tokens.dtype)  # (B, 1, d)
        mixed = self.blocks(torch.cat([cls, tokens], dim=1))  # (B, 1 + F, d)
        out: Tensor = self.norm(mixed[:, 0])
        return out  # (B, d)


class MlpMixer(nn.Module):
    """Flattened tokens through an MLP: cheaper than attention for a handful of features."""

    lora_targets: tuple[str, ...] = ("hidden",)

    def __init__(self, config: RecordEncoderConfig) -> None:
        super().__init__()
        self.hidden = nn.Linear(config.n_features * config.token_dim, config.dim_feedforward)
        self.activation = nn.GELU()
        self.dropout = nn.Dropout(config.dropout)
        self.out_features = config.dim_feedforward

    def forward(self, tokens: Tensor) -> Tensor:
        out: Tensor = self.dropout(self.activation(self.hidden(tokens.flatten(1))))
        return out  # (B, dim_feedforward)


class RecordEncoder(nn.Module):
    """(B, F) normalised values + (B, F) missing flags (1 = missing) → (B, D) unit embedding."""

    lora_targets: tuple[str, ...]

    def __init__(self, config: RecordEncoderConfig, embed_dim: int) -> None:
        super().__init__()
        if config.n_features < 1:
            raise ValueError("record config has no features: use config.with_features(n) first")
        self.config = config
        self.tokenizer = FeatureTokenizer(config.n_features, config.token_dim)
        mixer: TransformerMixer | MlpMixer = (
            TransformerMixer(config) if config.mixer == "transformer" else MlpMixer(config)
        )
        self.mixer = mixer
        self.lora_targets = mixer.lora_targets
        self.projection = ProjectionHead(mixer.out_features, config.projection_hidden, embed_dim)

    def features(self, values: Tensor, missing: Tensor) -> Tensor:
        """Mixed record features (B, F') before the projection."""
        expected = (values.shape[0], self.config.n_features)
        if values.shape != expected or missing.shape != expected:
            raise ValueError(f"expected values and missing of shape (B, {expected[1]})")
        out: Tensor = self.mixer(self.tokenizer(values, missing))
        return out

    def forward(self, values: Tensor, missing: Tensor) -> Tensor:
        return l2_normalise(self.projection(self.features(values, missing)))  # (B, D)
