"""Validation during training: the teacher-forced val loss, greedy captions of the val split
scored with the fast metrics (and what the task is judged by: object accuracy on shapes, exact
match for a character-level reader), and the best-so-far weights that early stopping keeps."""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

import torch
from torch import nn

from captioning.config import EarlyStoppingConfig
from captioning.data.vocab import Vocab, tokenize
from captioning.decoding.search import greedy_search
from captioning.errors import BadInputError, CaptioningError
from captioning.features.cache import FeatureRows
from captioning.metrics.fast import ReferenceIndex
from captioning.metrics.shapes_accuracy import object_accuracy
from captioning.metrics.shapes_relations import RELATION_SCORE_NAMES, Scene, relation_scores
from captioning.metrics.word_accuracy import word_scores
from captioning.models import Decoder
from captioning.training.batches import CaptionSet, Features, iterate_batches
from captioning.training.objectives import PAD_ID, loss_sum


class Validator:
    """Greedy decoding of every val image that has captions, scored against all of them.

    References are the captions in our vocabulary's tokenisation (lower-case words, no
    punctuation), indexed once; the predictions are the decoder's words.
    """

    def __init__(
        self,
        captions_per_image: Sequence[Sequence[str]],
        vocab: Vocab,
        batch_size: int,
        objects_per_image: Sequence[Sequence[Mapping[str, Any]] | None] | None = None,
        image_sizes: Sequence[int | None] | None = None,
    ) -> None:
        self.rows = [i for i, captions in enumerate(captions_per_image) if captions]
        if not self.rows:
            raise BadInputError("validation: no val image has a caption")
        # The shapes scenes' objects: then the object accuracy of the greedy captions is scored,
        # and where the images' sizes are known the relation metrics too.
        self.objects = None
        self.scenes = None
        if objects_per_image is not None and all(objects_per_image[i] for i in self.rows):
            self.objects = {row: objects_per_image[row] for row in self.rows}
            if image_sizes is not None and all(image_sizes[i] for i in self.rows):
                self.scenes = {
                    row: Scene(objects_per_image[row], int(image_sizes[row])) for row in self.rows
                }
        # A reader over characters (the CAPTCHA task) is judged by whole words read exactly.
        self.words = None
        if vocab.level == "char":
            self.words = {row: list(captions_per_image[row]) for row in self.rows}
        self.index = ReferenceIndex(
            {row: [" ".join(tokenize(c)) for c in captions_per_image[row]] for row in self.rows}
        )
        self.vocab = vocab
        self.batch_size = batch_size

    @classmethod
    def for_split(cls, cache: Any, vocab: Vocab, cfg: EarlyStoppingConfig, where: str) -> Validator:
        """The validator of a feature cache's split (``captions``, ``row_meta``); ``where``
        names that split in the error raised when ``cfg.metric`` cannot be scored on it."""
        objects = [meta.get("objects") for meta in cache.row_meta]
        sizes = [meta.get("width") for meta in cache.row_meta]
        validator = cls(cache.captions, vocab, cfg.batch_size, objects, sizes)
        if cfg.metric == "object_accuracy" and validator.objects is None:
            raise CaptioningError(
                f"train.early_stopping.metric is object_accuracy, but the images of {where} have "
                "no objects (only fetch.source shapes writes them): use CIDEr or BLEU-4"
            )
        if cfg.metric == "exact_match" and validator.words is None:
            raise CaptioningError(
                f"train.early_stopping.metric is exact_match, but the vocabulary for {where} is "
                f"{vocab.level}-level: exact match scores a reader of characters "
                "(vocab.level: char); use CIDEr or BLEU-4 for captions"
            )
        return validator

    @torch.no_grad()
    def scores(self, decoder: Decoder, features: Features) -> dict[str, float]:
        """Corpus BLEU-1..4 and CIDEr-D of greedy captions of ``features`` (N, L, C); their
        object accuracy and relation precision and coverage when the val images' objects are
        known; exact match and character
        accuracy when the vocabulary is of characters."""
        was_training = decoder.training
        decoder.eval()
        device = next(decoder.parameters()).device
        predictions: dict[int, str] = {}
        for start in range(0, len(self.rows), self.batch_size):
            rows = self.rows[start : start + self.batch_size]
            batch = features[rows].to(device).float()
            hypotheses = greedy_search(
                decoder,
                batch,
                start_id=self.vocab.start_id,
                end_id=self.vocab.end_id,
                max_length=self.vocab.max_length,
            )
            for row, hypothesis in zip(rows, hypotheses, strict=True):
                predictions[row] = self.vocab.decode(hypothesis.tokens)
        decoder.train(was_training)
        corpus, _ = self.index.score(predictions)
        if self.objects is not None:
            corpus["object_accuracy"] = object_accuracy(predictions, self.objects)[
                "object_accuracy"
            ]
        if self.scenes is not None:
            relations = relation_scores(predictions, self.scenes)
            corpus.update({name: relations[name] for name in RELATION_SCORE_NAMES})
        if self.words is not None:
            corpus.update(word_scores(predictions, self.words)[0])  # exact_match, char_accuracy
        return corpus


