"""Validation metrics: captioning.metrics.fast vs pycocoevalcap's Bleu(4) + Cider.

Same pre-tokenised captions both ways (5,000 images x 5 references by default, shapes-style and
COCO-like sentences of 2-20 words), same scores asserted (1e-6), times and ratios printed: once
with the references indexed inside the timing (a one-off evaluation), once with the index built
beforehand (validation during training: same references every epoch).

    python benchmarks/fast_metrics.py [--images 5000] [--refs 5]
"""

from __future__ import annotations

import argparse
import random
import time

from pycocoevalcap.bleu.bleu import Bleu
from pycocoevalcap.cider.cider import Cider

from captioning.metrics.fast import ReferenceIndex
from machine import machine_line

COLOURS = ["red", "green", "blue", "yellow", "white", "purple", "orange", "black"]
SHAPES = ["circle", "square", "triangle", "star", "cross", "heart"]
NOUNS = ["man", "woman", "dog", "cat", "bus", "train", "plate", "table", "street", "field"]
VERBS = ["sitting on", "standing next to", "riding", "walking down", "holding", "looking at"]


def caption(rng: random.Random) -> str:
    if rng.random() < 0.5:
        objs = [
            f"a {rng.choice(['small ', 'large ', ''])}{rng.choice(COLOURS)} {rng.choice(SHAPES)}"
            for _ in range(rng.randint(1, 3))
        ]
        return ("there is " if rng.random() < 0.3 else "") + " and ".join(objs)
    words = ["a", rng.choice(NOUNS), rng.choice(VERBS), "a", rng.choice(NOUNS)]
    if rng.random() < 0.5:
        words += ["in", "the", rng.choice(NOUNS), "with", "a", rng.choice(NOUNS)]
    return " ".join(words)


def corpus(images: int, refs: int, seed: int = 0) -> tuple[dict, dict]:
    rng = random.Random(seed)
    references = {i: [caption(rng) for _ in range(refs)] for i in range(images)}
    predictions = {}
    for i, r in references.items():
        words = rng.choice(r).split()
        if rng.random() < 0.5:
            words[rng.randrange(len(words))] = rng.choice(COLOURS + NOUNS)
        predictions[i] = " ".join(words)
    return predictions, references


def pycocoevalcap_scores(predictions: dict, references: dict) -> dict[str, float]:
    gts = {k: list(v) for k, v in references.items()}
    res = {k: [predictions[k]] for k in references}
    bleu, _ = Bleu(4).compute_score(gts, res, verbose=0)
    cider, _ = Cider().compute_score(gts, res)
    return {f"BLEU-{k + 1}": bleu[k] for k in range(4)} | {"CIDEr": float(cider)}


def best_of(fn, repeat: int) -> tuple[float, object]:
    best, result = float("inf"), None
    for _ in range(repeat):
        start = time.perf_counter()
        result = fn()
        best = min(best, time.perf_counter() - start)
    return best, result


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--images", type=int, default=5000)
    parser.add_argument("--refs", type=int, default=5)
    parser.add_argument("--repeat", type=int, default=3)
    args = parser.parse_args()
    predictions, references = corpus(args.images, args.refs)

    slow, expected = best_of(lambda: pycocoevalcap_scores(predictions, references), args.repeat)
    fast, (got, _) = best_of(lambda: ReferenceIndex(references).score(predictions), args.repeat)
    index = ReferenceIndex(references)
    indexed, (again, _) = best_of(lambda: index.score(predictions), args.repeat)
    for name, value in expected.items():
        assert abs(got[name] - value) < 1e-6 and abs(again[name] - value) < 1e-6, name
    print(f"{args.images} captions x {args.refs} references, scores equal: {expected}")
    print(f"pycocoevalcap Bleu(4) + Cider : {slow:6.2f} s")
    print(machine_line())
    print(f"fast, references indexed too  : {fast:6.2f} s   ratio {slow / fast:5.1f}x")
    print(f"fast, references pre-indexed  : {indexed:6.2f} s   ratio {slow / indexed:5.1f}x")


if __name__ == "__main__":
    main()
