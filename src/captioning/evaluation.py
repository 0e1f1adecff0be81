"""Decode the test split greedily and with beam search, score it, and show the results.

Writes to the report directory: metrics.json (corpus scores per decoding), results.json (beam
captions in the COCO results format), per_image.json (every metric per image, the n-best beam
captions, the references: for error analysis), gallery.html (test images with greedy, beam and
reference captions) and attention/ (per-word heat-maps, when the decoder attends).
"""

from __future__ import annotations

import logging
from pathlib import Path
from typing import Any

import torch
from PIL import Image
from tqdm import tqdm

from captioning.config import (
    DECODING_NAMES,
    PER_IMAGE_SCORE_NAMES,
    EvaluateConfig,
    check_registry,
)
from captioning.data.images import load_rgb
from captioning.data.shards import iter_samples
from captioning.data.vocab import SPECIALS, Vocab
from captioning.decoding.limits import check_decoding
from captioning.decoding.search import Hypothesis, beam_search_n_best, greedy_search
from captioning.devices import choose_device
from captioning.errors import BadInputError
from captioning.features.cache import FeatureCache, encode_split
from captioning.features.encoders import grid_shape
from captioning.features.encoding import ENCODER_WEIGHTS_FILE, encoder_for_model
from captioning.io import write_json, write_text
from captioning.metrics import coco_eval, word_accuracy
from captioning.metrics.coco_eval import coco_scores_many, require_java
from captioning.metrics.shapes_accuracy import object_accuracy, object_correct
from captioning.metrics.word_accuracy import word_scores
from captioning.models.saved import load_decoder
from captioning.viz.attention import plot_attention
from captioning.viz.gallery import GalleryEntry, write_gallery

logger = logging.getLogger(__name__)

DECODINGS = ("greedy", "beam")
# Every per-image score evaluate can write: register.promote_metric is one of them.
PER_IMAGE_SCORES = (
    *coco_eval.SCORE_NAMES,
    "object_accuracy",
    *word_accuracy.SCORE_NAMES,
)
check_registry("decoding", DECODINGS, DECODING_NAMES, "DECODING_NAMES")
check_registry("per-image score", PER_IMAGE_SCORES, PER_IMAGE_SCORE_NAMES, "PER_IMAGE_SCORE_NAMES")
GALLERY_FILE, ATTENTION_DIR = "gallery.html", "attention"


def is_character_level(vocab: Vocab) -> bool:
    """True for a vocabulary of single characters (a CAPTCHA reader's), not words."""
    tokens = vocab.itos[len(SPECIALS) :]
    return bool(tokens) and all(len(t) == 1 for t in tokens)


def resolve_task(task: str, vocab: Vocab) -> str:
    if task != "auto":
        return task
    return "word" if is_character_level(vocab) else "caption"


def caption_text(vocab: Vocab, tokens: list[int], task: str) -> str:
    words = [vocab.itos[t] for t in tokens]
    # A character-level word task reads one word: its characters are not space-separated.
    return "".join(words) if task == "word" and is_character_level(vocab) else " ".join(words)