@dataclass(frozen=True)
class ValSplit:
    """The val split as validation reads it: its features (N, L, C), read a batch at a time
    (COCO's 5,000 val images are 4 GB of ResNet-101 features), captions and scorer."""

    features: Features
    captions: CaptionSet
    validator: Validator

    @classmethod
    def of(cls, cache: Any, vocab: Vocab, cfg: EarlyStoppingConfig, where: str) -> ValSplit:
        """A feature cache's split (its rows, ``captions``, ``row_meta``)."""
        return cls(
            FeatureRows(cache),
            CaptionSet.build(cache.captions, vocab),
            Validator.for_split(cache, vocab, cfg, where),
        )

    @torch.no_grad()
    def loss(self, decoder: Decoder, images_per_batch: int, device: torch.device) -> float:
        """Mean teacher-forced cross-entropy per token over every caption of the split (a CTC
        head's: mean CTC loss per caption)."""
        decoder.eval()
        draws = self.captions.all_draws()
        batches = [draws[i : i + images_per_batch] for i in range(0, len(draws), images_per_batch)]
        total, count = 0.0, 0
        for x, captions, rows in iterate_batches(self.features, self.captions, batches, PAD_ID):
            x, captions, rows = x.to(device), captions.to(device), rows.to(device)
            summed, n = loss_sum(decoder, decoder(x, captions, rows).logits, captions)
            total, count = total + float(summed), count + n
        return total / max(count, 1)


@dataclass
class BestSoFar:
    """The best validation score so far, its epoch and weights, and the validations since."""

    metric: str
    value: float = float("-inf")
    epoch: int = 0
    since_best: int = 0
    weights: dict[str, torch.Tensor] = field(default_factory=dict)

    def update(self, epoch: int, scores: dict[str, float], model: nn.Module) -> bool:
        """Record a validation; keep a CPU copy of the weights if it is the best (strictly)."""
        value = scores[self.metric]
        if value > self.value:
            self.value, self.epoch, self.since_best = value, epoch, 0
            self.weights = {k: v.detach().cpu().clone() for k, v in model.state_dict().items()}
            return True
        self.since_best += 1
        return False

    def should_stop(self, cfg: EarlyStoppingConfig) -> bool:
        return cfg.patience > 0 and self.since_best >= cfg.patience

    def summary(self) -> dict[str, Any]:
        return {"metric": self.metric, "value": self.value, "epoch": self.epoch}

    def to_state(self) -> dict[str, Any]:
        """For the checkpoint (torch.load(weights_only=True) reads tensors, numbers, strings)."""
        return {
            "metric": self.metric,
            "value": self.value,
            "epoch": self.epoch,
            "since_best": self.since_best,
            "weights": self.weights,
        }

    @classmethod
    def from_state(cls, state: dict[str, Any]) -> BestSoFar:
        return cls(
            metric=state["metric"],
            value=float(state["value"]),
            epoch=int(state["epoch"]),
            since_best=int(state["since_best"]),
            weights=dict(state["weights"]),
        )
