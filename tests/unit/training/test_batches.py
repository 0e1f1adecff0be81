import subprocess
import sys

import numpy as np
import pytest
import torch

from captioning.config import VocabConfig
from captioning.data.vocab import build_vocab
from captioning.training.batches import (
    CaptionSet,
    collate,
    length_grouped_batches,
    prefetched,
)

CAPTIONS = [
    ["a red circle", "there is a red circle", "a circle"],
    ["a blue square left of a red star"],
    ["a green star", "a green star in the image"],
]


def caption_set(repeats=None) -> CaptionSet:
    vocab, _ = build_vocab([c for cs in CAPTIONS for c in cs], VocabConfig())
    return CaptionSet.build(CAPTIONS, vocab, repeats)


def test_epoch_draws_respect_weights_and_caption_count():
    cs = caption_set(repeats=[1, 1, 3])
    draws = cs.epoch_draws(np.random.default_rng(0), per_image=2)
    assert [row for row, _ in draws] == [0, 1, 2, 2, 2]
    for row, picked in draws:
        assert len(picked) == min(2, len(CAPTIONS[row])) and len(set(picked)) == len(picked)


def test_draws_are_seeded():
    cs = caption_set()
    a = cs.epoch_draws(np.random.default_rng(5), per_image=1)
    b = cs.epoch_draws(np.random.default_rng(5), per_image=1)
    assert a == b


def test_collate_maps_captions_to_their_images():
    cs = caption_set()
    features = torch.arange(3, dtype=torch.float32).view(3, 1, 1).expand(3, 2, 4)
    x, captions, rows = collate(features, cs, [(2, (1, 0)), (0, (2,))], pad_id=0)
    assert x[:, 0, 0].tolist() == [2.0, 0.0]
    assert rows.tolist() == [0, 0, 1]
    assert captions.shape == (3, len(cs.captions[2][1]))
    assert captions[2].tolist()[: len(cs.captions[0][2])] == cs.captions[0][2]
    assert (captions[2, len(cs.captions[0][2]) :] == 0).all()


def test_length_grouped_batches_cover_everything_once_and_group_lengths():
    rng = np.random.default_rng(0)
    lengths = rng.integers(3, 20, size=200).tolist()
    batches = length_grouped_batches(lengths, 10, rng, group=100)
    flat = np.concatenate(batches)
    assert sorted(flat.tolist()) == list(range(200))
    spread = np.mean([np.ptp(np.asarray(lengths)[b]) for b in batches])
    assert spread <= 2  # sorted within the window: little padding


def test_prefetched_gives_the_same_items_in_order_and_raises_the_producers_error():
    assert list(prefetched(iter(range(50)))) == list(range(50))

    def failing():
        yield 1
        raise ValueError("row 7 unreadable")

    items = prefetched(failing())
    assert next(items) == 1
    with pytest.raises(ValueError, match="row 7 unreadable"):
        next(items)


ABANDONED = """
import torch
from captioning.training.batches import prefetched

def items():
    while True:
        yield torch.randn(256, 256) @ torch.randn(256, 256)

kept = prefetched(items())
next(kept)  # then the process ends without closing it, as a run failing mid-epoch does
"""


def test_a_process_ending_with_an_unfinished_prefetch_exits_cleanly():
    """The reader thread is stopped at exit: one stopped by the interpreter's exit while
    inside torch aborts the process ("terminate called without an active exception")."""
    done = subprocess.run(
        [sys.executable, "-c", ABANDONED], capture_output=True, text=True, timeout=120
    )
    assert done.returncode == 0, done.stderr[-2000:]
