"""Beam search (k = 5): many images per call vs one image at a time.

The soft_attention decoder at the dims of params.yaml (train.model), random weights, on random
7x7x1280 features; <end> is made impossible so every caption runs to ``--max-length`` words and
both ways do the same number of steps. The output layer is scaled up so that next-word
distributions are peaked as a trained model's are: at random init they are nearly uniform and
many beams tie to within float rounding, which a different batch size can break the other way.
Asserts both give the same captions (an image whose captions differ must be such a tie: both
scores within 1e-4); prints captions/s for each and the ratio. Also timed, interleaved with them:
the decoder's steps alone on the batched rows (no search), the most batched beam search can
reach, so the ratio's ceiling on this machine is printed beside it.

    python benchmarks/beam_search.py [--images 500] [--beam 5] [--batch-size 100] [--vocab N]
        [--threads N] [--device cuda]
"""

from __future__ import annotations

import argparse
import time

from captioning import runtime

runtime.setup()

import torch  # noqa: E402
from tqdm import tqdm  # noqa: E402

from captioning.config import TrainConfig, load_section  # noqa: E402
from captioning.data.sources.shapes import VOCABULARY  # noqa: E402
from captioning.data.vocab import SPECIALS  # noqa: E402
from captioning.decoding.search import beam_search  # noqa: E402
from captioning.models import Decoder, build_decoder  # noqa: E402
from machine import device_line, machine_line, synchronize  # noqa: E402

START, END = 1, 2
DEFAULT_VOCAB = len(SPECIALS) + len(VOCABULARY)  # what the default pipeline trains on


@torch.no_grad()
def steps_alone(decoder: Decoder, features: torch.Tensor, beam: int, steps: int) -> None:
    """The decoder's work in a beam search of ``features`` without the search: ``steps`` steps
    on beam rows, per-image state shared as beam search shares it."""
    state = decoder.init_state(features)
    rows = torch.arange(len(features), device=features.device).repeat_interleave(beam)
    state = {k: v if k in decoder.shared_state else v[rows] for k, v in state.items()}
    tokens = torch.full((len(rows),), START, device=features.device)
    for _ in range(steps):
        logits, state, _ = decoder.step(tokens, state)
        tokens = logits.argmax(dim=-1)
    synchronize(features.device)  # the searches read their results back: so must this


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--params", default="params.yaml")
    parser.add_argument("--images", type=int, default=500)
    parser.add_argument("--beam", type=int, default=5)
    parser.add_argument("--batch-size", type=int, default=100, help="images per batched call")
    parser.add_argument(
        "--vocab", type=int, default=DEFAULT_VOCAB, help="default: the shapes dataset's words"
    )
    parser.add_argument("--max-length", type=int, default=20)
    parser.add_argument("--logit-scale", type=float, default=20.0)
    parser.add_argument("--threads", type=int, default=0, help="torch threads (0 = default)")
    parser.add_argument("--device", default="cpu", help="cpu, cuda or cuda:N")
    args = parser.parse_args()
    device = torch.device(args.device)

    cfg = load_section(args.params, "train", TrainConfig)
    if args.threads:
        torch.set_num_threads(args.threads)
    torch.manual_seed(0)
    decoder = build_decoder(
        "soft_attention", cfg.model, vocab_size=args.vocab, feature_dim=1280, num_locations=49
    ).eval()
    with torch.no_grad():
        decoder.out.weight.mul_(args.logit_scale)
        decoder.out.bias[END] = -1e4  # never ends early: always max_length words
    decoder.to(device)
    features = torch.randn(args.images, 49, 1280).relu().to(device)
    search = dict(start_id=START, end_id=END, max_length=args.max_length, beam_size=args.beam)

    beam_search(decoder, features[: args.batch_size], **search)  # warm-up
    # Interleaved chunk by chunk, so that a change in the load of a shared machine hits both.
    batched, single = [], []
    batched_s = single_s = steps_s = 0.0
    for i in tqdm(range(0, args.images, args.batch_size), desc="chunks", unit="chunk"):
        chunk = features[i : i + args.batch_size]
        start = time.perf_counter()
        batched.extend(beam_search(decoder, chunk, **search))
        batched_s += time.perf_counter() - start
        start = time.perf_counter()
        for j in range(len(chunk)):
            single.extend(beam_search(decoder, chunk[j : j + 1], **search))
        single_s += time.perf_counter() - start
        start = time.perf_counter()
        steps_alone(decoder, chunk, args.beam, args.max_length + 1)
        steps_s += time.perf_counter() - start

    ties = [i for i, (b, s) in enumerate(zip(batched, single, strict=True)) if b.tokens != s.tokens]
    for i in ties:
        gap = abs(batched[i].score - single[i].score)
        assert gap < 1e-4, f"image {i}: captions differ, scores {gap:.2g} apart"
    assert all(len(h.tokens) == args.max_length for h in batched)
    print(
        f"beam {args.beam}, {args.images} images, {args.max_length} words, "
        f"dims {cfg.model.hidden_dim}, vocab {args.vocab}, {torch.get_num_threads()} threads"
    )
    print(f"batched ({args.batch_size} images per call): {args.images / batched_s:8.1f} captions/s")
    print(f"one image at a time:                {args.images / single_s:8.1f} captions/s")
    print(f"decoder steps alone, batched:       {args.images / steps_s:8.1f} captions/s")
    print(machine_line(torch.get_num_threads()))
    print(device_line(device))
    print(
        f"ratio: {single_s / batched_s:.1f}x (ceiling, the steps alone: {single_s / steps_s:.1f}x)"
    )
    print(f"same captions: {args.images - len(ties)}/{args.images} (the rest: ties within 1e-4)")


if __name__ == "__main__":
    main()
