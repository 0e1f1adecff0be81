"""Images in, captions out: the encoder and a trained decoder behind one object.

Used by ``captioning predict``, the MLflow pyfunc model and the attention figures, so that the
pipeline's evaluation and the served model decode the same way, within the same bounds
(``decoding.limits``).
"""

from __future__ import annotations

import os
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch
from PIL import Image

from captioning.data.images import TOO_LARGE, ImageDecodeError, load_rgb
from captioning.decoding.limits import ENV_MAX_PIXELS, RequestLimits, check_decoding
from captioning.decoding.search import beam_search
from captioning.devices import autocast, choose_device, resolve_precision
from captioning.features.encoders import grid_shape
from captioning.features.encoding import encode_on_device, encoder_for_model
from captioning.models.saved import load_decoder

# What a served model or `captioning predict` computes in (common.precision's values; default
# auto): a choice of the decoding process, whatever the model was trained in.
ENV_PRECISION = "CAPTIONING_PRECISION"
# Where it computes (common.device's values: auto | cpu | cuda | cuda:N; default auto).
ENV_DEVICE = "CAPTIONING_DEVICE"


@dataclass
class CaptionResult:
    caption: str
    score: float  # sum of token log-probabilities
    words: list[str]
    attention: np.ndarray | None  # (len(words), grid_h, grid_w), if the decoder attends


def load_image(source: bytes | str | Path, name: str, limits: RequestLimits) -> Image.Image:
    """An image decoded to RGB, refused past ``limits.max_pixels`` (from its header)."""
    try:
        return load_rgb(source, name=name, max_pixels=limits.max_pixels)
    except ImageDecodeError as exc:
        if exc.kind != TOO_LARGE:
            raise ImageDecodeError(
                name, f"{exc.reason}; expected a JPEG or PNG image", exc.kind
            ) from None
        raise ImageDecodeError(name, f"{exc.reason} ({ENV_MAX_PIXELS})", exc.kind) from None


def decoding_device(setting: str | None = None, *, source: str = "device") -> torch.device:
    """Where ``captioning predict`` and the served model compute: ``setting`` (common.device's
    values; ``source`` names it in an error), else $CAPTIONING_DEVICE, else auto."""
    if setting:
        return choose_device(setting, setting=source)
    return choose_device(os.environ.get(ENV_DEVICE) or "auto", setting=ENV_DEVICE)


class Captioner:
    def __init__(
        self,
        encoder,
        spec,
        decoder,
        vocab,
        config: dict,
        device: torch.device,
        limits: RequestLimits | None = None,
        precision: str = "fp32",
    ) -> None:
        self.encoder, self.spec, self.decoder = encoder, spec, decoder
        self.vocab, self.config, self.device = vocab, config, device
        self.limits = limits or RequestLimits.from_env()
        self.precision = precision  # resolved (devices.resolve_precision)

    @classmethod
    def load(
        cls,
        model_dir: str | Path,
        device: torch.device | str | None = None,
        limits: RequestLimits | None = None,
        precision: str | None = None,
    ) -> Captioner:
        """``device``: a common.device value (or a torch device); None reads $CAPTIONING_DEVICE
        (auto). ``precision``: a common.precision value; None reads $CAPTIONING_PRECISION
        (auto)."""
        if not isinstance(device, torch.device):
            device = decoding_device(device)
        setting = precision or os.environ.get(ENV_PRECISION) or "auto"
        precision = resolve_precision(setting, device)
        decoder, vocab, config = load_decoder(model_dir, device)
        # The encoder the model was trained on: pretrained, random from its recorded seed, or
        # the model's own fine-tuned weights.
        spec, encoder = encoder_for_model(config["encoder"], model_dir, device)
        return cls(encoder, spec, decoder, vocab, config, device, limits, precision)

    @property
    def max_length(self) -> int:
        """The longest caption the model was trained on: the default and the bound."""
        return self.vocab.max_length

    def check_request(self, beam_size: object, max_length: object) -> tuple[int, int]:
        """The decoding settings, checked against the model and ``limits`` (RequestError)."""
        return check_decoding(
            beam_size,
            max_length,
            vocab_size=len(self.vocab),
            trained_length=self.vocab.max_length,
            max_beam=self.limits.max_beam,
        )

    def load_image(self, source: bytes | str | Path, name: str) -> Image.Image:
        return load_image(source, name, self.limits)

    def encode(self, images: list[Image.Image]) -> torch.Tensor:
        """(B, L, C) features, computed exactly as the features stage caches them (float16)."""
        batch = torch.stack([self.spec.preprocess(image) for image in images])
        return encode_on_device(
            self.encoder, batch, self.spec, self.device, precision=self.precision
        )

    def caption(
        self,
        images: list[Image.Image],
        beam_size: int = 3,
        max_length: int | None = None,
        *,
        length_penalty: float = 0.0,
        min_length: int = 0,
    ) -> list[CaptionResult]:
        """One caption per image, decoded as the evaluate stage decodes (``decoding.search``);
        ``max_length`` defaults to the model's own (``max_length``)."""
        beam_size, max_length = self.check_request(
            beam_size, self.max_length if max_length is None else max_length
        )
        features = self.encode(images)
        with autocast(self.device, self.precision):
            hypotheses = beam_search(
                self.decoder,
                features,
                start_id=self.vocab.start_id,
                end_id=self.vocab.end_id,
                max_length=max_length,
                beam_size=beam_size,
                length_penalty=length_penalty,
                min_length=min_length,
            )
        grid_h, grid_w = grid_shape(self.config["encoder"])
        results = []
        for hyp in hypotheses:
            words = [self.vocab.itos[t] for t in hyp.tokens]
            attention = None
            if hyp.alphas is not None:
                attention = hyp.alphas.float().numpy().reshape(len(words), grid_h, grid_w)
            text = self.vocab.decode(hyp.tokens)
            results.append(CaptionResult(text, hyp.score, words, attention))
        return results
