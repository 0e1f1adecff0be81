"""An encoder at work: built with its weights, identified, and turning images into features.

``encoders.py`` says which encoders exist and how each is built and fed; this module loads one
for a run (``load_encoder``) or for a trained model (``encoder_for_model``), records which
weights it has (``encoder_identity``: what a feature cache and a model config keep), and runs it
on a batch (``encode_pixels``, ``encode_batch``). The feature cache, fine-tuning, evaluation and
prediction all encode through here, so a cached feature and a live one are the same arithmetic.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import numpy as np
import torch

from captioning.devices import autocast
from captioning.features.backbones import Encoder
from captioning.features.encoders import EncoderSpec, get_encoder_spec
from captioning.features.loader import FeatureCacheError
from captioning.features.weights import EncoderWeightsError, state_digest

# Features are stored and handed on as float16 (half the bytes; attention reads them as float).
DTYPE = "float16"
# meta.json keys that say which weights made the features (besides encoder, size, grid, channels).
# "precision": what the encoder computed in (meta.json only; a model records its own).
ENCODER_IDENTITY = (
    "pretrained",
    "weights",
    "weights_path",
    "init_seed",
    "weights_sha256",
    "precision",
)
# A model that trained its encoder keeps the encoder's weights beside the decoder's.
ENCODER_WEIGHTS_FILE = "encoder.safetensors"


def load_encoder(
    spec: EncoderSpec,
    pretrained: bool,
    device: torch.device,
    *,
    weights_path: str | Path | None = None,
    seed: int | None = None,
) -> Encoder:
    """The encoder ready for inference. channels_last pays on CUDA and on the CPU alike
    (EfficientNet-Lite0 on 2 CPU cores: 39 -> 55 img/s)."""
    model = spec.build(pretrained, weights_path, seed=seed).to(device).eval()
    return model.to(memory_format=torch.channels_last)


def encoder_identity(
    spec: EncoderSpec,
    model: torch.nn.Module,
    *,
    pretrained: bool,
    weights_path: str | Path | None,
    seed: int | None,
) -> dict[str, Any]:
    """What the features are a function of (besides the images): recorded in meta.json and
    copied into a trained model's config, so that prediction rebuilds the same encoder."""
    if weights_path is not None:
        weights = f"file {weights_path}"
    elif pretrained:
        weights = spec.describe_weights()
    else:
        weights = "random" if seed is None else f"random (seed {seed})"
    # A non-square encoder also records its heights (square ones keep their earlier record).
    heights = (
        {"input_height": spec.input_hw[0], "grid_height": spec.grid_hw[0]}
        if spec.input_height or spec.grid_height
        else {}
    )
    return {
        "encoder": spec.name,
        "input_size": spec.input_size,
        "grid": spec.grid,
        **heights,
        "channels": spec.channels,
        "mean": list(spec.mean),
        "std": list(spec.std),
        "dtype": DTYPE,
        "pretrained": pretrained,
        "weights": weights,
        "weights_path": None if weights_path is None else str(weights_path),
        "init_seed": None if pretrained else seed,
        "weights_sha256": state_digest(model),
    }


def encoder_for_model(
    info: dict[str, Any], model_dir: str | Path | None, device: torch.device
) -> tuple[EncoderSpec, Encoder]:
    """The encoder a trained model's features came from, from its config's ``encoder`` entry:
    the model's own ``encoder.safetensors`` (fine-tuned), the pretrained weights, or random
    weights rebuilt from the recorded seed; checked against the recorded weights digest."""
    spec = get_encoder_spec(info["encoder"])
    own = Path(model_dir) / ENCODER_WEIGHTS_FILE if model_dir is not None else None
    if own is not None and own.is_file():
        source, model = str(own), load_encoder(spec, True, device, weights_path=own)
    elif info.get("pretrained", True):
        path = info.get("weights_path")
        source = path or spec.describe_weights()
        model = load_encoder(spec, True, device, weights_path=path)
    else:
        seed = info.get("init_seed")
        if seed is None:
            raise EncoderWeightsError(
                f"the model's encoder {spec.name!r} had random weights from an unrecorded seed, "
                "so it cannot be rebuilt; re-run the features stage (it records common.seed)"
            )
        source, model = (
            f"random weights (seed {seed})",
            load_encoder(spec, False, device, seed=seed),
        )
    wanted = info.get("weights_sha256")
    found = state_digest(model)
    if wanted and found != wanted:
        raise EncoderWeightsError(
            f"encoder {spec.name!r} from {source} has weights sha256 {found[:12]}..., the "
            f"model was trained on features of {wanted[:12]}...: not the same encoder"
        )
    return spec, model


def encode_pixels(
    model: torch.nn.Module,
    pixels: torch.Tensor,
    spec: EncoderSpec,
    device: torch.device,
    *,
    precision: str,
) -> np.ndarray:
    """uint8 pixels (B, H, W, 3) from the loader -> float16 features (B, grid*grid, channels),
    normalised on ``device``."""
    images = spec.normalize(pixels.to(device, non_blocking=True))  # (B, 3, H, W)
    return encode_batch(model, images, spec, device, precision=precision)


def encode_batch(
    model: torch.nn.Module,
    images: torch.Tensor,
    spec: EncoderSpec,
    device: torch.device,
    *,
    precision: str,
) -> np.ndarray:
    """Preprocessed images (B, 3, H, W) -> float16 features (B, grid*grid, channels) on the
    host, for a cache (``encode_on_device`` keeps them where they were computed)."""
    return encode_on_device(model, images, spec, device, precision=precision).cpu().numpy()


@torch.inference_mode()
def encode_on_device(
    model: torch.nn.Module,
    images: torch.Tensor,
    spec: EncoderSpec,
    device: torch.device,
    *,
    precision: str,
) -> torch.Tensor:
    """Preprocessed images (B, 3, H, W) -> float16 features (B, grid*grid, channels) on
    ``device``, the encoder computing in ``precision`` (resolved:
    ``devices.resolve_precision``). The same values a cache stores."""
    x = images.to(device, non_blocking=True).contiguous(memory_format=torch.channels_last)
    with autocast(device, precision):
        fmap = model(x)  # (B, C, Gh, Gw)
    expected = (spec.channels, *spec.grid_hw)
    if tuple(fmap.shape[1:]) != expected:
        raise FeatureCacheError(
            f"encoder {spec.name!r} returned feature maps {tuple(fmap.shape[1:])}, "
            f"its spec says {expected}"
        )
    b = fmap.shape[0]
    feats = fmap.float().permute(0, 2, 3, 1).reshape(b, spec.locations, spec.channels)
    return feats.to(torch.float16)  # (B, G*G, C)
