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
from captioning.evaluation import DECODINGS, _attention_figures, _decode_all, split_features
from captioning.io import write_json, write_text
from captioning.metrics.reading import reading_scores
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
    predictions.txt (test, beam), per_image.json (test: reference and both readings) and the
    attention figures of the first test images."""
    out_dir = Path(out_dir)
    device = next(decoder.parameters()).device
    metrics: dict[str, Any] = {}
    for split in READER_SPLITS:
        cache = split_features(model_dir, config, None, shards_dir, split, device)
        features = torch.from_numpy(cache.load_in_memory())
        references = {i: c[0] for i, c in zip(cache.image_ids, cache.captions, strict=True)}
        readings: dict[str, dict[int, str]] = {}
        metrics[split] = {}
        for name in DECODINGS:
            beam = 1 if name == "greedy" else cfg.beam_size
            hypotheses = _decode_all(decoder, vocab, features, cfg, beam, desc=f"{split} {name}")
            readings[name] = {
                i: vocab.decode(h.tokens) for i, h in zip(cache.image_ids, hypotheses, strict=True)
            }
            metrics[split][name] = reading_scores(readings[name], references)
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
            per_image = [
                {
                    "image_id": i,
                    "file_name": names[i],
                    "reference": references[i],
                    **{name: readings[name][i] for name in DECODINGS},
                }
                for i in cache.image_ids
            ]
            write_json(out_dir / "per_image.json", per_image)
            if cfg.n_attention_figures:
                first = features[: cfg.n_attention_figures].to(device).float()
                hyps = _decode_all(decoder, vocab, first, cfg, cfg.beam_size, desc="figures")
                _attention_figures(
                    shards_dir, split, cache.image_ids, hyps, vocab, config, cfg, out_dir
                )
    write_json(out_dir / "metrics.json", metrics)
    return metrics
