"""Does a decoder know where the objects are? A teacher-forced probe of its relation words.

For each reference caption that states a relation ("a red circle to the left of a blue
square"), the decoder reads the caption's words up to the relation word and ranks the four
relation words (left, right, above, below) at that position. The syntax gives the axis away
("to the" comes before left/right only), so the probe reports two shares: the axis right, which
any language model gets, and the word right, which needs the image: 0.5 is a guess between the
two directions of the axis. The relation metrics of captions (``metrics.shapes_relations``)
score what the decoder chooses to say; this scores what it knows when the words are given.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch

from captioning.data.vocab import Vocab, tokenize
from captioning.features.cache import FeatureCache
from captioning.models import Decoder
from captioning.models.saved import load_decoder

RELATION_WORDS = ("left", "right", "above", "below")
_AXIS = {"left": "x", "right": "x", "above": "y", "below": "y"}


@dataclass(frozen=True)
class ProbeResult:
    probed: int  # relation words in the references
    word_right: float  # share where the true word ranks first of the four
    axis_right: float  # share where the first of the four is on the true word's axis
    by_word: dict[str, tuple[int, int]]  # word -> (right, probed)


@torch.no_grad()
def probe_relation_words(
    decoder: Decoder,
    vocab: Vocab,
    features: np.ndarray,
    captions: Sequence[Sequence[str]],
    *,
    batch_size: int = 256,
) -> ProbeResult:
    """The probe over every reference caption of ``captions[i]`` (the references of the image
    whose features are ``features[i]``, (L, C)) that states a relation."""
    ids = [vocab.encode(w)[1] for w in RELATION_WORDS]
    if vocab.unk_id in ids:
        raise ValueError("the vocabulary lacks a relation word: not a shapes model")
    queries = [
        (image, caption, position, word)
        for image, references in enumerate(captions)
        for caption in references
        for position, word in enumerate(tokenize(caption))
        if word in _AXIS
    ]
    right = {w: [0, 0] for w in RELATION_WORDS}
    axis = 0
    decoder.eval()
    for start in range(0, len(queries), batch_size):
        batch = queries[start : start + batch_size]
        encoded = [vocab.encode(caption) for _, caption, _, _ in batch]
        longest = max(len(e) for e in encoded)
        tokens = torch.full((len(batch), longest), vocab.pad_id, dtype=torch.long)
        for row, e in enumerate(encoded):
            tokens[row, : len(e)] = torch.tensor(e)
        images = sorted({image for image, _, _, _ in batch})
        where = {image: k for k, image in enumerate(images)}
        grid = torch.from_numpy(np.asarray(features[images], dtype=np.float32))
        rows = torch.tensor([where[image] for image, _, _, _ in batch])
        logits = decoder(grid, tokens, rows).logits  # logits[:, t] predicts token t + 1
        positions = torch.tensor([position for _, _, position, _ in batch])
        at = logits[torch.arange(len(batch)), positions][:, ids]  # word k is token k + 1
        for (_, _, _, word), best in zip(batch, at.argmax(dim=1).tolist(), strict=True):
            guess = RELATION_WORDS[best]
            right[word][0] += guess == word
            right[word][1] += 1
            axis += _AXIS[guess] == _AXIS[word]
    probed = len(queries)
    return ProbeResult(
        probed,
        sum(r for r, _ in right.values()) / probed if probed else float("nan"),
        axis / probed if probed else float("nan"),
        {w: (r, n) for w, (r, n) in right.items()},
    )


def probe_model(model_dir: str | Path, features_dir: str | Path, split: str) -> ProbeResult:
    """The probe of a trained model directory over a feature cache split's references."""
    decoder, vocab, _ = load_decoder(model_dir)
    cache = FeatureCache.open(Path(features_dir), split)
    return probe_relation_words(decoder, vocab, cache.features, cache.captions)
