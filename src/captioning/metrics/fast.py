"""BLEU-1..4 and CIDEr-D in process, equal to pycocoevalcap's ``Bleu(4)`` and ``Cider`` on the
same tokenised captions, for validation during training.

pycocoevalcap counts every n-gram of every sentence in Python loops, twice (once per scorer),
and rebuilds each reference's tf-idf vector for every comparison. Here all sentences are
turned into integer n-gram ids with numpy (an n-gram's id is the id of its (n-1)-gram prefix
combined with its last word, made dense with ``np.unique``), and both metrics become sparse
matrix algebra over one (sentence x n-gram) count matrix per order. The arithmetic follows
pycocoevalcap step by step, quirks included:

- BLEU: corpus score from summed clipped counts, the reference length closest to the
  hypothesis' (ties to the shorter), ``1e-15`` added to matches and ``1e-9`` to guesses;
  per-image scores with the same smoothing and brevity penalty.
- CIDEr-D: idf ``log(#images) - log(max(1, df))`` with document frequencies over the images'
  references, the hypothesis' tf-idf clipped by the reference's, cosine per n, Gaussian length
  penalty (sigma 6) on the number of *bigrams* (what pycocoevalcap calls ``length``), mean over
  n and references, times 10.

Captions are strings of space-separated tokens (after the PTB tokenizer, or our vocabulary's
lower-case words).
"""

from __future__ import annotations

from collections.abc import Hashable, Mapping, Sequence
from dataclasses import dataclass
from itertools import chain
from typing import TYPE_CHECKING, Any

import numpy as np

if TYPE_CHECKING:
    from scipy import sparse

ORDERS = 4
SIGMA = 6.0
_TINY = 1e-15  # added to matched n-grams (pycocoevalcap's ``tiny``)
_SMALL = 1e-9  # added to guessed n-grams and lengths (its ``small``)


def _csr(*args: Any, **kwargs: Any) -> sparse.csr_matrix:
    """``scipy.sparse.csr_matrix``, scipy imported on first use: training imports this module
    (its validation scores) and its step runs where scipy is not installed (the GPU check,
    docs/gpu-check.md)."""
    from scipy import sparse

    return sparse.csr_matrix(*args, **kwargs)


@dataclass(frozen=True)
class _Encoded:
    tokens: np.ndarray  # (T,) word ids of all sentences, concatenated
    lengths: np.ndarray  # (S,) words per sentence


def _encode(sentences: Sequence[str], vocab: dict[str, int]) -> _Encoded:
    """Word ids (new words get the next free id) of every sentence, concatenated."""
    ids = [[vocab.setdefault(w, len(vocab)) for w in s.split()] for s in sentences]
    lengths = np.fromiter(map(len, ids), dtype=np.int64, count=len(ids))
    tokens = np.fromiter(chain.from_iterable(ids), dtype=np.int64, count=int(lengths.sum()))
    return _Encoded(tokens, lengths)


def ngram_counts(encoded: _Encoded, vocab_size: int) -> list[sparse.csr_matrix]:
    """Per order 1..4, the (sentence x n-gram) count matrix; n-gram ids are dense per order."""
    lengths = encoded.lengths
    sentence = np.repeat(np.arange(len(lengths)), lengths)  # (T,) sentence of each position
    remaining = np.repeat(lengths, lengths) - (
        np.arange(len(sentence)) - np.repeat(np.cumsum(lengths) - lengths, lengths)
    )  # (T,) words from this position to the end of its sentence
    ids = encoded.tokens  # (T,) id of the n-gram starting at each position (order 1: the word)
    matrices = []
    for k in range(1, ORDERS + 1):
        valid = remaining >= k
        if k > 1:
            # An n-gram is its (n-1)-gram prefix followed by one word: a unique pair of ids.
            starts = np.flatnonzero(valid)
            keys = ids[starts] * vocab_size + encoded.tokens[starts + k - 1]
            unique, dense = np.unique(keys, return_inverse=True)
            ids = np.full(len(sentence), -1, dtype=np.int64)
            ids[starts] = dense
            width = len(unique)
        else:
            width = vocab_size
        rows, cols = sentence[valid], ids[valid]
        counts = _csr((np.ones(len(rows)), (rows, cols)), shape=(len(lengths), max(width, 1)))
        counts.sum_duplicates()
        matrices.append(counts)
    return matrices


def _row_of_entries(matrix: sparse.csr_matrix) -> np.ndarray:
    return np.repeat(np.arange(matrix.shape[0]), np.diff(matrix.indptr))


