"""The base Decoder runs a decoder that writes only ``init_state`` and ``recur``: ``step`` for
the searches and ``forward`` for teacher forcing, from the same pieces."""

import torch
from torch import nn

from captioning.decoding.search import beam_search, greedy_search
from captioning.models.base import Decoder, State

VOCAB, CHANNELS, LOCATIONS, WIDTH = 7, 5, 4, 6


class MeanGRU(Decoder):
    """A decoder in the base's frame: a GRU over the words, h0 from the mean feature, and
    ``attends`` a fixed uniform map (to check that the base stacks attention)."""

    def __init__(self, attends: bool) -> None:
        super().__init__()
        self.image = nn.Linear(CHANNELS, WIDTH)
        self.embedding = nn.Embedding(VOCAB, WIDTH)
        self.cell = nn.GRUCell(WIDTH, WIDTH)
        self.out = nn.Linear(WIDTH, VOCAB)
        self.attends = attends

    def init_state(self, features: torch.Tensor) -> State:
        return {"h": torch.tanh(self.image(features.mean(dim=1)))}

    def recur(self, embedded: torch.Tensor, state: State):
        h = self.cell(embedded, state["h"])
        alpha = h.new_full((h.size(0), LOCATIONS), 1.0 / LOCATIONS) if self.attends else None
        return h, {"h": h}, alpha


def inputs():
    torch.manual_seed(1)
    features = torch.randn(3, LOCATIONS, CHANNELS)
    captions = torch.randint(3, VOCAB, (3, 5))
    captions[:, 0] = 1
    return features, captions


def test_forward_is_the_step_loop_and_stacks_attention_only_when_there_is_some():
    features, captions = inputs()
    for attends in (False, True):
        torch.manual_seed(0)
        decoder = MeanGRU(attends)
        out = decoder(features, captions)
        assert out.logits.shape == (3, 4, VOCAB)
        assert float(out.aux_loss) == 0.0
        assert (out.alphas is not None) is attends
        state = decoder.init_state(features)
        for t in range(4):
            logits, state, alpha = decoder.step(captions[:, t], state)
            torch.testing.assert_close(logits, out.logits[:, t])
            assert (alpha is not None) is attends
        if attends:
            assert out.alphas.shape == (3, 4, LOCATIONS)


def test_scheduled_sampling_feeds_the_decoders_own_words():
    torch.manual_seed(0)
    decoder = MeanGRU(attends=False)
    features, captions = inputs()
    forced = decoder(features, captions).logits
    torch.manual_seed(2)
    sampled = decoder(features, captions, sample_prob=1.0).logits
    torch.testing.assert_close(sampled[:, 0], forced[:, 0])  # the first input is always <start>
    assert not torch.allclose(sampled[:, 1:], forced[:, 1:])


def test_rows_share_an_images_state():
    torch.manual_seed(0)
    decoder = MeanGRU(attends=False)
    features, captions = inputs()
    rows = torch.tensor([0, 0, 2])
    shared = decoder(features, captions, rows).logits
    torch.testing.assert_close(shared, decoder(features[rows], captions).logits)


def test_the_searches_run_on_it():
    torch.manual_seed(0)
    decoder = MeanGRU(attends=False)
    features, _ = inputs()
    ids = dict(start_id=1, end_id=2, max_length=6)
    greedy = greedy_search(decoder, features, **ids)
    beam = beam_search(decoder, features, beam_size=3, **ids)
    assert len(greedy) == len(beam) == 3
    assert all(b.score >= g.score - 1e-5 for b, g in zip(beam, greedy, strict=True))
