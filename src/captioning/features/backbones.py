"""The encoder networks: each wraps a classifier (torchvision's, or a small one of ours) so that
``forward`` returns the feature map the captioner attends over, and ``blocks()`` lists its trunk
in input-to-output order for fine-tuning ("the last N blocks").

A wrapper keeps the network under ``.net`` and drops the classifier layers it does not use, so
its state dict is the trunk only (what a fine-tuned model saves). Checkpoints of the whole
torchvision network load into the network before it is wrapped (``captioning.features.weights``).
"""

from __future__ import annotations

from typing import TYPE_CHECKING

import torch
import torch.nn.functional as F
from torch import nn

if TYPE_CHECKING:  # imported when a torchvision network is built (2-3 s), not before
    from torchvision import models


class Encoder(nn.Module):
    """Images (B, 3, S, S), normalised as the spec says -> feature maps (B, C, G, G)."""

    net: nn.Module

    def blocks(self) -> list[nn.Module]:
        """The trunk's blocks in order; fine-tuning trains the last N of them."""
        raise NotImplementedError


def _group(*modules: nn.Module) -> nn.Module:
    """A transient container (not registered on the encoder, so state-dict keys stay put)."""
    return nn.Sequential(*modules)


# --------------------------------------------------------------------------------------------
# EfficientNet-Lite0 (bundled ImageNet weights)
# --------------------------------------------------------------------------------------------


class EfficientNetLiteEncoder(Encoder):
    """Last conv feature map of EfficientNet-Lite0: (B, 1280, 7, 7) at 224 px.

    The classifier stays in ``net`` (1.3 M parameters): the checkpoint loads strictly and a
    test classifies a known photo with it. Blocks: stem, the 16 MBConv blocks, head.
    """

    def __init__(self, net: nn.Module) -> None:
        super().__init__()
        self.net = net

    def forward(self, images: torch.Tensor) -> torch.Tensor:
        return self.net.extract_features(images)

    def blocks(self) -> list[nn.Module]:
        net = self.net
        return [
            _group(net._conv_stem, net._bn0),
            *net._blocks,
            _group(net._conv_head, net._bn1),
        ]


def efficientnet_lite0_network() -> nn.Module:
    from efficientnet_lite_pytorch import EfficientNet

    return EfficientNet.from_name("efficientnet-lite0")


# --------------------------------------------------------------------------------------------
# torchvision backbones
# --------------------------------------------------------------------------------------------


class ResNetEncoder(Encoder):
    """layer4 of a ResNet, optionally average-pooled to a fixed grid (Show-Attend-Tell pools
    ResNet-101's 8x8 map at 256 px to 14x14). Blocks: stem, layer1..layer4."""

    def __init__(self, net: models.ResNet, grid: int | None = None) -> None:
        super().__init__()
        net.fc = nn.Identity()  # type: ignore[assignment]
        self.net = net
        self.pool = nn.AdaptiveAvgPool2d((grid, grid)) if grid else nn.Identity()

    def forward(self, images: torch.Tensor) -> torch.Tensor:
        net = self.net
        x = net.maxpool(net.relu(net.bn1(net.conv1(images))))  # (B, 64, S/4, S/4)
        x = net.layer4(net.layer3(net.layer2(net.layer1(x))))  # (B, 2048, S/32, S/32)
        return self.pool(x)  # (B, 2048, G, G)

    def blocks(self) -> list[nn.Module]:
        net = self.net
        return [_group(net.conv1, net.bn1), net.layer1, net.layer2, net.layer3, net.layer4]


class VGGEncoder(Encoder):
    """conv5_3 of VGG-16 after its ReLU, before the last max-pool: (B, 512, 14, 14) at 224 px.
    Blocks: the five conv groups (conv1_x .. conv5_x)."""

    def __init__(self, net: models.VGG) -> None:
        super().__init__()
        net.classifier = nn.Identity()  # type: ignore[assignment]
        net.features = net.features[:-1]  # drop the final max-pool
        self.net = net

    def forward(self, images: torch.Tensor) -> torch.Tensor:
        return self.net.features(images)

    def blocks(self) -> list[nn.Module]:
        groups, current = [], []
        for layer in self.net.features:
            current.append(layer)
            if isinstance(layer, nn.MaxPool2d):
                groups.append(_group(*current))
                current = []
        groups.append(_group(*current))
        return groups


