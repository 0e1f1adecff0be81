"""train.model.attend_with_word: the soft-attention query also sees the word just fed."""

from dataclasses import replace

import pytest
import torch

from captioning.config import DecoderConfig
from captioning.models import build_decoder

SMALL = DecoderConfig(embed_dim=16, hidden_dim=24, attention_dim=12, feature_proj_dim=20)
VOCAB, FEATURES, LOCATIONS = 11, 32, 9


def make(enabled: bool):
    torch.manual_seed(0)
    cfg = replace(SMALL, attend_with_word=enabled)
    decoder = build_decoder(
        "soft_attention", cfg, vocab_size=VOCAB, feature_dim=FEATURES, num_locations=LOCATIONS
    )
    return decoder.eval()


@pytest.mark.parametrize("enabled", [False, True])
def test_attention_depends_on_the_word_fed_only_when_enabled(enabled):
    decoder = make(enabled)
    torch.manual_seed(1)
    state = decoder.init_state(torch.randn(2, LOCATIONS, FEATURES))
    _, _, alpha_one = decoder.step(torch.tensor([4, 4]), state)
    _, _, alpha_other = decoder.step(torch.tensor([7, 7]), state)
    assert torch.allclose(alpha_one, alpha_other) is not enabled


def test_disabled_keeps_the_parameters_of_models_trained_before():
    assert not any(name.startswith("word_query") for name in make(False).state_dict())
    assert make(True).state_dict()["word_query.weight"].shape == (12, 16)


def test_enabled_step_matches_forward_and_trains():
    decoder = make(True)
    torch.manual_seed(2)
    features = torch.randn(3, LOCATIONS, FEATURES).half()
    captions = torch.randint(4, VOCAB, (3, 6))
    captions[:, 0] = 1
    logits = decoder(features, captions).logits
    state = decoder.init_state(features)
    for t in range(captions.size(1) - 1):
        step_logits, state, _ = decoder.step(captions[:, t], state)
        torch.testing.assert_close(step_logits, logits[:, t])
    decoder.train()
    out = decoder(features, captions)
    (out.logits.logsumexp(-1).mean() + out.aux_loss).backward()
    assert decoder.word_query.weight.grad is not None
    assert torch.isfinite(decoder.word_query.weight.grad).all()
    assert decoder.word_query.weight.grad.abs().sum() > 0