class ReferenceIndex:
    """The references of a fixed set of images, encoded once and scored against many
    prediction sets (validation during training scores the same references every epoch)."""

    def __init__(self, references: Mapping[Hashable, Sequence[str]]) -> None:
        if not references:
            raise ValueError("fast metrics: no references")
        for key, refs in references.items():
            if not refs:
                raise ValueError(f"fast metrics: image {key!r} has no reference captions")
        self._keys = list(references)
        self._vocab: dict[str, int] = {}
        self._refs = _encode([r for k in self._keys for r in references[k]], self._vocab)
        per_image = np.array([len(references[k]) for k in self._keys])
        self._ref_image = np.repeat(np.arange(len(self._keys)), per_image)  # (R,)
        self._per_image = per_image  # (I,)

    @property
    def keys(self) -> list[Hashable]:
        return list(self._keys)

    def score(
        self, predictions: Mapping[Hashable, str]
    ) -> tuple[dict[str, float], dict[Hashable, dict[str, float]]]:
        """Corpus BLEU-1..4 and CIDEr, and the same per image (as pycocoevalcap returns them)."""
        if predictions.keys() != set(self._keys):
            missing = sorted(map(str, set(predictions) ^ set(self._keys)))
            raise ValueError(
                f"fast metrics: predictions and references differ on images {missing[:5]}"
            )
        vocab = dict(self._vocab)
        hyps = _encode([predictions[k] for k in self._keys], vocab)
        both = _Encoded(
            np.concatenate([self._refs.tokens, hyps.tokens]),
            np.concatenate([self._refs.lengths, hyps.lengths]),
        )
        n_refs = len(self._refs.lengths)
        counts = [(m[:n_refs], m[n_refs:]) for m in ngram_counts(both, max(len(vocab), 1))]
        bleu, bleu_per_image = self._bleu(counts, hyps.lengths)
        cider_per_image = self._cider(counts, hyps.lengths)
        corpus = {f"BLEU-{k + 1}": float(bleu[k]) for k in range(ORDERS)}
        corpus["CIDEr"] = float(cider_per_image.mean())
        per_image = {
            key: {f"BLEU-{k + 1}": float(bleu_per_image[k][i]) for k in range(ORDERS)}
            | {"CIDEr": float(cider_per_image[i])}
            for i, key in enumerate(self._keys)
        }
        return corpus, per_image

    def _bleu(
        self, counts: list[tuple[sparse.csr_matrix, sparse.csr_matrix]], test_len: np.ndarray
    ) -> tuple[list[float], list[np.ndarray]]:
        ref_len = self._refs.lengths
        image = self._ref_image
        # The reference length closest to the hypothesis', ties to the shorter one.
        big = int(ref_len.max()) + 1
        closeness = np.abs(ref_len - test_len[image]) * big + ref_len
        firsts = np.cumsum(self._per_image) - self._per_image
        closest = np.minimum.reduceat(closeness, firsts) % big  # (I,)
        correct, guess = [], []
        for k, (refs, hyp) in enumerate(counts):
            correct.append(np.asarray(hyp.minimum(self._max_counts(refs)).sum(axis=1)).ravel())
            guess.append(np.maximum(0, test_len - k))
        per_image, bleu = [], np.ones(len(test_len))
        ratio = (test_len + _TINY) / (closest + _SMALL)
        brevity = np.where(ratio < 1, np.exp(1 - 1 / ratio), 1.0)
        for k in range(ORDERS):
            bleu = bleu * ((correct[k] + _TINY) / (guess[k] + _SMALL))
            per_image.append(bleu ** (1.0 / (k + 1)) * brevity)
        corpus, total = [], 1.0
        for k in range(ORDERS):
            total *= float(int(correct[k].sum()) + _TINY) / (int(guess[k].sum()) + _SMALL)
            corpus.append(total ** (1.0 / (k + 1)))
        ratio_all = (int(test_len.sum()) + _TINY) / (int(closest.sum()) + _SMALL)
        if ratio_all < 1:
            corpus = [s * float(np.exp(1 - 1 / ratio_all)) for s in corpus]
        return corpus, per_image

    def _max_counts(self, refs: sparse.csr_matrix) -> sparse.csr_matrix:
        """(image x n-gram): the largest count of each n-gram in any of the image's references."""
        coo = refs.tocoo()
        width = refs.shape[1]
        keys = self._ref_image[coo.row] * width + coo.col
        unique, slot = np.unique(keys, return_inverse=True)
        best = np.zeros(len(unique))
        np.maximum.at(best, slot, coo.data)
        return _csr((best, (unique // width, unique % width)), shape=(len(self._keys), width))

    def _cider(
        self, counts: list[tuple[sparse.csr_matrix, sparse.csr_matrix]], test_len: np.ndarray
    ) -> np.ndarray:
        image = self._ref_image
        n_images = len(self._keys)
        log_images = np.log(float(n_images))
        # Length is pycocoevalcap's: the number of bigrams.
        delta = np.maximum(test_len - 1, 0)[image] - np.maximum(self._refs.lengths - 1, 0)
        penalty = np.exp(-(delta.astype(float) ** 2) / (2 * SIGMA**2))  # (R,)
        owner = _csr(
            (np.ones(len(image)), (image, np.arange(len(image)))), shape=(n_images, len(image))
        )
        total = np.zeros(len(image))
        for refs, hyp in counts:
            present = refs.copy()
            present.data[:] = 1.0
            in_image = owner @ present  # (I, G): how many of an image's refs have the n-gram
            df = np.asarray((in_image > 0).sum(axis=0)).ravel()
            idf = log_images - np.log(np.maximum(1.0, df))
            ref_vec, hyp_vec = refs.copy(), hyp.copy()
            ref_vec.data *= idf[ref_vec.indices]
            hyp_vec.data *= idf[hyp_vec.indices]
            ref_norm = np.sqrt(np.bincount(_row_of_entries(ref_vec), ref_vec.data**2, len(image)))
            hyp_norm = np.sqrt(np.bincount(_row_of_entries(hyp_vec), hyp_vec.data**2, n_images))
            aligned = hyp_vec[image]  # (R, G): each reference's hypothesis
            val = np.asarray(aligned.minimum(ref_vec).multiply(ref_vec).sum(axis=1)).ravel()
            norms = hyp_norm[image] * ref_norm
            val = np.where(norms != 0, val / np.where(norms != 0, norms, 1.0), val)
            total += val * penalty
        per_image = np.bincount(image, total, n_images) / ORDERS / self._per_image * 10.0
        return per_image


def fast_scores(
    predictions: Mapping[Hashable, str], references: Mapping[Hashable, Sequence[str]]
) -> dict[str, float]:
    """Corpus BLEU-1..4 and CIDEr of tokenised predictions against tokenised references."""
    corpus, _ = ReferenceIndex(references).score(predictions)
    return corpus
