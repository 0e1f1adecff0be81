"""A trained decoder on disk: decoder.safetensors, vocab.json and config.json (the run's config:
decoder name, train config, encoder, the precision training computed in: a record only, since
decoding picks its own; older models lack it), plus encoder.safetensors when the encoder was
fine-tuned.

Training writes it; evaluation, inference and serving read it. Safetensors only: loading
unpickles nothing.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import torch
from safetensors.torch import load_file, save_file
from torch import nn

from captioning.config import saved_decoder_config
from captioning.data.vocab import Vocab
from captioning.features.encoders import grid_shape
from captioning.features.encoding import ENCODER_WEIGHTS_FILE
from captioning.io import atomic_path, write_json
from captioning.models import Decoder, build_decoder

DECODER_WEIGHTS_FILE = "decoder.safetensors"
VOCAB_FILE = "vocab.json"
CONFIG_FILE = "config.json"


def save_model(
    model_dir: str | Path,
    decoder: Decoder,
    vocab: Vocab,
    config: dict[str, Any],
    encoder: nn.Module | None = None,
) -> None:
    """Write the model directory at once (atomically); ``encoder`` if it was trained too."""
    with atomic_path(Path(model_dir)) as tmp:
        tmp.mkdir()
        modules = {DECODER_WEIGHTS_FILE: decoder}
        if encoder is not None:
            modules[ENCODER_WEIGHTS_FILE] = encoder
        for name, module in modules.items():
            weights = {k: v.detach().cpu().contiguous() for k, v in module.state_dict().items()}
            save_file(weights, str(tmp / name))
        vocab.save(tmp / VOCAB_FILE)
        write_json(tmp / CONFIG_FILE, config)


def load_decoder(
    model_dir: str | Path, device: torch.device | None = None
) -> tuple[Decoder, Vocab, dict]:
    """Rebuild a trained decoder from its directory, in eval mode; with its vocabulary and the
    run's config."""
    model_dir = Path(model_dir)
    config = json.loads((model_dir / CONFIG_FILE).read_text(encoding="utf-8"))
    vocab = Vocab.load(model_dir / VOCAB_FILE)
    decoder_cfg = saved_decoder_config(config["train"]["model"], path=model_dir / CONFIG_FILE)
    grid_h, grid_w = grid_shape(config["encoder"])
    decoder = build_decoder(
        config["decoder"],
        decoder_cfg,
        vocab_size=len(vocab),
        feature_dim=config["encoder"]["channels"],
        num_locations=grid_h * grid_w,
    )
    decoder.load_state_dict(load_file(str(model_dir / DECODER_WEIGHTS_FILE)))
    decoder.eval()
    if device is not None:
        decoder.to(device)
    return decoder, vocab, config
