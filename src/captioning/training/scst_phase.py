"""Self-critical training as a second phase of the one training loop: what ``train_decoder``
gets for it (``scst.*`` over ``train.*``, the objective, the start's weights), built from the
cross-entropy model it starts from."""

from __future__ import annotations

import dataclasses
import hashlib
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch

from captioning.config import Params, TrainConfig, saved_decoder_config, to_dict
from captioning.data.vocab import Vocab
from captioning.errors import CaptioningError
from captioning.features.cache import FeatureCache
from captioning.models.saved import CONFIG_FILE, DECODER_WEIGHTS_FILE, VOCAB_FILE, load_decoder
from captioning.training.self_critical import SelfCritical


@dataclass(frozen=True)
class ScstPhase:
    train: TrainConfig  # the loop's settings for the phase
    objective: SelfCritical
    init_weights: dict[str, torch.Tensor]  # the cross-entropy model's decoder
    record: dict[str, Any]  # in the resume hash and config.json: scst.*, the start's identity


def scst_phase(
    params: Params, decoder: str, features_dir: Path, start_dir: Path, vocab_path: Path
) -> ScstPhase:
    """The phase for ``decoder`` from its model in ``start_dir`` over the feature cache, whose
    captions ``vocab_path`` encodes (the start's vocabulary)."""
    if decoder not in params.scst.decoders:
        raise CaptioningError(
            f"scst.decoders: {decoder!r} is not one of {params.scst.decoders}; add it to run "
            "its self-critical phase"
        )
    if params.train.fine_tune.enabled:
        raise CaptioningError(
            "scst: self-critical training reads cached features; its start must not be "
            "fine-tuned (train.fine_tune.enabled: false)"
        )
    start, vocab, config = load_decoder(start_dir)
    if config["decoder"] != decoder:
        raise CaptioningError(
            f"{start_dir / CONFIG_FILE}: expected a {decoder} model, found {config['decoder']}"
        )
    if Vocab.load(vocab_path) != vocab:
        raise CaptioningError(
            f"{vocab_path}: expected the vocabulary of {start_dir} (it was trained with "
            f"{start_dir / VOCAB_FILE}): re-run train@{decoder}"
        )
    scst = params.scst
    train = dataclasses.replace(
        params.train,
        # The start's dimensions, as its config.json records them (its weights fit them).
        model=saved_decoder_config(config["train"]["model"], path=start_dir / CONFIG_FILE),
        epochs=scst.epochs,
        lr=scst.lr,
        batch_size=scst.batch_size,  # images per step: one draw per image
        seq_per_image=1,
        weight_decay=0.0,  # Adam, as the papers train this phase
        warmup_steps=0,
        hard_repeat=1,  # every training image once per epoch
        scheduled_sampling=type(params.train.scheduled_sampling)(),
        early_stopping=dataclasses.replace(
            params.train.early_stopping, metric="CIDEr", patience=0, every_epochs=1
        ),
    )
    cache = FeatureCache.open(features_dir, "train")
    objective = SelfCritical.for_cache(cache.captions, cache.row_meta, vocab, scst)
    digest = hashlib.sha256((start_dir / DECODER_WEIGHTS_FILE).read_bytes()).hexdigest()
    record = {
        "scst": {k: v for k, v in to_dict(scst).items() if k != "decoders"},
        "start": {"decoder_sha256": digest, "train": config["train"]},
    }
    weights = {k: v.detach().clone() for k, v in start.state_dict().items()}
    return ScstPhase(train, objective, weights, record)
