"""What every evaluation task shares: a split's features, decoded greedily and by beam search
into text, the split's images, and the attention heat-maps of the best beam readings."""

from __future__ import annotations

import logging
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch
from PIL import Image
from tqdm import tqdm

from captioning.config import EvaluateConfig
from captioning.data.images import load_rgb
from captioning.data.shards import iter_samples
from captioning.data.vocab import Vocab
from captioning.decoding.limits import check_decoding
from captioning.decoding.search import Hypothesis, beam_search_n_best, greedy_search
from captioning.devices import pin_memory
from captioning.errors import BadInputError
from captioning.features.cache import FeatureCache, FeatureRows, encode_split
from captioning.features.encoding import ENCODER_WEIGHTS_FILE, encoder_for_model
from captioning.io import write_text
from captioning.viz.attention import plot_attention

logger = logging.getLogger(__name__)

DECODINGS = ("greedy", "beam")
# Per decoding: the corpus scores and each image's scores (under the corpus names).
Scored = dict[str, tuple[dict[str, float], dict[int, dict[str, float]]]]
# per_image.json's rows by image id (the id is added when written).
Rows = dict[int, dict[str, Any]]


@dataclass(frozen=True)
class SplitReading:
    """One split decoded, images in the feature cache's order."""

    split: str
    image_ids: list[int]
    file_names: list[str]
    references: dict[int, list[str]]
    row_meta: list[dict[str, Any]]
    # Per decoding, per image: the hypotheses best first (greedy has one) and their texts.
    hypotheses: dict[str, list[list[Hypothesis]]]
    texts: dict[str, list[list[str]]]

    def n_best(self, decoding: str) -> Iterator[tuple[int, list[Hypothesis], list[str]]]:
        """(image id, hypotheses, their texts) per image."""
        return zip(self.image_ids, self.hypotheses[decoding], self.texts[decoding], strict=True)

    def predictions(self, decoding: str) -> dict[int, str]:
        """Each image's best text under ``decoding``."""
        return {i: t[0] for i, t in zip(self.image_ids, self.texts[decoding], strict=True)}


def read_split(
    decoder, vocab: Vocab, cache: FeatureCache, cfg: EvaluateConfig, split: str
) -> SplitReading:
    # Read a batch at a time: the split's features need not fit in RAM (COCO's test split with
    # ResNet-101's 14x14x2048 is 4 GB).
    pin = pin_memory(next(decoder.parameters()).device)
    hypotheses = _decode_all(decoder, vocab, FeatureRows(cache, pin=pin), cfg, desc=split)
    return SplitReading(
        split=split,
        image_ids=list(cache.image_ids),
        file_names=list(cache.file_names),
        references={i: list(c) for i, c in zip(cache.image_ids, cache.captions, strict=True)},
        row_meta=cache.row_meta,
        hypotheses=hypotheses,
        texts={
            name: [[vocab.decode(h.tokens) for h in hyps] for hyps in per_image]
            for name, per_image in hypotheses.items()
        },
    )


def split_features(
    model_dir: str | Path,
    config: dict[str, Any],
    features_dir: str | Path | None,
    shards_dir: str | Path,
    split: str,
    device: torch.device,
    precision: str,
) -> FeatureCache:
    """The model's features of ``split``: cached, or computed by its own trained encoder in
    ``precision`` (resolved)."""
    if (Path(model_dir) / ENCODER_WEIGHTS_FILE).is_file():
        # The model fine-tuned its encoder: the cached features are not its features.
        spec, encoder = encoder_for_model(config["encoder"], model_dir, device)
        return encode_split(
            shards_dir, split, encoder, spec, device, precision=precision, meta=config["encoder"]
        )
    if features_dir is None:
        raise BadInputError(
            f"{model_dir}: the model reads cached features; give their directory (--features)"
        )
    return FeatureCache.open(features_dir, split, expect_encoder=config["encoder"]["encoder"])


def _decode_all(
    decoder, vocab: Vocab, features: FeatureRows, cfg: EvaluateConfig, desc: str
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
        rows = range(start, min(start + cfg.batch_size, len(features)))
        batch = features[rows].to(device, non_blocking=True).float()
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


def read_images(shards_dir, split: str, wanted: set[int]) -> dict[int, Image.Image]:
    images: dict[int, Image.Image] = {}
    if not wanted:
        return images
    for meta, jpg in iter_samples(shards_dir, split):
        if meta["image_id"] in wanted:
            images[meta["image_id"]] = load_rgb(jpg, name=meta["file_name"])
            if len(images) == len(wanted):
                break
    return images


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
        # One panel per generated token, as the attention has one row per token.
        words = [vocab.itos[t] for t in hyp.tokens]
        plot_attention(
            image,
            words,
            hyp.alphas.float().numpy().reshape(len(words), *grid),
            out_dir / f"{image_id}.png",
            title=f"refs: {references[image_id][0]}",
        )
    return len(images)
