"""The transformer decoder's key/value cache: greedy and beam (k = 5) search with the cache vs
recomputing the whole prefix at every step.

The transformer at the dims of params.yaml (train.model.transformer), random weights, on random
7x7x1280 features (the default encoder's grid); <end> is made impossible so every caption runs to
``--max-length`` words and both ways do the same number of steps, and the output layer is scaled
up so that next-word distributions are peaked as a trained model's are (no near-ties). The
recomputing way keeps the grid's keys and values of ``init_state`` (that work is per image
either way) but feeds each step the whole prefix through ``recur_caption``, the teacher-forced
pass, and reads its last word: what a decoder without a cache does. Asserts both give the same
captions; prints captions/s for each and the ratio, per search.

    python benchmarks/transformer_cache.py [--images 200] [--beam 5] [--batch-size 100]
        [--max-length 20] [--threads N]
"""

from __future__ import annotations

import argparse
import time

from captioning import runtime

runtime.setup()

import torch  # noqa: E402

from captioning.config import TrainConfig, load_section  # noqa: E402
from captioning.data.sources.shapes import VOCABULARY  # noqa: E402
from captioning.data.vocab import SPECIALS  # noqa: E402
from captioning.decoding.search import beam_search, greedy_search  # noqa: E402
from captioning.models.base import Decoder, State  # noqa: E402
from captioning.models.transformer import TransformerDecoder  # noqa: E402
from machine import machine_line  # noqa: E402

START, END = 1, 2
DEFAULT_VOCAB = len(SPECIALS) + len(VOCABULARY)  # what the default pipeline trains on


class RecomputedPrefix(Decoder):
    """The same transformer without its cache: every step runs the whole prefix again."""

    def __init__(self, cached: TransformerDecoder) -> None:
        super().__init__()
        self.cached = cached
        self.shared_state = cached.shared_state

    def init_state(self, features: torch.Tensor) -> State:
        state = self.cached.init_state(features)  # the grid's keys/values, empty word caches
        return {**state, "prefix": features.new_zeros(features.size(0), 0, dtype=torch.long)}

    def step(self, tokens: torch.Tensor, state: State) -> tuple[torch.Tensor, State, torch.Tensor]:
        prefix = torch.cat([state["prefix"], tokens.unsqueeze(1)], dim=1)  # (R, t + 1)
        words = {k: v for k, v in state.items() if k != "prefix"}  # empty caches: from word 0
        outputs, extras = self.cached.recur_caption(self.cached.embed(prefix), words)
        logits = self.cached.project(outputs[:, -1])  # (R, V)
        return logits, {**state, "prefix": prefix}, extras[-1]


def timed(search, decoder: Decoder, features: torch.Tensor, batch: int, **kwargs):
    hyps, seconds = [], 0.0
    for i in range(0, len(features), batch):
        start = time.perf_counter()
        hyps.extend(search(decoder, features[i : i + batch], **kwargs))
        seconds += time.perf_counter() - start
    return hyps, seconds


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--params", default="params.yaml")
    parser.add_argument("--images", type=int, default=200)
    parser.add_argument("--beam", type=int, default=5)
    parser.add_argument("--batch-size", type=int, default=100, help="images per search call")
    parser.add_argument("--vocab", type=int, default=DEFAULT_VOCAB)
    parser.add_argument("--max-length", type=int, default=20)
    parser.add_argument("--logit-scale", type=float, default=20.0)
    parser.add_argument("--threads", type=int, default=0, help="torch threads (0 = default)")
    args = parser.parse_args()

    cfg = load_section(args.params, "train", TrainConfig).model
    if args.threads:
        torch.set_num_threads(args.threads)
    torch.manual_seed(0)
    cached = TransformerDecoder(cfg, args.vocab, 1280, 49).eval()
    with torch.no_grad():
        cached.out.weight.mul_(args.logit_scale)
        cached.out.bias[END] = -1e4  # never ends early: always max_length words
    recomputed = RecomputedPrefix(cached).eval()
    features = torch.randn(args.images, 49, 1280).relu()
    common = dict(start_id=START, end_id=END, max_length=args.max_length)
    searches = {
        "greedy": (greedy_search, common),
        f"beam {args.beam}": (beam_search, {**common, "beam_size": args.beam}),
    }
    t = cfg.transformer
    print(
        f"transformer: {t.layers} layers, d_model {t.d_model}, {t.heads} heads, ffn {t.ffn_dim}; "
        f"{args.images} images of 49x1280, {args.max_length} words, vocab {args.vocab}, "
        f"{args.batch_size} images per call"
    )
    print(machine_line(torch.get_num_threads()))
    for name, (search, kwargs) in searches.items():
        search(cached, features[:4], **kwargs)  # warm-up
        # Cached and recomputed alternate in halves, so a change of load hits both.
        half = args.images // 2
        a, a_s = timed(search, cached, features[:half], args.batch_size, **kwargs)
        b, b_s = timed(search, recomputed, features[:half], args.batch_size, **kwargs)
        b2, b2_s = timed(search, recomputed, features[half:], args.batch_size, **kwargs)
        a2, a2_s = timed(search, cached, features[half:], args.batch_size, **kwargs)
        with_cache, without = a + a2, b + b2
        cache_s, recompute_s = a_s + a2_s, b_s + b2_s
        same = sum(x.tokens == y.tokens for x, y in zip(with_cache, without, strict=True))
        assert same == args.images, f"{name}: {args.images - same} captions differ"
        assert all(len(h.tokens) == args.max_length for h in with_cache)
        print(
            f"{name:>7}: cache {args.images / cache_s:8.1f} captions/s, recomputed prefix "
            f"{args.images / recompute_s:8.1f} captions/s, ratio {recompute_s / cache_s:.2f}x "
            f"(same captions: {same}/{args.images})"
        )


if __name__ == "__main__":
    main()
