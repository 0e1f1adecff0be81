"""The cached-features batch source reads each batch's rows from the cache file: the same
batches, in the same order, with the same values as indexing the whole split in RAM (what
training did before), from the start of an epoch or from the middle, on one rank or as one of
two; and it never holds the split in memory."""

from __future__ import annotations

import dataclasses
import threading
import time
from pathlib import Path

import numpy as np
import pytest
import torch
from tests.unit.features.test_feature_rows import write_feature_cache

from captioning.config import TrainConfig, VocabConfig
from captioning.data.vocab import build_vocab
from captioning.features.cache import FeatureCache, FeatureRows
from captioning.training.batches import caption_batch
from captioning.training.checkpoint import LoopState
from captioning.training.distributed import DistContext
from captioning.training.objectives import PAD_ID
from captioning.training.sources import CachedFeatures
from captioning.training.validation import BestSoFar

CPU = torch.device("cpu")
ONE = DistContext(0, 1, CPU)  # a single process
CFG = dataclasses.replace(TrainConfig(), batch_size=8, seq_per_image=2)  # 4 images a batch
COUNTS = {"train": 40, "val": 7}


@pytest.fixture(scope="module")
def cache_dir(tmp_path_factory) -> Path:
    root = tmp_path_factory.mktemp("features")
    write_feature_cache(root, COUNTS)
    return root


def opened(cache_dir: Path, ctx: DistContext = ONE) -> CachedFeatures:
    train = FeatureCache.open(cache_dir, "train")
    vocab, _ = build_vocab([c for cs in train.captions for c in cs], VocabConfig(min_freq=1))
    source = CachedFeatures(cache_dir)
    source.open(vocab, CFG, ctx, seed=3)
    return source


def epoch(source: CachedFeatures, position: int = 0) -> LoopState:
    state = LoopState(BestSoFar("CIDEr"))
    state.start_epoch(source.new_epoch(0, np.random.default_rng(11)))
    state.position = position
    return state


def in_ram_batches(source: CachedFeatures, state: LoopState, ctx: DistContext):
    """What training did before: the whole split in RAM, indexed by each batch's rows."""
    train_x = torch.from_numpy(FeatureCache.open(source.features_dir, "train").load_in_memory())
    for draws in state.batches[state.position :]:
        image_rows, captions, rows = caption_batch(source.train_set, ctx.shard(draws), PAD_ID)
        yield train_x[image_rows], captions, rows


def assert_same_batches(source: CachedFeatures, state: LoopState, ctx: DistContext) -> int:
    got = list(source.batches(state, np.random.default_rng(0)))
    want = list(in_ram_batches(source, state, ctx))
    assert len(got) == len(want) == len(state.batches) - state.position
    for batch, (x, captions, rows) in zip(got, want, strict=True):
        assert batch.inputs.dtype == torch.float16
        assert torch.equal(batch.inputs, x) and torch.equal(batch.features(), x)
        assert torch.equal(batch.captions, captions) and torch.equal(batch.rows, rows)
    return len(got)


def test_batches_from_the_file_equal_the_in_ram_ones(cache_dir):
    source = opened(cache_dir)
    state = epoch(source)
    # hard images are drawn twice: some batch holds one image twice (a repeated row)
    assert any(len({r for r, _ in b}) < len(b) for b in state.batches)
    assert source.images_per_epoch > COUNTS["train"]
    assert assert_same_batches(source, state, ONE) == len(state.batches)


def test_a_resumed_epoch_goes_on_with_the_same_batches(cache_dir):
    source = opened(cache_dir)
    whole = list(source.batches(epoch(source), np.random.default_rng(0)))
    resumed = list(source.batches(epoch(source, position=5), np.random.default_rng(0)))
    assert len(resumed) == len(whole) - 5
    for a, b in zip(whole[5:], resumed, strict=True):
        assert torch.equal(a.inputs, b.inputs) and torch.equal(a.captions, b.captions)
    assert_same_batches(source, epoch(source, position=5), ONE)


def test_each_rank_reads_its_share_of_the_global_batch(cache_dir):
    ctx = DistContext(1, 2, CPU)
    source = opened(cache_dir, ctx)
    state = epoch(source, position=2)
    assert assert_same_batches(source, state, ctx) > 0
    first = next(iter(source.batches(state, np.random.default_rng(0))))
    assert len(first.inputs) == len(state.batches[2][1::2])


def test_the_source_never_holds_a_split_in_memory(cache_dir, monkeypatch):
    def refuse(self, as_tensor=False):
        raise AssertionError(f"the {self.split} split was loaded whole")

    monkeypatch.setattr(FeatureCache, "load_in_memory", refuse)
    source = opened(cache_dir)
    for _ in source.batches(epoch(source), np.random.default_rng(0)):
        pass
    val = source.validation("fp32")
    assert isinstance(source.train_rows, FeatureRows) and isinstance(val.features, FeatureRows)
    held = [*vars(source).values(), *vars(source.train_rows).values(), *vars(val).values()]
    features = [v for v in held if isinstance(v, np.ndarray | torch.Tensor) and v.ndim == 3]
    assert features == []  # no (N, L, C) array: memory does not grow with the split


def test_reading_runs_at_most_two_batches_ahead(cache_dir, monkeypatch):
    """The next batch is read while the step on this one runs, and no further than one more:
    what is held in memory is a few batches, whatever the split. Closing the epoch's batches
    stops the reader."""
    source = opened(cache_dir)
    reads: list[int] = []
    read = FeatureRows.__getitem__

    def counted(rows, index):
        reads.append(len(index))
        return read(rows, index)

    monkeypatch.setattr(FeatureRows, "__getitem__", counted)
    batches = source.batches(epoch(source), np.random.default_rng(0))
    for taken in range(1, 4):
        next(batches)
        time.sleep(0.5)  # time for the reader to run ahead as far as it may
        assert len(reads) in (taken + 1, taken + 2)
    batches.close()
    deadline = time.monotonic() + 5
    while any(t.name == "prefetch" for t in threading.enumerate()):
        assert time.monotonic() < deadline, "the reader thread outlived its batches"
        time.sleep(0.05)


def test_rows_are_staged_in_pinned_memory_only_for_a_cuda_device(cache_dir):
    """Pinned host memory makes the copy to a GPU asynchronous; on the CPU it is only a cost
    (and needs CUDA). Opening the source allocates nothing, so a CUDA context can be checked
    here."""
    assert opened(cache_dir).train_rows.pin is False
    assert opened(cache_dir, DistContext(0, 1, torch.device("cuda", 0))).train_rows.pin is True
