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


def _remaining(lengths: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """(T,) the sentence of each position, and the words from it to its sentence's end."""
    sentence = np.repeat(np.arange(len(lengths)), lengths)
    remaining = np.repeat(lengths, lengths) - (
        np.arange(len(sentence)) - np.repeat(np.cumsum(lengths) - lengths, lengths)
    )
    return sentence, remaining


def _ngram_ids(encoded: _Encoded, vocab_size: int) -> list[tuple[np.ndarray, int, np.ndarray]]:
    """Per order 1..4: the dense id of the n-gram starting at each position (-1 where none
    does), the number of ids, and the sorted keys they number (an n-gram's key is its
    (n-1)-gram prefix's id times ``vocab_size`` plus its last word; order 1: the word)."""
    _, remaining = _remaining(encoded.lengths)
    ids = encoded.tokens  # (T,) id of the n-gram starting at each position (order 1: the word)
    out = [(np.where(remaining >= 1, ids, -1), vocab_size, np.arange(vocab_size))]
    for k in range(2, ORDERS + 1):
        # An n-gram is its (n-1)-gram prefix followed by one word: a unique pair of ids.
        starts = np.flatnonzero(remaining >= k)
        keys = ids[starts] * vocab_size + encoded.tokens[starts + k - 1]
        unique, dense = np.unique(keys, return_inverse=True)
        ids = np.full(len(remaining), -1, dtype=np.int64)
        ids[starts] = dense
        out.append((ids, len(unique), unique))
    return out


def _count_matrix(ids: np.ndarray, lengths: np.ndarray, width: int) -> sparse.csr_matrix:
    """(sentence x n-gram) counts of the n-grams ``ids`` at each position (-1: none)."""
    sentence, _ = _remaining(lengths)
    valid = ids >= 0
    rows, cols = sentence[valid], ids[valid]
    counts = _csr((np.ones(len(rows)), (rows, cols)), shape=(len(lengths), max(width, 1)))
    counts.sum_duplicates()
    return counts


def ngram_counts(encoded: _Encoded, vocab_size: int) -> list[sparse.csr_matrix]:
    """Per order 1..4, the (sentence x n-gram) count matrix; n-gram ids are dense per order."""
    return [
        _count_matrix(ids, encoded.lengths, width)
        for ids, width, _ in _ngram_ids(encoded, vocab_size)
    ]


def _tf_idf(counts: sparse.csr_matrix, idf: np.ndarray) -> tuple[sparse.csr_matrix, np.ndarray]:
    """Counts weighted by idf, and each row's norm."""
    vec = counts.copy()
    vec.data *= idf[vec.indices]
    return vec, np.sqrt(np.bincount(_row_of_entries(vec), vec.data**2, vec.shape[0]))


def _cider_d(
    refs: list[tuple[sparse.csr_matrix, np.ndarray]],
    hyps: list[tuple[sparse.csr_matrix, np.ndarray]],
    ref_lengths: np.ndarray,
    hyp_lengths: np.ndarray,
    pair_ref: np.ndarray,
    pair_hyp: np.ndarray,
) -> np.ndarray:
    """Per pair (reference ``pair_ref[p]``, hypothesis ``pair_hyp[p]``): CIDEr-D's clipped
    cosine per order with its length penalty (on bigram counts), summed over the orders, from
    each order's tf-idf vectors and norms (the same columns for both)."""
    delta = np.maximum(hyp_lengths - 1, 0)[pair_hyp] - np.maximum(ref_lengths - 1, 0)[pair_ref]
    penalty = np.exp(-(delta.astype(float) ** 2) / (2 * SIGMA**2))
    total = np.zeros(len(pair_ref))
    for (ref_vec, ref_norm), (hyp_vec, hyp_norm) in zip(refs, hyps, strict=True):
        ref_rows, hyp_rows = ref_vec[pair_ref], hyp_vec[pair_hyp]
        val = np.asarray(hyp_rows.minimum(ref_rows).multiply(ref_rows).sum(axis=1)).ravel()
        norms = hyp_norm[pair_hyp] * ref_norm[pair_ref]
        val = np.where(norms != 0, val / np.where(norms != 0, norms, 1.0), val)
        total += val * penalty
    return total


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

    def _idf(self, refs: sparse.csr_matrix) -> np.ndarray:
        """log(#images) - log(max(1, df)): df counts the images whose references have it."""
        present = refs.copy()
        present.data[:] = 1.0
        in_image = self._owner() @ present  # (I, G): how many of an image's refs have it
        df = np.asarray((in_image > 0).sum(axis=0)).ravel()
        return np.log(float(len(self._keys))) - np.log(np.maximum(1.0, df))

    def _owner(self) -> sparse.csr_matrix:
        image = self._ref_image
        return _csr(
            (np.ones(len(image)), (image, np.arange(len(image)))),
            shape=(len(self._keys), len(image)),
        )

    def _cider(
        self, counts: list[tuple[sparse.csr_matrix, sparse.csr_matrix]], test_len: np.ndarray
    ) -> np.ndarray:
        """One hypothesis per image: each against all its image's references."""
        refs, hyps = [], []
        for ref_counts, hyp_counts in counts:
            idf = self._idf(ref_counts)
            refs.append(_tf_idf(ref_counts, idf))
            hyps.append(_tf_idf(hyp_counts, idf))
        image = self._ref_image
        pair = np.arange(len(image))
        total = _cider_d(refs, hyps, self._refs.lengths, test_len, pair, image)
        return np.bincount(image, total, len(self._keys)) / ORDERS / self._per_image * 10.0

    def sample_cider(self, keys: Sequence[Hashable], hypotheses: Sequence[str]) -> np.ndarray:
        """CIDEr-D of each hypothesis against the references of its image ``keys[i]`` (images
        may repeat, and need not all be there), with document frequencies over all the
        index's images: what ``score`` gives an image's caption, for a few sampled captions
        at a time (self-critical training's reward, the index built once on the training
        references). The references' n-grams and idf are computed on the first call."""
        tables = self._sample_tables()
        position = {key: i for i, key in enumerate(self._keys)}
        image = np.array([position[key] for key in keys], dtype=np.int64)
        vocab = dict(self._vocab)
        known = len(vocab)
        hyps = _encode(hypotheses, vocab)
        own = _ngram_ids(hyps, max(len(vocab), 1))  # every n-gram of the hypotheses, numbered
        _, remaining = _remaining(hyps.lengths)
        word = hyps.tokens
        ref_ids = np.where((remaining >= 1) & (word < known), word, -1)  # in the refs' numbers
        hyp_vectors = []
        for k, ((ref_vec, _, idf, ref_keys), (own_ids, own_width, _)) in enumerate(
            zip(tables, own, strict=True)
        ):
            if k > 0:  # an n-gram the references have: its prefix and last word are theirs
                starts = np.flatnonzero(remaining >= k + 1)
                prefix, last = ref_ids[starts], word[starts + k]
                keyed = (prefix >= 0) & (last < known)
                wanted = prefix * known + last
                slot = np.minimum(np.searchsorted(ref_keys, wanted), len(ref_keys) - 1)
                found = keyed & (ref_keys[slot] == wanted) if len(ref_keys) else keyed & False
                ref_ids = np.full(len(word), -1, dtype=np.int64)
                ref_ids[starts[found]] = slot[found]
            width = ref_vec.shape[1]
            # An n-gram no reference has (df 0: idf log(#images)) gets a column past theirs.
            columns = np.where(ref_ids >= 0, ref_ids, np.where(own_ids >= 0, width + own_ids, -1))
            counts = _count_matrix(columns, hyps.lengths, width + own_width)
            full_idf = np.concatenate([idf, np.full(own_width, np.log(float(len(self._keys))))])
            hyp_vec, hyp_norm = _tf_idf(counts, full_idf)
            # Past the references' columns a hypothesis matches nothing: only its norm needs them.
            hyp_vectors.append((hyp_vec[:, :width], hyp_norm))
        refs = [(ref_vec, ref_norm) for ref_vec, ref_norm, _, _ in tables]
        firsts = np.cumsum(self._per_image) - self._per_image
        n_refs = self._per_image[image]
        pair_hyp = np.repeat(np.arange(len(image)), n_refs)
        pair_ref = np.repeat(firsts[image] - np.cumsum(n_refs) + n_refs, n_refs) + np.arange(
            int(n_refs.sum())
        )
        total = _cider_d(refs, hyp_vectors, self._refs.lengths, hyps.lengths, pair_ref, pair_hyp)
        return np.bincount(pair_hyp, total, len(image)) / ORDERS / n_refs * 10.0

    def _sample_tables(self) -> list[tuple[sparse.csr_matrix, np.ndarray, np.ndarray, np.ndarray]]:
        """Per order: the references' tf-idf vectors and norms, the idf of their n-grams and the
        keys that number them (``_ngram_ids``)."""
        if getattr(self, "_tables", None) is None:
            tables = []
            for ids, width, keys in _ngram_ids(self._refs, max(len(self._vocab), 1)):
                counts = _count_matrix(ids, self._refs.lengths, width)
                idf = self._idf(counts)
                tables.append((*_tf_idf(counts, idf), idf, keys))
            self._tables = tables
        return self._tables


def fast_scores(
    predictions: Mapping[Hashable, str], references: Mapping[Hashable, Sequence[str]]
) -> dict[str, float]:
    """Corpus BLEU-1..4 and CIDEr of tokenised predictions against tokenised references."""
    corpus, _ = ReferenceIndex(references).score(predictions)
    return corpus
