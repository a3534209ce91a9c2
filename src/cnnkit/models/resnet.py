"""ResNet-18 and ResNet-50 (He et al., 2015) in torchvision's exact state-dict layout.

    conv 7x7/2 (3 -> 64) -> BatchNorm -> ReLU -> maxpool 3x3/2
    -> layer1..layer4 (residual blocks, 64/128/256/512 channels, stride 2 from layer2 on)
    -> global average pool -> linear

ResNet-18 stacks [2, 2, 2, 2] basic blocks (two 3x3 convs); ResNet-50 stacks [3, 4, 6, 3]
bottleneck blocks (1x1 -> 3x3 -> 1x1, 4x wider out) with the stride on the 3x3 conv ("v1.5").

Written for cnnkit from the published description. Module and parameter names follow
torchvision's so that the ImageNet weights PyTorch publishes at download.pytorch.org/models
(the files torchvision's ``ResNet18_Weights.IMAGENET1K_V1`` and ``ResNet50_Weights.IMAGENET1K_V2``
name; see ``cnnkit.data.pretrained``) load unchanged with ``load_state_dict``.
"""

from __future__ import annotations

import torch
from torch import nn

from cnnkit.models.registry import register_model


def conv3x3(channels_in: int, channels_out: int, stride: int = 1) -> nn.Conv2d:
    """A 3x3 conv without bias (the BatchNorm after it has one) and 'same' padding."""
    return nn.Conv2d(channels_in, channels_out, kernel_size=3, stride=stride, padding=1, bias=False)


def conv1x1(channels_in: int, channels_out: int, stride: int = 1) -> nn.Conv2d:
    """A 1x1 conv without bias."""
    return nn.Conv2d(channels_in, channels_out, kernel_size=1, stride=stride, bias=False)


class BasicBlock(nn.Module):
    """conv3x3 -> BN -> ReLU -> conv3x3 -> BN, plus the shortcut, then ReLU (ResNet-18/34)."""

    expansion = 1  # output channels = channels * expansion

    def __init__(self, channels_in: int, channels: int, stride: int = 1, downsample: nn.Module | None = None):
        super().__init__()
        # Attribute order is torchvision's, so that state_dict keys come out in its order too.
        self.conv1 = conv3x3(channels_in, channels, stride)
        self.bn1 = nn.BatchNorm2d(channels)
        self.relu = nn.ReLU(inplace=True)
        self.conv2 = conv3x3(channels, channels)
        self.bn2 = nn.BatchNorm2d(channels)
        self.downsample = downsample

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        shortcut = x if self.downsample is None else self.downsample(x)
        out = self.relu(self.bn1(self.conv1(x)))
        out = self.bn2(self.conv2(out))
        return self.relu(out + shortcut)


class Bottleneck(nn.Module):
    """conv1x1 -> BN -> ReLU -> conv3x3 (strided) -> BN -> ReLU -> conv1x1 (4x wider) -> BN,
    plus the shortcut, then ReLU (ResNet-50 and deeper)."""

    expansion = 4

    def __init__(self, channels_in: int, channels: int, stride: int = 1, downsample: nn.Module | None = None):
        super().__init__()
        self.conv1 = conv1x1(channels_in, channels)
        self.bn1 = nn.BatchNorm2d(channels)
        # The stride sits on the 3x3 conv, not the first 1x1 (torchvision's "v1.5"): a strided
        # 1x1 conv would skip three quarters of its input; ~0.5 % better top-1 on ImageNet.
        self.conv2 = conv3x3(channels, channels, stride)
        self.bn2 = nn.BatchNorm2d(channels)
        self.conv3 = conv1x1(channels, channels * self.expansion)
        self.bn3 = nn.BatchNorm2d(channels * self.expansion)
        self.relu = nn.ReLU(inplace=True)
        self.downsample = downsample

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        shortcut = x if self.downsample is None else self.downsample(x)
        out = self.relu(self.bn1(self.conv1(x)))
        out = self.relu(self.bn2(self.conv2(out)))
        out = self.bn3(self.conv3(out))
        return self.relu(out + shortcut)


