"""Training on a tiny real feature cache: outputs, reload, and resume after a kill."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch
from safetensors.torch import load_file

from captioning.config import DecoderConfig, FeaturesConfig, ShardConfig, TrainConfig, VocabConfig
from captioning.data.shards import split_captions, write_shards
from captioning.data.vocab import build_vocab
from captioning.features.cache import extract_features
from captioning.training.loop import load_decoder, train_decoder

CFG = TrainConfig(
    model=DecoderConfig(embed_dim=16, hidden_dim=16, attention_dim=8, feature_proj_dim=16),
    epochs=3,
    batch_size=4,
    seq_per_image=2,
    warmup_steps=1,
)


@pytest.fixture(scope="module")
def workspace(tmp_path_factory) -> Path:
    from conftest import make_layout

    root = tmp_path_factory.mktemp("train")
    make_layout(root / "raw", {"train": 8, "val": 2, "test": 2})
    write_shards(root / "raw", root / "shards", ShardConfig())
    torch.manual_seed(0)
    extract_features(
        root / "shards",
        root / "features",
        FeaturesConfig(pretrained=False, batch_size=8, num_workers=0),
    )
    vocab, _ = build_vocab(split_captions(root / "shards", "train"), VocabConfig())
    vocab.save(root / "vocab.json")
    return root


def train(root: Path, name: str, **kwargs):
    return train_decoder(
        root / "features",
        root / "vocab.json",
        root / "models" / name,
        CFG,
        seed=7,
        checkpoint_dir=root / "checkpoints" / name,
        **kwargs,
    )


def test_training_writes_a_model_that_loads_back(workspace):
    result = train(workspace, "plain")
    assert [r["epoch"] for r in result.history] == [1, 2, 3]
    assert all(r["val_loss"] > 0 for r in result.history)
    model_dir = workspace / "models" / "plain"
    assert sorted(p.name for p in model_dir.iterdir()) == [
        "config.json",
        "decoder.safetensors",
        "vocab.json",
    ]
    decoder, vocab, config = load_decoder(model_dir)
    assert config["decoder"] == "soft_attention" and len(vocab) == config["vocab_size"]
    assert not (workspace / "checkpoints" / "plain" / "last.pt").exists()  # removed when done


def test_killed_run_resumes_to_the_same_weights(workspace):
    train(workspace, "reference")

    class Killed(Exception):
        pass

    def kill_after_first_epoch(epoch, record):
        if epoch == 1:
            raise Killed

    with pytest.raises(Killed):
        train(workspace, "resumed", on_epoch=kill_after_first_epoch)
    assert (workspace / "checkpoints" / "resumed" / "last.pt").exists()
    assert not (workspace / "models" / "resumed").exists()  # nothing half-written
    result = train(workspace, "resumed")
    assert [r["epoch"] for r in result.history] == [1, 2, 3]
    reference = load_file(str(workspace / "models" / "reference" / "decoder.safetensors"))
    resumed = load_file(str(workspace / "models" / "resumed" / "decoder.safetensors"))
    for key, value in reference.items():
        torch.testing.assert_close(resumed[key], value, rtol=0, atol=0)
