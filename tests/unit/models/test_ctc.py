"""The CTC head: frames from the grid's columns, the CTC loss, and learning to read words."""

import dataclasses

import pytest
import torch

from captioning.config import ConfigError, DecoderConfig, from_dict
from captioning.decoding.search import beam_search, beam_search_n_best, greedy_search
from captioning.models import build_decoder
from captioning.training.objectives import CTCLoss, ctc_loss_sum, loss_sum, objective_for

CFG = DecoderConfig(hidden_dim=32, dropout=0.0, feature_dropout=0.0, ctc_columns=6)
VOCAB, ROWS, CHANNELS = 9, 2, 8  # ids 4..8 are letters; <pad> (0) is the blank


def make(**changes):
    torch.manual_seed(0)
    cfg = dataclasses.replace(CFG, **changes)
    return build_decoder(
        "ctc", cfg, vocab_size=VOCAB, feature_dim=CHANNELS, num_locations=ROWS * cfg.ctc_columns
    )


@pytest.mark.parametrize("changes", [{}, {"cell": "gru"}, {"ctc_layers": 0}, {"ctc_layers": 2}])
def test_frames_one_per_column_and_rows_pick_images(changes):
    head = make(**changes)
    features = torch.randn(3, ROWS * 6, CHANNELS)
    captions = torch.tensor([[1, 4, 5, 2, 0]] * 4)
    rows = torch.tensor([0, 0, 2, 1])
    out = head(features, captions, rows)
    assert out.logits.shape == (4, 6, VOCAB) and out.alphas is None
    torch.testing.assert_close(out.logits[0], out.logits[1])
    torch.testing.assert_close(out.logits[2], head.frames(features)[2])
    assert type(objective_for(head, None)) is CTCLoss


def test_columns_follow_the_grid_left_to_right():
    """A change in one column of the (rows x columns) grid changes that frame only (no
    recurrent layer, which would spread it)."""
    head = make(ctc_layers=0).eval()
    features = torch.randn(1, ROWS * 6, CHANNELS)
    changed = features.clone()
    changed[0, 6 + 4] += 1.0  # row 1, column 4
    moved = (head.frames(changed) - head.frames(features)).abs().sum(-1)[0]
    assert moved.nonzero().flatten().tolist() == [4]


def test_bad_columns_and_layers_are_named():
    with pytest.raises(ValueError, match="ctc_columns: 5 does not divide the encoder's 12"):
        cfg = dataclasses.replace(CFG, ctc_columns=5)
        build_decoder("ctc", cfg, vocab_size=VOCAB, feature_dim=CHANNELS, num_locations=12)
    with pytest.raises(ConfigError, match=r"params.yaml.*train.model.ctc_layers.*>= 0"):
        from_dict(DecoderConfig, {"ctc_layers": -1}, path="params.yaml", prefix="train.model.")


def test_ctc_loss_is_per_caption_and_ignores_start_end_pad():
    logits = torch.randn(2, 6, VOCAB)
    captions = torch.tensor([[1, 4, 5, 2, 0], [1, 6, 6, 7, 2]])
    expected = torch.nn.functional.ctc_loss(
        logits.log_softmax(-1).transpose(0, 1),
        torch.tensor([4, 5, 6, 6, 7]),
        torch.tensor([6, 6]),
        torch.tensor([2, 3]),
        reduction="sum",
    )
    torch.testing.assert_close(ctc_loss_sum(logits, captions), expected)
    total, count = loss_sum(make(), logits, captions)
    assert count == 2 and torch.isclose(total, expected)


def fixture(words, generator):
    """Each word's letters in its own columns of a 2x6 grid (noisy one-hot channels),
    blank columns between, so a head can learn to read any word from the columns."""
    features = torch.randn(len(words), ROWS, 6, CHANNELS, generator=generator) * 0.3
    captions = torch.zeros(len(words), 7, dtype=torch.long)
    for i, word in enumerate(words):
        captions[i, 0] = 1
        for j, letter in enumerate(word):
            features[i, :, 2 * j, letter - 4] += 2.0
            captions[i, 1 + j] = letter
        captions[i, 1 + len(word)] = 2
    return features.reshape(len(words), ROWS * 6, CHANNELS), captions


def test_the_head_learns_to_read_words_greedy_and_beam():
    generator = torch.Generator().manual_seed(0)
    unseen = [[8, 8, 5], [6, 7], [4, 4, 4]]  # repeats need a blank between: the fixture has one
    train_words = []
    while len(train_words) < 48:
        n = int(torch.randint(2, 4, (), generator=generator))
        word = torch.randint(4, 9, (n,), generator=generator).tolist()
        if word not in unseen:
            train_words.append(word)
    features, captions = fixture(train_words, generator)
    head = make()
    optimiser = torch.optim.Adam(head.parameters(), lr=0.01)
    for _ in range(150):
        loss = ctc_loss_sum(head(features, captions).logits, captions) / len(captions)
        optimiser.zero_grad()
        loss.backward()
        optimiser.step()
    assert float(loss) < 0.05
    head.eval()
    test, _ = fixture(unseen, generator)
    ids = dict(start_id=1, end_id=2, max_length=8)
    assert [h.tokens for h in greedy_search(head, test, **ids)] == unseen
    assert [h.tokens for h in beam_search(head, test, beam_size=3, **ids)] == unseen
    n_best = beam_search_n_best(head, test, beam_size=3, n_best=2, **ids)
    assert [hyps[0].tokens for hyps in n_best] == unseen
    assert all(h.alphas is None for hyps in n_best for h in hyps)
    assert all(hyps[0].score >= hyps[1].score for hyps in n_best)