def make_layer(
    block: type[BasicBlock | Bottleneck], channels_in: int, channels: int, blocks: int, stride: int
) -> nn.Sequential:
    """``blocks`` blocks of width ``channels``; the first takes ``channels_in`` and applies ``stride``."""
    channels_out = channels * block.expansion
    downsample = None
    if stride != 1 or channels_in != channels_out:
        # The shortcut must match the block's output in size and channels: a strided 1x1 conv.
        downsample = nn.Sequential(conv1x1(channels_in, channels_out, stride), nn.BatchNorm2d(channels_out))
    first = block(channels_in, channels, stride, downsample)
    return nn.Sequential(first, *(block(channels_out, channels) for _ in range(1, blocks)))


class ResNet(nn.Module):
    """A ResNet of ``block``s, ``blocks_per_layer`` of them in each of the four layers."""

    # The final classifier layer, by attribute name: cnnkit replaces it when fine-tuning.
    head_name = "fc"
    # What Grad-CAM explains (``cnnkit.runtime.explanation``): layer4's output, before the global
    # average pool (1/32 of the input's side: 7x7 at 224 px, 1x1 at 32 px).
    feature_layer_names = ("layer4",)

    def __init__(
        self,
        block: type[BasicBlock | Bottleneck],
        blocks_per_layer: tuple[int, int, int, int],
        num_classes: int = 10,
        image_size: int = 32,
    ) -> None:
        super().__init__()
        if image_size < 32:
            raise ValueError(
                f"A ResNet downsamples by 32 before its global pool, so image_size must be >= 32. "
                f"Received: image_size={image_size}"
            )
        self.conv1 = nn.Conv2d(3, 64, kernel_size=7, stride=2, padding=3, bias=False)
        self.bn1 = nn.BatchNorm2d(64)
        self.relu = nn.ReLU(inplace=True)
        self.maxpool = nn.MaxPool2d(kernel_size=3, stride=2, padding=1)
        widening = block.expansion
        self.layer1 = make_layer(block, 64, 64, blocks_per_layer[0], stride=1)
        self.layer2 = make_layer(block, 64 * widening, 128, blocks_per_layer[1], stride=2)
        self.layer3 = make_layer(block, 128 * widening, 256, blocks_per_layer[2], stride=2)
        self.layer4 = make_layer(block, 256 * widening, 512, blocks_per_layer[3], stride=2)
        self.avgpool = nn.AdaptiveAvgPool2d(1)
        self.fc = nn.Linear(512 * block.expansion, num_classes)
        self._initialize()

    def _initialize(self) -> None:
        # torchvision's initialisation (He et al.: variance 2 / fan-out for convs followed by
        # ReLU), so that training from scratch starts where torchvision's does.
        for module in self.modules():
            if isinstance(module, nn.Conv2d):
                nn.init.kaiming_normal_(module.weight, mode="fan_out", nonlinearity="relu")
            elif isinstance(module, nn.BatchNorm2d):
                nn.init.ones_(module.weight)
                nn.init.zeros_(module.bias)

    def forward(self, images: torch.Tensor) -> torch.Tensor:
        x = self.maxpool(self.relu(self.bn1(self.conv1(images))))
        x = self.layer4(self.layer3(self.layer2(self.layer1(x))))
        return self.fc(self.avgpool(x).flatten(1))


@register_model
def resnet18(num_classes: int = 10, image_size: int = 32) -> ResNet:
    """ResNet-18: 11.7M parameters with 1000 classes; ImageNet weights in ``cnnkit.data.pretrained``."""
    return ResNet(BasicBlock, (2, 2, 2, 2), num_classes, image_size)


@register_model
def resnet50(num_classes: int = 10, image_size: int = 32) -> ResNet:
    """ResNet-50 (v1.5, stride on the 3x3 convs): 25.6M parameters with 1000 classes; ImageNet
    weights in ``cnnkit.data.pretrained``."""
    return ResNet(Bottleneck, (3, 4, 6, 3), num_classes, image_size)
