"""Training batches from the feature cache, in draws of one image with several of its captions.

A draw is one image and up to ``seq_per_image`` of its captions. The decoder computes the
per-image work (feature projection, attention keys) once per draw and shares it between those
captions, as self-critical.pytorch's ``seq_per_img`` does: on the CPU that projection is most of
a training step.
"""

from __future__ import annotations

import atexit
import queue
import threading
from collections.abc import Iterable, Iterator, Sequence
from dataclasses import dataclass
from typing import Any, TypeVar

import numpy as np
import torch

from captioning.config import TrainConfig
from captioning.data.vocab import Vocab
from captioning.features.cache import FeatureRows

Draw = tuple[int, tuple[int, ...]]  # (image row, indices into that image's captions)
T = TypeVar("T")
# Features (N, L, C) indexed by a list of rows: in memory, or read from the cache per batch.
Features = torch.Tensor | FeatureRows


def images_per_batch(cfg: TrainConfig) -> int:
    """Draws per batch: ``batch_size`` counts captions, ``seq_per_image`` of them per draw."""
    return max(1, cfg.batch_size // cfg.seq_per_image)


def hard_repeats(record: dict[str, Any], cfg: TrainConfig) -> int:
    """Images with many objects are the hard ones: draw them ``hard_repeat`` times per epoch."""
    return cfg.hard_repeat if len(record.get("objects", ())) >= cfg.hard_min_objects else 1


@dataclass(frozen=True)
class CaptionSet:
    """Every caption of every image of one split, encoded once."""

    captions: list[list[list[int]]]  # per image row: its encoded captions (<start> ... <end>)
    weights: np.ndarray  # (N,) how many times each image is drawn per epoch

    @classmethod
    def build(
        cls,
        captions_per_image: Sequence[Sequence[str]],
        vocab: Vocab,
        repeats: Sequence[int] | None = None,
    ) -> CaptionSet:
        encoded = [[vocab.encode(c) for c in captions] for captions in captions_per_image]
        n = len(encoded)
        weights = np.ones(n, dtype=np.int64) if repeats is None else np.asarray(repeats)
        return cls(encoded, weights)

    @property
    def num_captions(self) -> int:
        return sum(len(c) for c in self.captions)

    def epoch_draws(self, rng: np.random.Generator, per_image: int) -> list[Draw]:
        """Each image ``weight`` times, each time with ``per_image`` of its captions at random."""
        draws: list[Draw] = []
        for row, captions in enumerate(self.captions):
            if not captions:
                continue
            for _ in range(int(self.weights[row])):
                k = min(per_image, len(captions))
                picked = rng.choice(len(captions), size=k, replace=False)
                draws.append((row, tuple(int(i) for i in picked)))
        return draws

    def all_draws(self) -> list[Draw]:
        """Every image once with all its captions (validation loss)."""
        return [(row, tuple(range(len(c)))) for row, c in enumerate(self.captions) if c]

    def draw_length(self, draw: Draw) -> int:
        row, picked = draw
        return max(len(self.captions[row][i]) for i in picked)


def length_grouped_batches(
    lengths: Sequence[int], batch_size: int, rng: np.random.Generator, group: int = 50
) -> list[np.ndarray]:
    """Shuffle, sort by length within windows of ``group`` batches, then shuffle the batches.

    Items of similar length share a batch, so little compute goes to padding, while the order
    stays random from epoch to epoch.
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


def caption_batch(
    caption_set: CaptionSet, draws: Sequence[Draw], pad_id: int
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """The drawn images' rows (B,), their captions (M, T) padded, and rows (M,) mapping each
    caption to its image in the batch."""
    image_rows = torch.tensor([row for row, _ in draws], dtype=torch.long)
    captions = [caption_set.captions[row][i] for row, picked in draws for i in picked]
    rows = torch.tensor([b for b, (_, picked) in enumerate(draws) for _ in picked])
    width = max(len(c) for c in captions)
    padded = torch.full((len(captions), width), pad_id, dtype=torch.long)
    for i, caption in enumerate(captions):
        padded[i, : len(caption)] = torch.tensor(caption)
    return image_rows, padded, rows


def collate(
    features: Features, caption_set: CaptionSet, draws: Sequence[Draw], pad_id: int
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """Features (B, L, C) of the drawn images, captions (M, T) padded, and rows (M,) mapping
    each caption to its image in the batch."""
    image_rows, captions, rows = caption_batch(caption_set, draws, pad_id)
    return features[image_rows], captions, rows


def iterate_batches(
    features: Features,
    caption_set: CaptionSet,
    batches: Sequence[Sequence[Draw]],
    pad_id: int,
) -> Iterator[tuple[torch.Tensor, torch.Tensor, torch.Tensor]]:
    for batch in batches:
        yield collate(features, caption_set, batch, pad_id)


_END = object()
# Reader threads still running: (stop flag, thread).
_readers: set[tuple[threading.Event, threading.Thread]] = set()


@atexit.register
def _stop_readers() -> None:
    """Stop the readers of iterators left unfinished (a run that failed mid-epoch): one
    stopped by the interpreter's exit while inside torch would abort the process."""
    for stop, thread in list(_readers):
        stop.set()
        thread.join()


def prefetched(items: Iterable[T], depth: int = 1) -> Iterator[T]:
    """``items``, produced in a background thread up to ``depth`` ahead of the consumer, so
    that reading the next batch overlaps the step on this one. Same items, same order; an
    exception raised producing them is raised here. Closing this iterator stops the thread
    (it finishes the item it is producing); so does the end of the process."""
    ready: queue.Queue = queue.Queue(maxsize=depth)
    stop = threading.Event()

    def put(entry: object) -> bool:
        while not stop.is_set():
            try:
                ready.put(entry, timeout=0.1)
                return True
            except queue.Full:
                continue
        return False

    def produce() -> None:
        try:
            for item in items:
                if stop.is_set() or not put((True, item)):
                    return
        except BaseException as exc:  # handed to the consumer, raised there
            put((False, exc))
            return
        put(_END)

    reader = (stop, threading.Thread(target=produce, name="prefetch", daemon=True))
    _readers.add(reader)
    reader[1].start()
    try:
        while (entry := ready.get()) is not _END:
            produced, value = entry
            if not produced:
                raise value
            yield value
    finally:
        stop.set()
        reader[1].join()
        _readers.discard(reader)
