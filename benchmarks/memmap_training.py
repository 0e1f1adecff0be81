"""Training from the feature cache file: memory that does not grow with the split, and the speed
of the old way, which loaded the whole train split into RAM.

Two measurements, each on a synthetic cache written by the features stage's own writer
(shards of 1,000 rows, then the Parquet index and meta.json), in a temporary directory removed
afterwards:

    python benchmarks/memmap_training.py large [--rows 40000] [--steps 40]
        ResNet-101-sized rows (14x14x2048 float16, 784 KiB each): 40,000 rows are 32 GB, more
        than this machine's 25 GB of RAM. A fresh process trains a small soft-attention decoder
        for ``--steps`` steps on it and computes the val loss; its peak resident memory
        (VmHWM) is printed beside the cache's size and the machine's RAM.

    python benchmarks/memmap_training.py speed [--rows 12000] [--steps 60] [--repeats 2]
        The default's cache (EfficientNet-Lite0, 7x7x1280, the shapes data's 12,000 train
        images) and the default decoder and batch (params.yaml). Tokens/s of training read from
        the file (``CachedFeatures``) and from the whole split in RAM (the old way, kept here),
        alternating, each run in its own process after the file was read once (page cache
        warm); the first 5 steps of each run are not timed. Prints each way's median, the
        ratio, their peak memory, and whether both saw the same losses (they must).

Each process's figures come back as one JSON line.
"""

from __future__ import annotations

import argparse
import json
import os
import resource
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
from collections.abc import Iterator
from pathlib import Path

from captioning.runtime import setup

setup()  # OMP_WAIT_POLICY=PASSIVE and the malloc setting, before torch starts its threads

import numpy as np  # noqa: E402
import torch  # noqa: E402

from captioning.config import DecoderConfig, TrainConfig, VocabConfig  # noqa: E402
from captioning.data.vocab import build_vocab  # noqa: E402
from captioning.devices import autocast, pin_memory, resolve_precision  # noqa: E402
from captioning.features.cache import FeatureCache, _SplitWriter  # noqa: E402
from captioning.features.encoders import get_encoder_spec  # noqa: E402
from captioning.features.loader import Shard  # noqa: E402
from captioning.io import write_json  # noqa: E402
from captioning.models import build_decoder  # noqa: E402
from captioning.training.batches import caption_batch, images_per_batch  # noqa: E402
from captioning.training.checkpoint import LoopState  # noqa: E402
from captioning.training.distributed import DistContext  # noqa: E402
from captioning.training.loop import grad_scaler, optimizer_step  # noqa: E402
from captioning.training.objectives import PAD_ID, TeacherForcing  # noqa: E402
from captioning.training.sources import Batch, CachedFeatures  # noqa: E402
from captioning.training.validation import BestSoFar  # noqa: E402
from machine import machine_line  # noqa: E402

SHARD_ROWS = 1000
WORDS = [
    "a",
    "the",
    "red",
    "green",
    "blue",
    "yellow",
    "big",
    "small",
    "circle",
    "square",
    "star",
    "triangle",
    "left",
    "right",
    "of",
    "above",
    "below",
    "and",
]
UNTIMED = 5  # first steps of a run: allocator and thread start-up
LARGE_VAL = 256  # val rows of the large cache


# --------------------------------------------------------------------------------------------
# The synthetic cache, written by the features stage's writer
# --------------------------------------------------------------------------------------------