class InceptionEncoder(Encoder):
    """Mixed_7c of Inception-v3: (B, 2048, 8, 8) at 299 px, the TensorFlow tutorial's features.
    Blocks: the stem (up to the second max-pool), then each Mixed_* module."""

    _MIXED = ("5b", "5c", "5d", "6a", "6b", "6c", "6d", "6e", "7a", "7b", "7c")

    def __init__(self, net: models.Inception3) -> None:
        super().__init__()
        net.AuxLogits = None
        net.aux_logits = False
        net.fc = nn.Identity()  # type: ignore[assignment]
        # Inputs are normalised to [-1, 1] by the spec, as Google's weights expect.
        net.transform_input = False
        self.net = net

    def _stem(self) -> list[nn.Module]:
        n = self.net
        return [
            n.Conv2d_1a_3x3,
            n.Conv2d_2a_3x3,
            n.Conv2d_2b_3x3,
            n.maxpool1,
            n.Conv2d_3b_1x1,
            n.Conv2d_4a_3x3,
            n.maxpool2,
        ]

    def forward(self, images: torch.Tensor) -> torch.Tensor:
        x = images
        for block in self.blocks():
            x = block(x)
        return x

    def blocks(self) -> list[nn.Module]:
        mixed = [getattr(self.net, f"Mixed_{name}") for name in self._MIXED]
        return [_group(*self._stem()), *mixed]


class DenseNetEncoder(Encoder):
    """DenseNet-201 features after the final norm + ReLU, global-average-pooled:
    (B, 1920, 1, 1). Blocks: stem, then each dense block with its transition (the last with
    the final norm)."""

    def __init__(self, net: models.DenseNet) -> None:
        super().__init__()
        net.classifier = nn.Identity()  # type: ignore[assignment]
        self.net = net

    def forward(self, images: torch.Tensor) -> torch.Tensor:
        x = F.relu(self.net.features(images))  # (B, 1920, S/32, S/32)
        return F.adaptive_avg_pool2d(x, 1)  # (B, 1920, 1, 1)

    def blocks(self) -> list[nn.Module]:
        f = self.net.features
        return [
            _group(f.conv0, f.norm0),
            _group(f.denseblock1, f.transition1),
            _group(f.denseblock2, f.transition2),
            _group(f.denseblock3, f.transition3),
            _group(f.denseblock4, f.norm5),
        ]


class AlexNetEncoder(Encoder):
    """fc7 of AlexNet after its ReLU (m-RNN's image feature): (B, 4096, 1, 1).
    Blocks: conv1..conv5, fc6, fc7."""

    def __init__(self, net: models.AlexNet) -> None:
        super().__init__()
        net.classifier = net.classifier[:6]  # dropout, fc6, relu, dropout, fc7, relu
        self.net = net

    def forward(self, images: torch.Tensor) -> torch.Tensor:
        x = self.net.avgpool(self.net.features(images))  # (B, 256, 6, 6)
        x = self.net.classifier(torch.flatten(x, 1))  # (B, 4096)
        return x[:, :, None, None]  # (B, 4096, 1, 1)

    def blocks(self) -> list[nn.Module]:
        f, c = self.net.features, self.net.classifier
        return [f[0:3], f[3:6], f[6:8], f[8:10], f[10:13], c[0:3], c[3:6]]


# --------------------------------------------------------------------------------------------
# A small CNN trained from scratch
# --------------------------------------------------------------------------------------------


class SmallCNN(nn.Module):
    """Five blocks of conv 3x3 (stride 2) + batch norm + ReLU; 1.0 M parameters, ~0.2 GMACs at
    224 px (half of EfficientNet-Lite0). A from-scratch baseline; the CAPTCHA reader trains it."""

    WIDTHS = (32, 64, 128, 256, 256)

    def __init__(self, in_channels: int = 3) -> None:
        super().__init__()
        layers: list[nn.Module] = []
        previous = in_channels
        for width in self.WIDTHS:
            layers.append(
                nn.Sequential(
                    nn.Conv2d(previous, width, 3, stride=2, padding=1, bias=False),
                    nn.BatchNorm2d(width),
                    nn.ReLU(inplace=True),
                )
            )
            previous = width
        self.features = nn.Sequential(*layers)

    def forward(self, images: torch.Tensor) -> torch.Tensor:
        return self.features(images)


