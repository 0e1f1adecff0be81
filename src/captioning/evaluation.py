"""Decode the test split greedily and with beam search, score it, and draw what the model attends to."""

from __future__ import annotations

import logging
from pathlib import Path
from typing import Any

import torch
from tqdm import tqdm

from captioning.config import EvaluateConfig
from captioning.data.images import load_rgb
from captioning.data.shards import iter_samples
from captioning.decoding.search import Hypothesis, decode_batch
from captioning.devices import choose_device
from captioning.features.cache import (
    ENCODER_WEIGHTS_FILE,
    FeatureCache,
    encode_split,
    encoder_for_model,
)
from captioning.features.encoders import grid_shape
from captioning.io import write_json
from captioning.metrics.coco_eval import coco_scores
from captioning.metrics.shapes_accuracy import object_accuracy, object_correct
from captioning.training.loop import load_decoder
from captioning.viz.attention import plot_attention

logger = logging.getLogger(__name__)

DECODINGS = ("greedy", "beam")


def evaluate_model(
    model_dir: str | Path,
    features_dir: str | Path | None,
    shards_dir: str | Path,
    out_dir: str | Path,
    cfg: EvaluateConfig,
    *,
    split: str = "test",
) -> dict[str, Any]:
    """Write metrics.json, results.json (COCO results format), per_image.json and attention PNGs.

    A character-level model (the CAPTCHA reader) is scored by ``reader_evaluation`` instead:
    exact match and character accuracy on val and test, and the answer file.
    """
    out_dir = Path(out_dir)
    device = choose_device()
    decoder, vocab, config = load_decoder(model_dir, device)
    if vocab.level == "char":
        from captioning.reader_evaluation import evaluate_reader

        return evaluate_reader(decoder, vocab, config, model_dir, shards_dir, out_dir, cfg)
    cache = split_features(model_dir, config, features_dir, shards_dir, split, device)
    features = torch.from_numpy(cache.load_in_memory())
    references = {i: list(c) for i, c in zip(cache.image_ids, cache.captions, strict=True)}

    decoded: dict[str, list[Hypothesis]] = {}
    for name in DECODINGS:
        beam = 1 if name == "greedy" else cfg.beam_size
        decoded[name] = _decode_all(decoder, vocab, features, cfg, beam, desc=f"{split} {name}")

    metrics: dict[str, Any] = {}
    per_image: dict[int, dict[str, Any]] = {i: {"references": references[i]} for i in references}
    for name, hypotheses in decoded.items():
        predictions = {
            image_id: vocab.decode(h.tokens)
            for image_id, h in zip(cache.image_ids, hypotheses, strict=True)
        }
        corpus, scores = coco_scores(predictions, references)
        if any("objects" in m for m in cache.row_meta):
            truths = {
                i: m.get("objects", [])
                for i, m in zip(cache.image_ids, cache.row_meta, strict=True)
            }
            corpus.update(_object_metrics(predictions, truths))
            for image_id in predictions:
                scores[image_id]["object_correct"] = float(
                    object_correct(predictions[image_id], truths[image_id])
                )
        metrics[name] = corpus
        for image_id, caption in predictions.items():
            per_image[image_id][name] = {"caption": caption, **scores[image_id]}
        logger.info("%s %s: %s", split, name, _summary(corpus))

    beam_captions = [
        {"image_id": image_id, "caption": per_image[image_id]["beam"]["caption"]}
        for image_id in cache.image_ids
    ]
    write_json(out_dir / "metrics.json", {split: metrics})
    write_json(out_dir / "results.json", beam_captions)
    write_json(out_dir / "per_image.json", [{"image_id": i, **v} for i, v in per_image.items()])
    _attention_figures(
        shards_dir, split, cache.image_ids, decoded["beam"], vocab, config, cfg, out_dir
    )
    return {split: metrics}


def split_features(
    model_dir: str | Path,
    config: dict[str, Any],
    features_dir: str | Path | None,
    shards_dir: str | Path,
    split: str,
    device: torch.device,
) -> FeatureCache:
    """The model's features of ``split``: cached, or computed by its own trained encoder."""
    if (Path(model_dir) / ENCODER_WEIGHTS_FILE).is_file():
        # The model fine-tuned its encoder: the cached features are not its features.
        spec, encoder = encoder_for_model(config["encoder"], model_dir, device)
        return encode_split(shards_dir, split, encoder, spec, device, meta=config["encoder"])
    if features_dir is None:
        raise ValueError(f"{model_dir}: the model reads cached features; give their directory")
    return FeatureCache.open(features_dir, split, expect_encoder=config["encoder"]["encoder"])


def _decode_all(
    decoder, vocab, features, cfg: EvaluateConfig, beam: int, desc: str
) -> list[Hypothesis]:
    out: list[Hypothesis] = []
    device = next(decoder.parameters()).device
    for start in tqdm(
        range(0, len(features), cfg.batch_size), desc=desc, unit="batch", mininterval=5
    ):
        batch = features[start : start + cfg.batch_size].to(device).float()
        out.extend(
            decode_batch(
                decoder,
                batch,
                start_id=vocab.start_id,
                end_id=vocab.end_id,
                max_length=cfg.max_length,
                beam_size=beam,
            )
        )
    return out


def _object_metrics(predictions: dict[int, str], truths: dict[int, list]) -> dict[str, float]:
    result = object_accuracy(predictions, truths)
    flat = {"object_accuracy": result["object_accuracy"]}
    for count, value in result["object_accuracy_by_count"].items():
        flat[f"object_accuracy_{count}obj"] = value
    return flat


def _summary(corpus: dict[str, float]) -> str:
    keys = ("BLEU-4", "METEOR", "ROUGE-L", "CIDEr", "object_accuracy")
    return ", ".join(f"{k} {corpus[k]:.3f}" for k in keys if k in corpus)


def _attention_figures(
    shards_dir, split, image_ids, hypotheses, vocab, config, cfg: EvaluateConfig, out_dir: Path
) -> None:
    if cfg.n_attention_figures == 0 or not hypotheses or hypotheses[0].alphas is None:
        return
    wanted = dict(zip(image_ids[: cfg.n_attention_figures], hypotheses, strict=False))
    grid_h, grid_w = grid_shape(config["encoder"])
    figures = out_dir / "attention"
    figures.mkdir(parents=True, exist_ok=True)
    for meta, jpg in iter_samples(shards_dir, split):
        hyp = wanted.pop(meta["image_id"], None)
        if hyp is None:
            continue
        words = [vocab.itos[t] for t in hyp.tokens]
        attention = hyp.alphas.numpy().reshape(len(words), grid_h, grid_w)
        plot_attention(
            load_rgb(jpg, name=meta["file_name"]),
            words,
            attention,
            figures / f"{meta['image_id']}.png",
            title=f"refs: {meta['captions'][0]}",
        )
        if not wanted:
            break
