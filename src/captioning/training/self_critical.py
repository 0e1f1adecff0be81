"""Self-critical sequence training (Rennie et al. 2017) with the baseline of Luo 2020 ("A Better
Variant of Self-Critical Sequence Training"): an objective for the one training loop.

Each image of the batch gets K captions sampled from the decoder (in train mode, as the
reference implementations sample), all images x K at once through the searches' word loop
(``decoding.search.sampled_captions``), their log-probabilities in the graph. A caption's
reward is its CIDEr-D against its image's reference captions, with the document frequencies of
the whole training split (``metrics.fast.ReferenceIndex.sample_cider``: one call per step);
its baseline is the mean reward of the image's K-1 other samples, so no greedy decode is spent
on a baseline and the advantages of an image sum to zero. Optionally a shapes term adds the
caption's correctness (the objects named exactly, its stated relations true).
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np
import torch
from torch import nn

from captioning.config import ScstConfig
from captioning.data.vocab import Vocab, tokenize
from captioning.decoding.search import sampled_captions
from captioning.errors import CaptioningError
from captioning.metrics.fast import ReferenceIndex
from captioning.metrics.shapes_accuracy import object_correct
from captioning.metrics.shapes_relations import Scene, image_relations
from captioning.training.distributed import DistContext
from captioning.training.objectives import StepLoss
from captioning.training.sources import Batch


def leave_one_out_baseline(rewards: np.ndarray) -> np.ndarray:
    """(B, K) rewards -> each sample's baseline: the mean of its image's K-1 other rewards."""
    k = rewards.shape[1]
    return (rewards.sum(axis=1, keepdims=True) - rewards) / (k - 1)


def shapes_score(caption: str, scene: Scene) -> float:
    """The objects named exactly (1, else 0), plus the share of the caption's stated relations
    that hold minus the share that do not (0 when it states none)."""
    stated, held = image_relations(caption, scene)
    relations = (2 * held - stated) / stated if stated else 0.0
    return float(object_correct(caption, scene.objects)) + relations


@dataclass
class SelfCritical:
    """The objective: -(reward - baseline) times the sampled caption's log-probability.

    The loss is the mean over the batch's B*K samples of -(r - b) * (sum of the caption's
    word log-probabilities, <end> included): the sum, not the per-word mean, so that each word
    of a caption carries the same policy gradient, as in Rennie et al.; the mean over samples
    keeps the gradient's scale independent of the batch size.
    """

    references: ReferenceIndex  # keyed by the train split's rows
    vocab: Vocab
    cfg: ScstConfig
    scenes: Mapping[int, Scene] | None = None  # by train row: for the shapes term

    @classmethod
    def for_cache(
        cls,
        captions_per_image: Sequence[Sequence[str]],
        row_meta: Sequence[Mapping[str, Any]],
        vocab: Vocab,
        cfg: ScstConfig,
    ) -> SelfCritical:
        """The objective over a feature cache's train split (its ``captions`` and
        ``row_meta``): references in the vocabulary's tokenisation, indexed once."""
        references = ReferenceIndex(
            {
                row: [" ".join(tokenize(c)) for c in captions]
                for row, captions in enumerate(captions_per_image)
                if captions
            }
        )
        scenes = None
        if cfg.shapes_reward_weight > 0:
            if not all(meta.get("objects") and meta.get("width") for meta in row_meta):
                raise CaptioningError(
                    "scst.shapes_reward_weight > 0 needs the train images' objects and sizes "
                    "(only fetch.source shapes writes them): set it to 0"
                )
            scenes = {row: Scene.of(meta) for row, meta in enumerate(row_meta)}
        return cls(references, vocab, cfg, scenes)

    def __call__(self, model: nn.Module, batch: Batch, step: int, ctx: DistContext) -> StepLoss:
        if ctx.enabled or batch.image_rows is None:
            raise CaptioningError(
                "self-critical training runs in one process on cached features (train.devices 1)"
            )
        k = self.cfg.samples_per_image
        features = batch.features()
        images = features.size(0)
        rows = torch.arange(images, device=features.device).repeat_interleave(k)  # (B*K,)
        words, log_probs = sampled_captions(
            model,
            features,
            rows,
            start_id=self.vocab.start_id,
            end_id=self.vocab.end_id,
            max_length=self.cfg.max_length,
        )
        keys = batch.image_rows.repeat_interleave(k).tolist()
        captions = [self.vocab.decode(_until_end(ids, self.vocab.end_id)) for ids in words.tolist()]
        rewards = self.rewards(keys, captions)
        advantage = rewards - leave_one_out_baseline(rewards.reshape(images, k)).reshape(-1)
        weight = torch.as_tensor(advantage, dtype=log_probs.dtype, device=log_probs.device)
        loss = -(weight * log_probs).mean()
        return StepLoss(loss, images * k, stats={"reward": float(rewards.mean())})

    def rewards(self, keys: Sequence[int], captions: Sequence[str]) -> np.ndarray:
        """(N,) each caption's CIDEr-D against its image's references, plus the shapes term."""
        rewards = self.references.sample_cider(keys, captions)
        if self.scenes is not None:
            shapes = [
                shapes_score(c, self.scenes[key]) for key, c in zip(keys, captions, strict=True)
            ]
            rewards = rewards + self.cfg.shapes_reward_weight * np.asarray(shapes)
        return rewards


def _until_end(ids: list[int], end_id: int) -> list[int]:
    return ids[: ids.index(end_id)] if end_id in ids else ids
