"""AdditiveAttention computes Bahdanau's v^T tanh(W1 f + W2 h) + b, whatever form it takes."""

import torch

from captioning.models.layers import AdditiveAttention


def reference_scores(att: AdditiveAttention, features, hidden, extra):
    query = att.hidden_proj(hidden) + extra  # (N, A)
    energy = torch.tanh(att.feature_proj(features) + query.unsqueeze(1))  # (N, L, A)
    scores = energy @ att.score.weight.squeeze(0)  # (N, L)
    return scores if att.score.bias is None else scores + att.score.bias


def test_scores_and_gradients_are_the_tanh_form():
    torch.manual_seed(0)
    att = AdditiveAttention(feature_dim=12, hidden_dim=10, attention_dim=8)
    with torch.no_grad():
        att.score.bias.fill_(0.7)
    features, hidden, extra = torch.randn(3, 5, 12), torch.randn(3, 10), torch.randn(3, 8)
    ours = att.scores(att.precompute(features), hidden, extra).squeeze(1)  # (N, L)
    expected = reference_scores(att, features, hidden, extra)
    torch.testing.assert_close(ours, expected, rtol=0, atol=1e-6)

    weights = torch.randn_like(expected)
    grads = torch.autograd.grad((ours * weights).sum(), list(att.parameters()))
    expected_grads = torch.autograd.grad((expected * weights).sum(), list(att.parameters()))
    for got, want in zip(grads, expected_grads, strict=True):
        torch.testing.assert_close(got, want, rtol=1e-5, atol=1e-6)


def test_a_score_layer_without_bias_is_the_tanh_form_without_it():
    torch.manual_seed(1)
    att = AdditiveAttention(feature_dim=12, hidden_dim=10, attention_dim=8)
    att.score = torch.nn.Linear(8, 1, bias=False)
    features, hidden, extra = torch.randn(3, 5, 12), torch.randn(3, 10), torch.randn(3, 8)
    ours = att.scores(att.precompute(features), hidden, extra).squeeze(1)
    torch.testing.assert_close(
        ours, reference_scores(att, features, hidden, extra), rtol=0, atol=1e-6
    )
