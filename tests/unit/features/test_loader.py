"""The shard loaders: every shard checked against its manifest record as it is read."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch

from captioning.config import ShardConfig
from captioning.data.shard_check import ShardError
from captioning.data.shards import write_shards
from captioning.features.encoders import get_encoder_spec
from captioning.features.loader import shard_files, training_loader


@pytest.mark.parametrize("num_workers", [0, 1])
def test_training_loader_names_a_damaged_shard_in_one_line(
    tiny_layout: Path, tmp_path: Path, num_workers: int
) -> None:
    """Fine-tuning's loader: the shard is read (and hashed) in a DataLoader worker; torch folds
    the worker's traceback into the message, the loader gives back the one line."""
    write_shards(tiny_layout, tmp_path / "shards", ShardConfig(max_count=2, workers=1))
    files = shard_files(tmp_path / "shards")["train"]["shards"]
    damaged = files[1].path
    data = bytearray(damaged.read_bytes())
    data[-1] ^= 0xFF  # the tar's end padding: only the digest sees it
    damaged.write_bytes(bytes(data))
    loader = training_loader(
        files,
        get_encoder_spec("small_cnn"),
        batch_size=2,
        num_workers=num_workers,
        device=torch.device("cpu"),
        seed=0,
    )
    with pytest.raises(ShardError) as caught:
        for _ in loader:
            pass
    message = str(caught.value)
    assert "\n" not in message
    assert message.startswith(f"{damaged}: sha256 ")
    assert message.endswith("re-run the shard stage (dvc repro -f shard)")
