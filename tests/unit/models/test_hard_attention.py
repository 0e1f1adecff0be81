"""Hard attention's REINFORCE: the moving-average baseline and the entropy bonus."""

import dataclasses

import pytest
import torch

from captioning.config import DecoderConfig
from captioning.models import build_decoder

CFG = DecoderConfig(embed_dim=16, hidden_dim=24, attention_dim=12, feature_proj_dim=20)
VOCAB, FEATURES, LOCATIONS = 11, 32, 9


def make(**changes):
    torch.manual_seed(0)
    cfg = dataclasses.replace(CFG, dropout=0.0, feature_dropout=0.0, **changes)
    return build_decoder(
        "hard_attention", cfg, vocab_size=VOCAB, feature_dim=FEATURES, num_locations=LOCATIONS
    )


def batch():
    torch.manual_seed(1)
    features = torch.randn(4, LOCATIONS, FEATURES)
    captions = torch.randint(4, VOCAB, (4, 6))
    captions[:, 0] = 1
    captions[0, 3:] = 0
    return features, captions


def caption_log_likelihood(logits, captions):
    """log p(y | s, a) per caption, computed here independently of the decoder."""
    targets = captions[:, 1:]
    log_p = torch.log_softmax(logits.detach(), -1).gather(-1, targets.unsqueeze(-1)).squeeze(-1)
    return (log_p * (targets != 0)).sum(1)


def test_baseline_is_a_moving_average_of_the_reward_in_training_only():
    decoder = make(baseline_decay=0.9)
    features, captions = batch()
    assert float(decoder.baseline) == 0.0
    expected = 0.0
    for _ in range(2):
        out = decoder(features, captions)
        expected = 0.9 * expected + 0.1 * float(caption_log_likelihood(out.logits, captions).mean())
        assert float(decoder.baseline) == pytest.approx(expected, rel=1e-5)
    assert float(decoder.baseline) < 0.0  # log-likelihoods are negative: it moved
    decoder.eval()(features, captions)
    assert float(decoder.baseline) == pytest.approx(expected, rel=1e-5)
    assert "baseline" in decoder.state_dict()  # saved with the weights, kept on resume


def test_aux_loss_is_a_zero_valued_surrogate_that_trains_only_the_attention_policy():
    decoder = make()
    features, captions = batch()
    out = decoder(features, captions)
    assert float(out.aux_loss.detach()) == 0.0  # the logged loss stays the cross-entropy
    attention = list(decoder.attention.parameters())
    grads = torch.autograd.grad(out.aux_loss, attention, retain_graph=True)
    assert all(float(g.abs().sum()) > 0 for g in grads)
    # the cross-entropy does not reach the location scores: sampling is not differentiable
    ce = torch.nn.functional.cross_entropy(
        out.logits.reshape(-1, VOCAB), captions[:, 1:].reshape(-1), ignore_index=0
    )
    ce_grads = torch.autograd.grad(ce, attention, allow_unused=True)
    assert all(g is None or float(g.abs().sum()) == 0 for g in ce_grads)


def test_entropy_bonus_gradient_is_its_weight_times_the_mean_entropy():
    decoder = make(reinforce_weight=0.0, entropy_weight=0.5)
    features, captions = batch()
    out = decoder(features, captions)
    mask = (captions[:, 1:] != 0).float()
    entropy = -(out.alphas * out.alphas.log()).sum(-1)  # (B, T)
    bonus = -0.5 * (entropy * mask).sum() / mask.sum()
    attention = list(decoder.attention.parameters())
    expected = torch.autograd.grad(bonus, attention, retain_graph=True)
    actual = torch.autograd.grad(out.aux_loss, attention)
    for e, a in zip(expected, actual, strict=True):
        assert float(e.abs().sum()) > 0
        torch.testing.assert_close(a, e)


def test_without_reinforce_and_entropy_the_policy_gets_no_gradient():
    decoder = make(reinforce_weight=0.0, entropy_weight=0.0)
    features, captions = batch()
    out = decoder(features, captions)
    grads = torch.autograd.grad(out.aux_loss, list(decoder.attention.parameters()))
    assert all(float(g.abs().sum()) == 0 for g in grads)


def test_decoding_attends_to_the_most_likely_location():
    decoder = make().eval()
    features, captions = batch()
    state = decoder.init_state(features)
    _, after, alpha = decoder.step(captions[:, 0], state)
    where = alpha.argmax(-1)
    # Feeding the argmax location's feature by hand gives the same next hidden state.
    context = state["feats"][torch.arange(4), where]
    gated = torch.sigmoid(decoder.f_beta(state["h"])) * context
    x = torch.cat([decoder.embedding(captions[:, 0]), gated], -1)
    h, _ = decoder.cell(x, (state["h"], state["c"]))
    torch.testing.assert_close(after["h"], h)
    # and it is deterministic, unlike training
    torch.testing.assert_close(decoder.step(captions[:, 0], state)[1]["h"], h)


def train_on_decoys(reinforce_weight: float, entropy_weight: float, steps: int = 400):
    """Captions of one word, found at location 0; the other locations hold decoy words, so
    neither h0 (from the mean feature) nor a random location tells which word is meant."""
    vocab, locations = 16, 4

    def data(n: int, generator: torch.Generator):
        words = torch.randint(4, vocab, (n, locations), generator=generator)
        features = torch.nn.functional.one_hot(words, vocab).float()  # (n, L, V)
        captions = torch.stack([torch.ones(n).long(), words[:, 0], torch.full((n,), 2)], 1)
        return features, captions

    torch.manual_seed(0)
    cfg = DecoderConfig(
        embed_dim=16,
        hidden_dim=32,
        attention_dim=16,
        feature_proj_dim=32,
        dropout=0.0,
        feature_dropout=0.0,
        reinforce_weight=reinforce_weight,
        entropy_weight=entropy_weight,
    )
    decoder = build_decoder(
        "hard_attention", cfg, vocab_size=vocab, feature_dim=vocab, num_locations=locations
    )
    optimizer = torch.optim.Adam(decoder.parameters(), lr=1e-2)
    generator = torch.Generator().manual_seed(1)
    for _ in range(steps):
        features, captions = data(64, generator)
        out = decoder(features, captions)
        ce = torch.nn.functional.cross_entropy(
            out.logits.reshape(-1, vocab), captions[:, 1:].reshape(-1), ignore_index=0
        )
        optimizer.zero_grad()
        (ce + out.aux_loss).backward()
        optimizer.step()
    features, captions = data(256, generator)
    with torch.no_grad():
        out = decoder.eval()(features, captions)
    accuracy = float((out.logits[:, 0].argmax(-1) == captions[:, 1]).float().mean())
    return float(out.alphas[:, 0, 0].mean()), accuracy


def test_reinforce_learns_where_to_look():
    attention_on_word, accuracy = train_on_decoys(reinforce_weight=1.0, entropy_weight=0.01)
    assert attention_on_word > 0.8 and accuracy > 0.95
    # Without the policy gradient the locations stay uniform and the word is a guess.
    attention_on_word, accuracy = train_on_decoys(reinforce_weight=0.0, entropy_weight=0.0)
    assert abs(attention_on_word - 0.25) < 0.05 and accuracy < 0.8