class ScratchCNNEncoder(Encoder):
    """One of our from-scratch CNNs (SmallCNN, CaptchaCNN), whose output is the feature map:
    SmallCNN (B, 256, S/32, S/32), CaptchaCNN (B, 128, 4, 20) at 60x160. Blocks: its conv
    blocks, ``net.features``."""

    def __init__(self, net: SmallCNN | CaptchaCNN) -> None:
        super().__init__()
        self.net = net

    def forward(self, images: torch.Tensor) -> torch.Tensor:
        return self.net(images)

    def blocks(self) -> list[nn.Module]:
        return list(self.net.features)


def variance_preserving_init(net: nn.Module) -> None:
    """Kaiming-normal (fan-in) weights for a randomly initialised encoder; zero residual gates.

    PyTorch's default conv init shrinks activations layer by layer, and some torchvision inits
    grow them (Inception's N(0, 0.1)); with untrained batch norm in eval mode (mean 0, var 1)
    the feature map ends up near 0 or beyond float16's range. Fan-in Kaiming init keeps every
    layer O(1); zeroing the last batch-norm scale of each ResNet block (Goyal et al.) stops the
    residual sums from doubling the variance block after block. Uses torch's global RNG.
    """
    for module in net.modules():
        if isinstance(module, nn.Conv2d | nn.Linear):
            nn.init.kaiming_normal_(module.weight, mode="fan_in", nonlinearity="relu")
            if module.bias is not None:
                nn.init.zeros_(module.bias)
    if isinstance(net, ResNetEncoder):
        for layer in (net.net.layer1, net.net.layer2, net.net.layer3, net.net.layer4):
            for block in layer:  # Bottleneck (bn3) or BasicBlock (bn2)
                nn.init.zeros_(getattr(block, "bn3", block.bn2).weight)


# --------------------------------------------------------------------------------------------
# The CAPTCHA reader's CNN, trained from scratch on wide grayscale images
# --------------------------------------------------------------------------------------------


class CaptchaCNN(nn.Module):
    """Six conv 3x3 + batch norm + ReLU blocks on the grayscale image, from 60x160 to a 4x20
    grid of 128 channels (0.36 M parameters): one column every 8 px, about a third of a
    letter, so attention can step along the word. The last pooling halves only the height,
    keeping the horizontal resolution the letter order lives in. The first conv has stride 2
    (strokes are 4+ px wide): 1.7x less compute than a full-resolution first block."""

    # (output channels, conv stride, pooling after the block):
    # 60x160 -> 30x80 -> 15x40 -> 15x40 -> 8x20 -> 4x20 -> 4x20
    BLOCKS: tuple[tuple[int, int, tuple[int, int] | None], ...] = (
        (32, 2, None),
        (48, 1, (2, 2)),
        (64, 1, None),
        (96, 1, (2, 2)),
        (128, 1, (2, 1)),
        (128, 1, None),
    )

    def __init__(self) -> None:
        super().__init__()
        layers: list[nn.Module] = []
        previous = 1
        for width, stride, pool in self.BLOCKS:
            block: list[nn.Module] = [
                nn.Conv2d(previous, width, 3, stride=stride, padding=1, bias=False),
                nn.BatchNorm2d(width),
                nn.ReLU(inplace=True),
            ]
            if pool is not None:
                block.append(nn.MaxPool2d(pool, ceil_mode=True))
            layers.append(nn.Sequential(*block))
            previous = width
        self.features = nn.Sequential(*layers)

    def forward(self, images: torch.Tensor) -> torch.Tensor:
        # The colours carry no letter information: read the mean of the channels (grayscale).
        gray = images.mean(dim=1, keepdim=True)  # (B, 1, H, W)
        return self.features(gray)  # (B, 128, H/16, W/8)
