"""Training steps on CUDA at the default's feature shape, in fp32, bf16 and fp16 + GradScaler.

The default decoder (``soft_attention`` at params.yaml's ``train.model``) on EfficientNet-Lite0's
7x7x1280 features, a COCO-sized vocabulary (10,000 words), the loop's own step: the objective
under ``devices.autocast``, then ``loop.optimizer_step`` with ``loop.grad_scaler`` (AdamW,
warmup + cosine, clipping). Each precision is forced, whatever ``auto`` would resolve to here,
and starts from the same weights on the same few batches (random features, Zipf-distributed
words), which it learns: the loss must stay finite and fall. fp16 must run with the scaler
enabled and end with a finite scale.

    python -m gpu_check.train_precision [--steps 40]
"""

from __future__ import annotations

import argparse
import copy
import math
import statistics
import sys
import time

import torch
from benchmarks.machine import device_line, synchronize

from captioning.config import TrainConfig
from captioning.devices import autocast
from captioning.models import build_decoder
from captioning.training.distributed import DistContext
from captioning.training.loop import grad_scaler, optimizer_step
from captioning.training.objectives import TeacherForcing
from captioning.training.schedules import warmup_cosine
from captioning.training.sources import Batch

LOCATIONS, CHANNELS, VOCAB, WORDS = 49, 1280, 10_000, 20
BATCHES = 4  # distinct batches, cycled: learnable in a few dozen steps
# The loss must fall by this much: mean of the last 5 steps against the first 5.
MIN_DROP = 0.2


def make_batches(cfg: TrainConfig, device: torch.device) -> list[Batch]:
    generator = torch.Generator().manual_seed(0)
    ranks = torch.arange(1, VOCAB - 3, dtype=torch.float64)
    zipf = 1.0 / ranks  # word frequencies as in text: a few words most of the time
    batches = []
    for _ in range(BATCHES):
        features = torch.randn(cfg.batch_size, LOCATIONS, CHANNELS, generator=generator).relu()
        words = torch.multinomial(zipf, cfg.batch_size * WORDS, True, generator=generator) + 4
        captions = torch.cat(
            [torch.ones(cfg.batch_size, 1, dtype=torch.long), words.view(cfg.batch_size, WORDS)],
            dim=1,
        )  # <start> = 1, words from 4 on (0-3: the specials)
        batches.append(
            Batch(
                captions.to(device),
                torch.arange(cfg.batch_size, device=device),
                features.half().to(device),  # the cache's float16
            )
        )
    return batches


def train(
    initial: torch.nn.Module,
    batches: list[Batch],
    cfg: TrainConfig,
    precision: str,
    steps: int,
    device: torch.device,
) -> tuple[list[float], float, torch.amp.GradScaler]:
    """``steps`` steps from ``initial``'s weights: the losses, steps/s and the scaler."""
    torch.manual_seed(1)  # the same dropout draws order in every precision
    decoder = copy.deepcopy(initial).to(device).train()
    trained = list(decoder.parameters())
    optimizer = torch.optim.AdamW(trained, lr=cfg.lr, weight_decay=cfg.weight_decay)
    scheduler = torch.optim.lr_scheduler.LambdaLR(optimizer, warmup_cosine(5, steps * 4))
    scaler = grad_scaler(device, precision)
    objective = TeacherForcing(cfg.scheduled_sampling)
    ctx = DistContext(0, 1, device)
    losses = []
    synchronize(device)
    started = time.perf_counter()
    for step in range(steps):
        with autocast(device, precision):
            loss = objective(decoder, batches[step % len(batches)], step, ctx).loss
        optimizer_step(loss, trained, optimizer, scheduler, scaler, cfg.grad_clip)
        losses.append(loss.detach())
    synchronize(device)
    rate = steps / (time.perf_counter() - started)
    return [float(x) for x in losses], rate, scaler


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--steps", type=int, default=40)
    parser.add_argument("--device", default="cuda", help="another device: to try the script")
    args = parser.parse_args()
    device = torch.device(args.device)
    cfg = TrainConfig()  # params.yaml's defaults (tests/unit/test_config.py holds them equal)
    torch.manual_seed(0)
    initial = build_decoder(
        "soft_attention", cfg.model, vocab_size=VOCAB, feature_dim=CHANNELS, num_locations=LOCATIONS
    )
    batches = make_batches(cfg, device)
    print(
        f"soft_attention, {LOCATIONS} locations x {CHANNELS} channels, vocab {VOCAB}, "
        f"batch {cfg.batch_size} x {WORDS} words, {args.steps} steps, lr {cfg.lr}, "
        f"{device_line(device)}"
    )
    problems = []
    for precision in ("fp32", "bf16", "fp16"):
        losses, rate, scaler = train(initial, batches, cfg, precision, args.steps, device)
        first, last = statistics.mean(losses[:5]), statistics.mean(losses[-5:])
        scale = scaler.get_scale() if scaler.is_enabled() else None
        print(
            f"{precision}: loss {losses[0]:.3f} -> {losses[-1]:.3f} (first 5 {first:.3f}, "
            f"last 5 {last:.3f}), {rate:.1f} steps/s"
            + (f", GradScaler scale {scale:g}" if scale is not None else ", no GradScaler")
        )
        if not all(math.isfinite(x) for x in losses):
            problems.append(f"{precision}: a loss is not finite: {losses}")
        elif last > first * (1 - MIN_DROP):
            problems.append(
                f"{precision}: the loss fell {first:.3f} -> {last:.3f}, < {MIN_DROP:.0%}"
            )
        if (precision == "fp16") != scaler.is_enabled():
            problems.append(f"{precision}: GradScaler enabled={scaler.is_enabled()}")
        if scale is not None and not 0 < scale < float("inf"):
            problems.append(f"{precision}: GradScaler scale {scale}")
    for problem in problems:
        print(f"FAILED {problem}")
    if problems:
        return 1
    print("fp32, bf16 and fp16 + GradScaler: losses finite and falling")
    return 0


if __name__ == "__main__":
    sys.exit(main())
