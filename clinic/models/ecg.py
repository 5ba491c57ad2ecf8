"""12-lead ECG encoder: an xresnet1d-style 1-D ResNet that knows which leads are missing.

Missing leads are zeroed before the convolutions and the lead mask enters separately as a learned
embedding concatenated to the pooled features, so a zero lead is never confused with a flat one
and the values of a missing lead cannot influence the output.
"""

from __future__ import annotations

import torch
from torch import Tensor, nn

from clinic.models._projection import ProjectionHead, l2_normalise
from clinic.models.config import EcgEncoderConfig

N_LEADS = 12
ECG_LORA_TARGETS: tuple[str, ...] = ("conv",)  # every Conv1d in the trunk is named ``conv``


class ConvBnAct(nn.Module):
    """Conv1d (same padding) → BatchNorm → optional ReLU."""

    def __init__(
        self,
        in_channels: int,
        out_channels: int,
        kernel_size: int,
        stride: int = 1,
        activate: bool = True,
        zero_init: bool = False,
    ) -> None:
        super().__init__()
        self.conv = nn.Conv1d(
            in_channels, out_channels, kernel_size, stride, padding=kernel_size // 2, bias=False
        )
        self.bn = nn.BatchNorm1d(out_channels)
        if zero_init:  # xresnet: each residual branch starts as identity, which trains stably
            nn.init.zeros_(self.bn.weight)
        self.act: nn.Module = nn.ReLU(inplace=True) if activate else nn.Identity()

    def forward(self, x: Tensor) -> Tensor:
        out: Tensor = self.act(self.bn(self.conv(x)))
        return out


class Shortcut(nn.Module):
    """Identity path of a residual block; average-pools then 1x1-projects when shapes change."""

    def __init__(self, in_channels: int, out_channels: int, stride: int) -> None:
        super().__init__()
        self.pool: nn.Module = (
            nn.AvgPool1d(stride, stride, ceil_mode=True) if stride > 1 else nn.Identity()
        )
        self.proj: nn.Module = (
            ConvBnAct(in_channels, out_channels, 1, activate=False)
            if in_channels != out_channels
            else nn.Identity()
        )

    def forward(self, x: Tensor) -> Tensor:
        out: Tensor = self.proj(self.pool(x))
        return out


class BasicBlock1d(nn.Module):
    def __init__(self, in_channels: int, out_channels: int, kernel_size: int, stride: int) -> None:
        super().__init__()
        self.conv1 = ConvBnAct(in_channels, out_channels, kernel_size, stride)
        self.conv2 = ConvBnAct(
            out_channels, out_channels, kernel_size, activate=False, zero_init=True
        )
        self.shortcut = Shortcut(in_channels, out_channels, stride)
        self.act = nn.ReLU(inplace=True)

    def forward(self, x: Tensor) -> Tensor:
        out: Tensor = self.act(self.conv2(self.conv1(x)) + self.shortcut(x))
        return out


def _stem(config: EcgEncoderConfig) -> nn.Sequential:
    widths = (N_LEADS, *config.stem_channels)
    layers: list[nn.Module] = [
        ConvBnAct(widths[i], widths[i + 1], config.kernel_size, stride=2 if i == 0 else 1)
        for i in range(3)
    ]
    layers.append(nn.MaxPool1d(3, stride=2, padding=1))
    return nn.Sequential(*layers)


def _stages(config: EcgEncoderConfig) -> nn.Sequential:
    stages: list[nn.Module] = []
    in_channels = config.stem_channels[-1]
    for index, out_channels in enumerate(config.stage_channels):
        blocks: list[nn.Module] = []
        for block in range(config.blocks_per_stage):
            stride = 2 if index > 0 and block == 0 else 1
            blocks.append(BasicBlock1d(in_channels, out_channels, config.kernel_size, stride))
            in_channels = out_channels
        stages.append(nn.Sequential(*blocks))
    return nn.Sequential(*stages)


def _check_inputs(signal: Tensor, lead_mask: Tensor) -> None:
    if signal.ndim != 3 or signal.shape[1] != N_LEADS:
        raise ValueError(f"expected a (B, {N_LEADS}, T) signal, got {tuple(signal.shape)}")
    if lead_mask.shape != signal.shape[:2] or lead_mask.dtype != torch.bool:
        raise ValueError(f"expected a bool (B, {N_LEADS}) lead mask, got {lead_mask.dtype}")


class ResNet1dTrunk(nn.Module):
    """(B, 12, T) signal + (B, 12) lead mask → (B, out_features) pooled features."""

    def __init__(self, config: EcgEncoderConfig) -> None:
        super().__init__()
        self.stem = _stem(config)
        self.stages = _stages(config)
        self.mask_embedding = nn.Linear(N_LEADS, config.mask_embed_dim)
        # Average + max pooling of the last stage, then the lead-mask embedding.
        self.out_features = 2 * config.stage_channels[-1] + config.mask_embed_dim

    def forward(self, signal: Tensor, lead_mask: Tensor) -> Tensor:
        _check_inputs(signal, lead_mask)
        present = lead_mask.unsqueeze(-1)  # (B, 12, 1)
        # torch.where, not a product: NaN/inf in a missing lead must not leak through 0 * x.
        x = torch.where(present, signal, torch.zeros((), dtype=signal.dtype, device=signal.device))
        maps = self.stages(self.stem(x))  # (B, C, T')
        pooled = torch.cat([maps.mean(dim=-1), maps.amax(dim=-1)], dim=-1)  # (B, 2C)
        mask_code = self.mask_embedding(lead_mask.to(torch.float32))  # (B, mask_embed_dim)
        return torch.cat([pooled, mask_code.to(pooled.dtype)], dim=-1)  # (B, out_features)


class EcgEncoder(nn.Module):
    """(B, 12, T) signal in mV + (B, 12) bool lead mask → (B, D) unit-norm embedding."""

    lora_targets: tuple[str, ...] = ECG_LORA_TARGETS

    def __init__(self, config: EcgEncoderConfig, embed_dim: int) -> None:
        super().__init__()
        self.config = config
        self.trunk = ResNet1dTrunk(config)
        self.projection = ProjectionHead(
            self.trunk.out_features, config.projection_hidden, embed_dim
        )

    def features(self, signal: Tensor, lead_mask: Tensor) -> Tensor:
        """Pooled trunk features (B, F) before the projection (reused by supervised baselines)."""
        out: Tensor = self.trunk(signal, lead_mask)
        return out

    def forward(self, signal: Tensor, lead_mask: Tensor) -> Tensor:
        return l2_normalise(self.projection(self.features(signal, lead_mask)))  # (B, D)


class ResNet1dClassifier(nn.Module):
    """Supervised baseline on the same trunk: (B, 12, T) + (B, 12) → logits (B, K)."""

    lora_targets: tuple[str, ...] = ECG_LORA_TARGETS

    def __init__(self, config: EcgEncoderConfig, num_labels: int) -> None:
        super().__init__()
        if num_labels < 1:
            raise ValueError(f"num_labels must be positive, got {num_labels}")
        self.config = config
        self.trunk = ResNet1dTrunk(config)
        self.dropout = nn.Dropout(config.dropout)
        self.classifier = nn.Linear(self.trunk.out_features, num_labels)

    def forward(self, signal: Tensor, lead_mask: Tensor) -> Tensor:
        logits: Tensor = self.classifier(self.dropout(self.trunk(signal, lead_mask)))
        return logits  # (B, K)