def evaluate_model(
    model_dir: str | Path,
    features_dir: str | Path | None,
    shards_dir: str | Path,
    out_dir: str | Path,
    cfg: EvaluateConfig,
    *,
    split: str = "test",
) -> dict[str, Any]:
    """Decode ``split``, score it and write the report files (see the module docstring).

    A character-level model (the CAPTCHA reader) is scored by ``reader_evaluation`` instead:
    exact match and character accuracy on val and test, and the answer file.
    """
    out_dir = Path(out_dir)
    device = choose_device()
    decoder, vocab, config = load_decoder(model_dir, device)
    if vocab.level == "char":
        from captioning.reader_evaluation import evaluate_reader

        return evaluate_reader(decoder, vocab, config, model_dir, shards_dir, out_dir, cfg)
    task = resolve_task(cfg.task, vocab)
    if task == "caption":
        require_java()  # before minutes of decoding, not after
    cache = split_features(model_dir, config, features_dir, shards_dir, split, device)
    features = torch.from_numpy(cache.load_in_memory())
    image_ids = list(cache.image_ids)
    references = {i: list(c) for i, c in zip(image_ids, cache.captions, strict=True)}

    searched = _decode_all(decoder, vocab, features, cfg, desc=split)
    decoded = {
        "greedy": [hyps[0] for hyps in searched["greedy"]],
        "beam": [hyps[0] for hyps in searched["beam"]],
    }

    objects = None
    if task == "caption" and any("objects" in m for m in cache.row_meta):
        objects = {i: m.get("objects", []) for i, m in zip(image_ids, cache.row_meta, strict=True)}
    predictions = {
        name: {i: caption_text(vocab, h.tokens, task) for i, h in zip(image_ids, hyps, strict=True)}
        for name, hyps in decoded.items()
    }
    scored = score_predictions(predictions, references, task, cfg, objects)
    metrics: dict[str, Any] = {}
    per_image: dict[int, dict[str, Any]] = {i: {"references": references[i]} for i in image_ids}
    for name, hypotheses in decoded.items():
        corpus, scores = scored[name]
        metrics[name] = corpus
        for image_id, hyp in zip(image_ids, hypotheses, strict=True):
            per_image[image_id][name] = {
                "caption": predictions[name][image_id],
                "log_prob": hyp.score,
                **scores[image_id],
            }
        logger.info("%s %s: %s", split, name, _summary(corpus))
    for image_id, hyps in zip(image_ids, searched["beam"], strict=True):
        per_image[image_id]["beam"]["n_best"] = [
            {"caption": caption_text(vocab, h.tokens, task), "log_prob": h.score} for h in hyps
        ]

    write_json(out_dir / "metrics.json", {split: metrics})
    write_json(out_dir / "results.json", coco_results(image_ids, per_image))
    write_json(out_dir / "per_image.json", [{"image_id": i, **per_image[i]} for i in image_ids])
    wanted = image_ids[: max(cfg.n_gallery, cfg.n_attention_figures)]
    images = _read_images(shards_dir, split, set(wanted))
    _gallery(
        out_dir / GALLERY_FILE, image_ids[: cfg.n_gallery], images, per_image, split, model_dir
    )
    attention_figures(
        out_dir / ATTENTION_DIR,
        {i: images[i] for i in image_ids[: cfg.n_attention_figures] if i in images},
        dict(zip(image_ids, decoded["beam"], strict=True)),
        vocab,
        grid=grid_shape(config["encoder"]),
        decoder_name=config["decoder"],
        references=references,
    )
    return {split: metrics}


def score_predictions(
    predictions: dict[str, dict[int, str]],
    references: dict[int, list[str]],
    task: str,
    cfg: EvaluateConfig,
    objects: dict[int, list] | None = None,
) -> dict[str, tuple[dict[str, float], dict[int, dict[str, float]]]]:
    """Corpus and per-image scores of each decoding; per-image metrics have the corpus names."""
    if task == "word":
        return {name: word_scores(p, references) for name, p in predictions.items()}
    scored = coco_scores_many(predictions, references, spice=cfg.spice)
    if objects is not None:
        for name, (corpus, scores) in scored.items():
            corpus.update(_object_metrics(predictions[name], objects))
            for image_id, caption in predictions[name].items():
                correct = object_correct(caption, objects[image_id])
                scores[image_id]["object_accuracy"] = float(correct)
    return scored


def coco_results(image_ids: list[int], per_image: dict[int, dict[str, Any]]) -> list[dict]:
    """The beam captions as COCO results: [{"image_id": int, "caption": str}, ...]."""
    return [{"image_id": int(i), "caption": per_image[i]["beam"]["caption"]} for i in image_ids]


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
        raise BadInputError(
            f"{model_dir}: the model reads cached features; give their directory (--features)"
        )
    return FeatureCache.open(features_dir, split, expect_encoder=config["encoder"]["encoder"])


