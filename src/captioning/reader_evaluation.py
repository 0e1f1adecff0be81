"""Scoring a character-level model (the CAPTCHA reader): read val and test, write the answers.

The reader spells each image's word one character per step. It is scored as the assignment
says: a word counts only if it matches exactly (``exact_match``), with the character accuracy
beside it; on the validation split (labels given) and the test split. ``predictions.txt``
holds the test answers in the label file's format (``<image id>\\t<word>``), from beam search.
"""

from __future__ import annotations

import logging
from pathlib import Path
from typing import Any

import torch

from captioning.config import EvaluateConfig
from captioning.data.vocab import Vocab
from captioning.evaluation import (
    ATTENTION_DIR,
    DECODINGS,
    _decode_all,
    _read_images,
    attention_figures,
    split_features,
)
from captioning.features.encoders import grid_shape
from captioning.io import write_json, write_text
from captioning.metrics.word_accuracy import word_scores
from captioning.models import Decoder

logger = logging.getLogger(__name__)

READER_SPLITS = ("val", "test")
ANSWERS_FILE = "predictions.txt"


def evaluate_reader(
    decoder: Decoder,
    vocab: Vocab,
    config: dict[str, Any],
    model_dir: str | Path,
    shards_dir: str | Path,
    out_dir: str | Path,
    cfg: EvaluateConfig,
) -> dict[str, Any]:
    """Write metrics.json ({split: {greedy|beam: {exact_match, char_accuracy, count}}}),
    predictions.txt (test, beam), per_image.json (test: references and both readings with their
    exact match and character accuracy) and the attention figures of the first test images."""
    out_dir = Path(out_dir)
    device = next(decoder.parameters()).device
    metrics: dict[str, Any] = {}
    for split in READER_SPLITS:
        cache = split_features(model_dir, config, None, shards_dir, split, device)
        features = torch.from_numpy(cache.load_in_memory())
        references = {i: c[0] for i, c in zip(cache.image_ids, cache.captions, strict=True)}
        searched = _decode_all(decoder, vocab, features, cfg, desc=split)
        best = {name: [hyps[0] for hyps in searched[name]] for name in DECODINGS}
        readings = {
            name: {i: vocab.decode(h.tokens) for i, h in zip(cache.image_ids, hyps, strict=True)}
            for name, hyps in best.items()
        }
        metrics[split], per_word = {}, {}
        for name in DECODINGS:
            corpus, per_word[name] = word_scores(
                readings[name], {i: [r] for i, r in references.items()}
            )
            metrics[split][name] = {**corpus, "count": float(len(references))}
            logger.info(
                "%s %s: exact match %.4f, character accuracy %.4f",
                split,
                name,
                metrics[split][name]["exact_match"],
                metrics[split][name]["char_accuracy"],
            )
        if split == "test":
            names = {
                i: Path(f).stem for i, f in zip(cache.image_ids, cache.file_names, strict=True)
            }
            write_text(
                out_dir / ANSWERS_FILE,
                "".join(f"{names[i]}\t{readings['beam'][i]}\n" for i in cache.image_ids),
            )
            # The captioner's layout, so the promotion gate reads [decoding][exact_match].
            per_image = [
                {
                    "image_id": i,
                    "file_name": names[i],
                    "references": [references[i]],
                    **{
                        name: {"caption": readings[name][i], **per_word[name][i]}
                        for name in DECODINGS
                    },
                }
                for i in cache.image_ids
            ]
            write_json(out_dir / "per_image.json", per_image)
            shown = list(cache.image_ids[: cfg.n_attention_figures])
            images = _read_images(shards_dir, split, set(shown))
            attention_figures(
                out_dir / ATTENTION_DIR,
                {i: images[i] for i in shown if i in images},
                dict(zip(cache.image_ids, best["beam"], strict=True)),
                vocab,
                grid=grid_shape(config["encoder"]),
                decoder_name=config["decoder"],
                references={i: [r] for i, r in references.items()},
            )
    write_json(out_dir / "metrics.json", metrics)
    return metrics
