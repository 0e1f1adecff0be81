"""Greedy and beam search on CUDA: the same captions as on the CPU, and their speed.

The default decoder (``soft_attention`` at params.yaml's dims) with random weights, its output
layer scaled up so that next-word distributions are peaked as a trained model's are (at random
init they are nearly flat and beams tie within float rounding), on random 7x7x1280 features.
In fp32, CUDA must give the CPU's captions (a difference must be a tie: scores within 1e-3);
then both searches run on CUDA in the precision that ``common.precision: auto`` resolves to
here, as the evaluate stage decodes, with finite scores.

    python -m gpu_check.decode [--images 256]
"""

from __future__ import annotations

import argparse
import math
import sys
import time

import torch
from benchmarks.machine import device_line, synchronize

from captioning.config import EvaluateConfig, TrainConfig
from captioning.decoding.search import Hypothesis, beam_search, greedy_search
from captioning.devices import autocast, resolve_precision
from captioning.models import build_decoder

START, END, VOCAB = 1, 2, 10_000
COMPARED = 64  # images decoded on both devices (the CPU's share of the time)
TIE = 1e-3  # a caption may differ only where two scores are this close


def search(decoder, features: torch.Tensor, beam: int, max_length: int) -> list[Hypothesis]:
    if beam == 1:
        return greedy_search(decoder, features, start_id=START, end_id=END, max_length=max_length)
    return beam_search(
        decoder, features, start_id=START, end_id=END, max_length=max_length, beam_size=beam
    )


def differing(a: list[Hypothesis], b: list[Hypothesis]) -> tuple[int, list[str]]:
    """How many captions differ, and those that differ by more than a tie."""
    differ = [i for i, (x, y) in enumerate(zip(a, b, strict=True)) if x.tokens != y.tokens]
    return len(differ), [
        f"image {i}: scores {a[i].score:.5f} vs {b[i].score:.5f}"
        for i in differ
        if abs(a[i].score - b[i].score) > TIE
    ]


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--images", type=int, default=256)
    parser.add_argument("--device", default="cuda", help="another device: to try the script")
    args = parser.parse_args()
    device = torch.device(args.device)
    train, evaluate = TrainConfig(), EvaluateConfig()
    torch.manual_seed(0)
    cpu_decoder = build_decoder(
        "soft_attention", train.model, vocab_size=VOCAB, feature_dim=1280, num_locations=49
    ).eval()
    with torch.no_grad():
        cpu_decoder.out.weight.mul_(20.0)
        cpu_decoder.out.bias[END] = 2.0  # some captions end early (seen: 12 to 24 words)
    decoder = build_decoder(
        "soft_attention", train.model, vocab_size=VOCAB, feature_dim=1280, num_locations=49
    )
    decoder.load_state_dict(cpu_decoder.state_dict())
    decoder = decoder.to(device).eval()
    features = torch.randn(args.images, 49, 1280).relu().half()  # the cache's float16
    on_gpu = features.to(device)
    precision = resolve_precision("auto", device)
    max_length, problems = evaluate.max_length, []
    compared = min(COMPARED, args.images)
    print(
        f"soft_attention, vocab {VOCAB}, {args.images} images of 49x1280, max {max_length} "
        f"words; {device_line(device)}; auto precision here: {precision}"
    )
    for beam in (1, evaluate.beam_size):
        name = "greedy" if beam == 1 else f"beam {beam}"
        on_cpu = search(cpu_decoder, features[:compared], beam, max_length)
        on_cuda = search(decoder, on_gpu[:compared], beam, max_length)
        count, not_ties = differing(on_cpu, on_cuda)
        print(
            f"{name}, fp32: {device.type} = CPU for {compared - count}/{compared} captions (rest ties)"
        )
        problems += [f"{name}, fp32, CUDA vs CPU, {line}" for line in not_ties]

        search(decoder, on_gpu[:8], beam, max_length)  # warm-up
        synchronize(device)
        started = time.perf_counter()
        with autocast(device, precision):
            results = search(decoder, on_gpu, beam, max_length)
        seconds = time.perf_counter() - started  # the results are on the host: synchronised
        words = sum(len(h.tokens) for h in results) / len(results)
        print(
            f"{name}, {precision}: {args.images / seconds:.0f} captions/s, "
            f"{words:.1f} words per caption"
        )
        if not all(math.isfinite(h.score) for h in results):
            problems.append(f"{name}, {precision}: a score is not finite")
        if any(len(h.tokens) > max_length for h in results):
            problems.append(f"{name}, {precision}: a caption is longer than {max_length} words")
    for problem in problems:
        print(f"FAILED {problem}")
    if problems:
        return 1
    print(f"greedy and beam {evaluate.beam_size}: CUDA gives the CPU's captions; {precision} runs")
    return 0


if __name__ == "__main__":
    sys.exit(main())