def _decode_all(
    decoder, vocab: Vocab, features: torch.Tensor, cfg: EvaluateConfig, desc: str
) -> dict[str, list[list[Hypothesis]]]:
    """Greedy (one hypothesis each) and beam n-best for every image, batch by batch."""
    out: dict[str, list[list[Hypothesis]]] = {"greedy": [], "beam": []}
    # The same bounds as a served request's, less the deployer's caps (decoding.limits).
    check_decoding(
        cfg.beam_size,
        cfg.max_length,
        vocab_size=len(vocab),
        trained_length=vocab.max_length,
        prefix="evaluate.",
    )
    device = next(decoder.parameters()).device
    lengths = dict(max_length=cfg.max_length, min_length=cfg.min_length)
    ids = dict(start_id=vocab.start_id, end_id=vocab.end_id)
    for start in tqdm(
        range(0, len(features), cfg.batch_size), desc=desc, unit="batch", mininterval=5
    ):
        batch = features[start : start + cfg.batch_size].to(device).float()
        out["greedy"].extend([h] for h in greedy_search(decoder, batch, **ids, **lengths))
        out["beam"].extend(
            beam_search_n_best(
                decoder,
                batch,
                **ids,
                **lengths,
                beam_size=cfg.beam_size,
                n_best=cfg.n_best,
                length_penalty=cfg.length_penalty,
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
    keys = ("BLEU-4", "METEOR", "ROUGE-L", "CIDEr", "SPICE", "object_accuracy", "exact_match")
    return ", ".join(f"{k} {corpus[k]:.3f}" for k in keys if k in corpus)


def _read_images(shards_dir, split: str, wanted: set[int]) -> dict[int, Image.Image]:
    images: dict[int, Image.Image] = {}
    if not wanted:
        return images
    for meta, jpg in iter_samples(shards_dir, split):
        if meta["image_id"] in wanted:
            images[meta["image_id"]] = load_rgb(jpg, name=meta["file_name"])
            if len(images) == len(wanted):
                break
    return images


def _gallery(path: Path, image_ids, images, per_image, split: str, model_dir) -> None:
    entries = [
        GalleryEntry(
            image_id=i,
            image=images[i],
            generated={name: per_image[i][name]["caption"] for name in DECODINGS},
            references=per_image[i]["references"],
            scores={
                f"beam {k}": v
                for k, v in per_image[i]["beam"].items()
                if k in ("CIDEr", "SPICE", "object_accuracy", "exact_match", "char_accuracy")
            },
        )
        for i in image_ids
        if i in images
    ]
    write_gallery(entries, path, title=f"{Path(model_dir).name}: {split} images")


def attention_figures(
    out_dir: Path,
    images: dict[int, Image.Image],
    hypotheses: dict[int, Hypothesis],
    vocab: Vocab,
    *,
    grid: tuple[int, int],
    decoder_name: str,
    references: dict[int, list[str]],
) -> int:
    """One heat-map PNG per image; a decoder without attention gets a note, not a crash.

    The folder is always created (it is a DVC output); returns the number of figures drawn.
    """
    out_dir.mkdir(parents=True, exist_ok=True)
    if any(hypotheses[i].alphas is None for i in images):
        note = f"no attention heat-maps: decoder {decoder_name} does not attend"
        logger.info("%s", note)
        write_text(out_dir / "README.txt", note + "\n")
        return 0
    for image_id, image in images.items():
        hyp = hypotheses[image_id]
        words = [vocab.itos[t] for t in hyp.tokens]
        plot_attention(
            image,
            words,
            hyp.alphas.numpy().reshape(len(words), *grid),
            out_dir / f"{image_id}.png",
            title=f"refs: {references[image_id][0]}",
        )
    return len(images)