def write_cache(out: Path, encoder: str, counts: dict[str, int], seed: int = 0) -> None:
    """Random ReLU-like float16 rows, three shapes-like captions an image, a third of the
    images with three objects (drawn twice per epoch, as the shapes data's hard scenes)."""
    spec = get_encoder_spec(encoder)
    rng = np.random.default_rng(seed)
    base = np.clip(rng.standard_normal((64, spec.locations, spec.channels), np.float32), 0, 6)
    blocks = [(base + k).astype(np.float16) for k in range(7)]  # rows differ from shard to shard
    out.mkdir(parents=True)
    for split, count in counts.items():
        shards, offset = [], 0
        while offset < count:
            keys = tuple(
                f"{split}{row:07d}" for row in range(offset, min(count, offset + SHARD_ROWS))
            )
            shards.append(Shard(Path(f"{split}-{len(shards):06d}.tar"), keys, offset, split))
            offset += len(keys)
        writer = _SplitWriter(out, split, shards, spec)
        for shard in shards:
            for start in range(0, len(shard.keys), len(base)):
                positions = range(start, min(len(shard.keys), start + len(base)))
                infos = [
                    (shard.url, p, shard.keys[p], record(shard.offset + p, rng)) for p in positions
                ]
                writer.add(shard, infos, blocks[shard.offset // SHARD_ROWS % 7][: len(infos)])
        writer.finish(out)
    identity = {k: getattr(spec, k) for k in ("input_size", "grid", "channels")}
    write_json(
        out / "meta.json", {"encoder": spec.name, **identity, "dtype": "float16", "splits": counts}
    )


def record(row: int, rng: np.random.Generator) -> dict:
    captions = [" ".join(rng.choice(WORDS, size=int(rng.integers(4, 12)))) for _ in range(3)]
    objects = [{"colour": "red", "shape": "circle"}] * (3 if row % 3 == 0 else 1)
    return {
        "image_id": row,
        "file_name": f"{row:07d}.jpg",
        "captions": captions,
        "objects": objects,
    }


# --------------------------------------------------------------------------------------------
# Training steps (one process per run)
# --------------------------------------------------------------------------------------------


class InRamFeatures(CachedFeatures):
    """The old way: the whole train split copied into RAM (pinned on CUDA) and indexed by each
    batch's rows in the training thread."""

    def open(self, vocab, cfg, ctx, seed) -> None:
        super().open(vocab, cfg, ctx, seed)
        train_x = torch.from_numpy(FeatureCache.open(self.features_dir, "train").load_in_memory())
        self.train_x = train_x.pin_memory() if pin_memory(ctx.device) else train_x

    def batches(self, state, rng) -> Iterator[Batch]:
        device = self.ctx.device
        for draws in state.batches[state.position :]:
            image_rows, captions, rows = caption_batch(
                self.train_set, self.ctx.shard(draws), PAD_ID
            )
            x = self.train_x[image_rows].to(device, non_blocking=True)
            yield Batch(
                captions.to(device, non_blocking=True), rows.to(device, non_blocking=True), x
            )


def train_steps(features: Path, way: str, cfg: TrainConfig, steps: int, validate: bool) -> dict:
    """``steps`` optimiser steps of the train loop's pieces on ``features``; tokens/s after
    the first UNTIMED steps, the losses, and the process's peak resident memory."""
    device = torch.device("cuda" if torch.cuda.is_available() else "cpu")
    ctx = DistContext(0, 1, device)
    train = FeatureCache.open(features, "train")
    vocab, _ = build_vocab([c for cs in train.captions for c in cs], VocabConfig(min_freq=1))
    del train
    torch.manual_seed(0)
    source = {"memmap": CachedFeatures, "in_ram": InRamFeatures}[way](features)
    source.open(vocab, cfg, ctx, seed=0)
    decoder = build_decoder(
        "soft_attention",
        cfg.model,
        vocab_size=len(vocab),
        feature_dim=source.feature_dim,
        num_locations=source.num_locations,
    ).to(device)
    trained = list(decoder.parameters())
    optimizer = torch.optim.AdamW(trained, lr=cfg.lr, weight_decay=cfg.weight_decay)
    scheduler = torch.optim.lr_scheduler.LambdaLR(optimizer, lambda step: 1.0)
    precision = resolve_precision("auto", device)
    scaler, objective = grad_scaler(device, precision), TeacherForcing(cfg.scheduled_sampling)
    rng = np.random.default_rng(0)
    state = LoopState(BestSoFar("CIDEr"))
    state.start_epoch(source.new_epoch(0, rng))
    losses, tokens, started = [], 0, 0.0
    decoder.train()
    batches = source.batches(state, rng)
    for batch in batches:
        if state.step == UNTIMED:
            if device.type == "cuda":
                torch.cuda.synchronize()
            started = time.perf_counter()
        with autocast(device, precision):
            step = objective(decoder, batch, state.step, ctx)
        optimizer_step(step.loss, trained, optimizer, scheduler, scaler, cfg.grad_clip)
        losses.append(step.loss.item())
        if state.step >= UNTIMED:
            tokens += int((batch.captions[:, 1:] != PAD_ID).sum())
        state.count_step(losses[-1], step.captions, step.sample_prob)
        if state.step == steps:
            break
    seconds = time.perf_counter() - started
    batches.close()  # stops the reader of the rest of the epoch
    val_loss = (
        source.validation("fp32").loss(decoder, images_per_batch(cfg), device) if validate else None
    )
    return {
        "way": way,
        "device": str(device),
        "tokens_per_s": tokens / seconds if tokens else 0.0,
        "steps": state.step,
        "seconds": seconds,
        "losses": losses,
        "val_loss": val_loss,
        "peak_rss_gb": peak_rss_gb(),
    }


def peak_rss_gb() -> float:
    """VmHWM, the process's peak resident set (ru_maxrss where /proc is absent)."""
    try:
        for line in Path("/proc/self/status").read_text().splitlines():
            if line.startswith("VmHWM:"):
                return int(line.split()[1]) / 1e6
    except OSError:
        pass
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1e6


def child(*args: str) -> dict:
    """Run a step of this script in a fresh process (its own peak memory); its JSON line."""
    done = subprocess.run(
        [sys.executable, __file__, *args], check=True, stdout=subprocess.PIPE, text=True
    )
    return json.loads(done.stdout.strip().splitlines()[-1])


def read_once(path: Path) -> None:
    """Read the file through the page cache (the warm case training sees after epoch 1)."""
    with open(path, "rb", buffering=0) as handle:
        while handle.read(64 << 20):
            pass


def gb(n_bytes: float) -> str:
    return f"{n_bytes / 1e9:.1f} GB"


def ram_bytes() -> int:
    return os.sysconf("SC_PAGE_SIZE") * os.sysconf("SC_PHYS_PAGES")


# --------------------------------------------------------------------------------------------
# The two measurements
# --------------------------------------------------------------------------------------------


def small_decoder() -> TrainConfig:
    dims = DecoderConfig(embed_dim=32, hidden_dim=32, attention_dim=16, feature_proj_dim=32)
    return TrainConfig(model=dims, batch_size=32, seq_per_image=1)


def large(args: argparse.Namespace, work: Path) -> None:
    spec = get_encoder_spec("resnet101")
    size = args.rows * spec.locations * spec.channels * 2
    free = shutil.disk_usage(work).free
    if size > 0.95 * free:
        sys.exit(f"{work}: {gb(free)} free, the cache needs {gb(size)}; pass a smaller --rows")
    cache = work / "features"
    started = time.perf_counter()
    child("write", str(cache), "resnet101", str(args.rows), str(LARGE_VAL))
    written = time.perf_counter() - started
    print(
        f"cache: {args.rows:,} rows of 14x14x2048 float16 = {gb(size)} in {written:.0f} s; RAM {gb(ram_bytes())}"
    )
    run = child("train", str(cache), "memmap", "small", str(args.steps), "validate")
    print(
        f"trained {run['steps']} steps (batch {small_decoder().batch_size}, small decoder, "
        f"{run['device']}): {run['tokens_per_s']:.0f} tokens/s, val loss {run['val_loss']:.3f} "
        f"over {LARGE_VAL} val images; peak RSS {run['peak_rss_gb']:.2f} GB"
    )
    print(machine_line(torch.get_num_threads()))


def speed(args: argparse.Namespace, work: Path) -> None:
    cache = work / "features"
    child("write", str(cache), "efficientnet_lite0", str(args.rows), "500")
    read_once(cache / "train.npy")
    runs: dict[str, list[dict]] = {"memmap": [], "in_ram": []}
    for _ in range(args.repeats):
        for way in runs:
            runs[way].append(child("train", str(cache), way, "default", str(args.steps), "-"))
    rates = {way: statistics.median(r["tokens_per_s"] for r in rs) for way, rs in runs.items()}
    same = all(
        a["losses"] == b["losses"] for a, b in zip(runs["memmap"], runs["in_ram"], strict=True)
    )
    for way, rs in runs.items():
        shown = ", ".join(f"{r['tokens_per_s']:.0f}" for r in rs)
        print(
            f"{way:7s} tokens/s {rates[way]:8.0f} (runs: {shown}); peak RSS {max(r['peak_rss_gb'] for r in rs):.2f} GB"
        )
    print(
        f"memmap / in RAM: {rates['memmap'] / rates['in_ram']:.3f}; same losses step by step: {same}"
    )
    print(
        f"{args.rows:,} train rows of 7x7x1280 float16 ({gb(args.rows * 49 * 1280 * 2)}), "
        f"{args.steps} steps a run ({UNTIMED} untimed), the default decoder and batch, "
        f"{runs['memmap'][0]['device']}"
    )
    print(machine_line(torch.get_num_threads()))


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    sub = parser.add_subparsers(dest="command", required=True)
    big = sub.add_parser("large")
    big.add_argument("--rows", type=int, default=40_000)
    big.add_argument("--steps", type=int, default=40)
    fast = sub.add_parser("speed")
    fast.add_argument("--rows", type=int, default=12_000)
    fast.add_argument("--steps", type=int, default=60)
    fast.add_argument("--repeats", type=int, default=2)
    for command in (big, fast):
        command.add_argument(
            "--dir",
            type=Path,
            default=None,
            help="where the cache goes (default: a temporary directory)",
        )
    # the child processes
    writing = sub.add_parser("write")
    writing.add_argument("out", type=Path)
    writing.add_argument("encoder")
    writing.add_argument("rows", type=int)
    writing.add_argument("val_rows", type=int)
    training = sub.add_parser("train")
    training.add_argument("features", type=Path)
    training.add_argument("way", choices=["memmap", "in_ram"])
    training.add_argument("decoder", choices=["small", "default"])
    training.add_argument("steps", type=int)
    training.add_argument("validate")
    args = parser.parse_args()

    if args.command == "write":
        write_cache(args.out, args.encoder, {"train": args.rows, "val": args.val_rows})
        print(json.dumps({"written": str(args.out)}))
    elif args.command == "train":
        cfg = small_decoder() if args.decoder == "small" else TrainConfig()  # params.yaml's
        print(
            json.dumps(
                train_steps(args.features, args.way, cfg, args.steps, args.validate == "validate")
            )
        )
    else:
        work = Path(tempfile.mkdtemp(prefix="memmap-training-", dir=args.dir))
        try:
            {"large": large, "speed": speed}[args.command](args, work)
        finally:
            shutil.rmtree(work)


if __name__ == "__main__":
    main()
