"""Training samples from the feature cache: (image row, encoded caption), in length-grouped batches."""

from __future__ import annotations

from collections.abc import Iterator, Sequence
from dataclasses import dataclass

import numpy as np
import torch

from captioning.data.vocab import Vocab


@dataclass(frozen=True)
class CaptionSet:
    """Every caption of every image of one split, encoded once."""

    image_rows: np.ndarray  # (M,) row in the feature array for each caption
    captions: list[list[int]]  # M encoded captions (<start> ... <end>)
    weights: np.ndarray  # (N,) how many times each image is drawn per epoch

    @classmethod
    def build(
        cls,
        captions_per_image: Sequence[Sequence[str]],
        vocab: Vocab,
        repeats: Sequence[int] | None = None,
    ) -> CaptionSet:
        rows, encoded = [], []
        for row, captions in enumerate(captions_per_image):
            for caption in captions:
                rows.append(row)
                encoded.append(vocab.encode(caption))
        n = len(captions_per_image)
        weights = np.ones(n, dtype=np.int64) if repeats is None else np.asarray(repeats)
        return cls(np.asarray(rows, dtype=np.int64), encoded, weights)

    def epoch_samples(self, rng: np.random.Generator) -> np.ndarray:
        """One random caption per image draw; an image with weight w is drawn w times."""
        by_image: dict[int, list[int]] = {}
        for index, row in enumerate(self.image_rows.tolist()):
            by_image.setdefault(row, []).append(index)
        samples = []
        for row in sorted(by_image):
            options = by_image[row]
            for _ in range(int(self.weights[row])):
                samples.append(options[int(rng.integers(len(options)))])
        return np.asarray(samples, dtype=np.int64)


def length_grouped_batches(
    lengths: Sequence[int], batch_size: int, rng: np.random.Generator, group: int = 50
) -> list[np.ndarray]:
    """Shuffle, sort by length within windows of ``group`` batches, then shuffle the batches.

    Captions of similar length share a batch, so little compute goes to padding, while the
    order stays random from epoch to epoch.
    """
    order = rng.permutation(len(lengths))
    lengths_arr = np.asarray(lengths)
    window = batch_size * group
    batches = []
    for start in range(0, len(order), window):
        chunk = order[start : start + window]
        chunk = chunk[np.argsort(lengths_arr[chunk], kind="stable")]
        batches.extend(chunk[i : i + batch_size] for i in range(0, len(chunk), batch_size))
    return [batches[i] for i in rng.permutation(len(batches))]


def collate(
    features: torch.Tensor, caption_set: CaptionSet, indices: np.ndarray, pad_id: int
) -> tuple[torch.Tensor, torch.Tensor]:
    """(B, L, C) features and (B, T) padded captions for the given caption indices."""
    rows = torch.from_numpy(caption_set.image_rows[indices])
    captions = [caption_set.captions[i] for i in indices.tolist()]
    width = max(len(c) for c in captions)
    padded = torch.full((len(captions), width), pad_id, dtype=torch.long)
    for i, caption in enumerate(captions):
        padded[i, : len(caption)] = torch.tensor(caption)
    return features[rows], padded


def iterate_batches(
    features: torch.Tensor,
    caption_set: CaptionSet,
    batches: list[np.ndarray],
    pad_id: int,
) -> Iterator[tuple[torch.Tensor, torch.Tensor]]:
    for batch in batches:
        yield collate(features, caption_set, batch, pad_id)
