"""Soft-attention decoder training steps on the CPU: attention_dim 256 vs 128.

Most of a CPU training step of the default decoder is the attention energy,
tanh(W_f f + W_h h) over every (caption, location, attention unit) at every time step, and its
backward. Halving the attention width halves that work. Both variants train on the same random
7x7x1280 float16 features and captions of the default shapes length; CPU time (process time,
steadier than wall time on a shared machine) and wall time per step are printed, and the ratio.

    python benchmarks/attention_width.py [--batch 64] [--steps 12] [--length 16]
"""

from __future__ import annotations

import argparse
import dataclasses
import time

from captioning import runtime

runtime.setup()

import torch  # noqa: E402

from captioning.config import DecoderConfig  # noqa: E402
from captioning.models import build_decoder  # noqa: E402
from captioning.training.objectives import caption_loss  # noqa: E402
from machine import machine_line  # noqa: E402

VOCAB, LOCATIONS, CHANNELS = 31, 49, 1280


def seconds_per_step(
    attention_dim: int, batch: int, steps: int, length: int
) -> tuple[float, float]:
    """(CPU seconds, wall seconds) per training step, after two warm-up steps."""
    torch.manual_seed(0)
    cfg = dataclasses.replace(DecoderConfig(), attention_dim=attention_dim, attend_with_word=True)
    decoder = build_decoder(
        "soft_attention", cfg, vocab_size=VOCAB, feature_dim=CHANNELS, num_locations=LOCATIONS
    )
    optimizer = torch.optim.AdamW(decoder.parameters(), lr=1e-3)
    features = torch.randn(batch, LOCATIONS, CHANNELS).relu().half()
    captions = torch.randint(4, VOCAB, (batch, length))
    captions[:, 0] = 1

    def step() -> None:
        loss = caption_loss(decoder, features, captions)
        optimizer.zero_grad(set_to_none=True)
        loss.backward()
        optimizer.step()

    for _ in range(2):
        step()
    cpu, wall = time.process_time(), time.perf_counter()
    for _ in range(steps):
        step()
    return (time.process_time() - cpu) / steps, (time.perf_counter() - wall) / steps


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--batch", type=int, default=64)
    parser.add_argument("--steps", type=int, default=12)
    parser.add_argument("--length", type=int, default=16, help="tokens per caption")
    args = parser.parse_args()
    results = {}
    for width in (256, 128):
        cpu, wall = seconds_per_step(width, args.batch, args.steps, args.length)
        results[width] = cpu
        print(f"attention_dim {width}: {cpu * 1000:.0f} ms CPU, {wall * 1000:.0f} ms wall per step")
    print(machine_line(torch.get_num_threads()))
    print(f"ratio (CPU time, 256 / 128): {results[256] / results[128]:.2f}")


if __name__ == "__main__":
    main()
