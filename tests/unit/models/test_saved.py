"""A trained decoder's directory: written at once, read back to the same decoder."""

from __future__ import annotations

import json

import pytest
import torch
from torch import nn

from captioning.config import DecoderConfig, to_dict
from captioning.data.vocab import Vocab
from captioning.features.encoding import ENCODER_WEIGHTS_FILE
from captioning.models import build_decoder
from captioning.models.saved import load_decoder, save_model

MODEL = DecoderConfig(embed_dim=8, hidden_dim=8, attention_dim=8, feature_proj_dim=8)


def config(decoder: str) -> dict:
    """A run config as training writes it: a 2x2 grid of 6 channels."""
    encoder = {"encoder": "small_cnn", "input_size": 64, "grid": 2, "channels": 6}
    return {"decoder": decoder, "train": {"model": to_dict(MODEL)}, "encoder": encoder}


@pytest.mark.parametrize("decoder", ["nic", "soft_attention", "transformer"])
def test_a_saved_decoder_loads_back_in_eval_mode(tmp_path, decoder):
    vocab = Vocab(itos=("<pad>", "<start>", "<end>", "<unk>", "a", "red", "circle"), max_length=8)
    torch.manual_seed(0)
    trained = build_decoder(decoder, MODEL, vocab_size=len(vocab), feature_dim=6, num_locations=4)
    save_model(tmp_path / "model", trained, vocab, config(decoder))
    assert sorted(p.name for p in (tmp_path / "model").iterdir()) == [
        "config.json",
        "decoder.safetensors",
        "vocab.json",
    ]
    loaded, loaded_vocab, loaded_config = load_decoder(tmp_path / "model")
    assert not loaded.training and loaded_vocab.itos == vocab.itos
    assert loaded_config == config(decoder)
    assert_same_weights(loaded, trained)


def test_a_trained_encoder_is_saved_beside_and_old_configs_still_load(tmp_path):
    """Models from before the run's decoder left the train config have ``train.decoder``."""
    vocab = Vocab(itos=("<pad>", "<start>", "<end>", "<unk>", "a"), max_length=8)
    trained = build_decoder("nic", MODEL, vocab_size=len(vocab), feature_dim=6, num_locations=4)
    old = config("nic")
    old["train"]["decoder"] = "nic"
    save_model(tmp_path / "model", trained, vocab, old, encoder=nn.Linear(2, 3))
    assert (tmp_path / "model" / ENCODER_WEIGHTS_FILE).is_file()
    assert json.loads((tmp_path / "model" / "config.json").read_text()) == old
    loaded, _, _ = load_decoder(tmp_path / "model", torch.device("cpu"))
    assert_same_weights(loaded, trained)


def assert_same_weights(a: nn.Module, b: nn.Module) -> None:
    assert a.state_dict().keys() == b.state_dict().keys()
    for key, value in a.state_dict().items():
        assert torch.equal(b.state_dict()[key], value), key
