"""The whole training loop under torchrun, one rank per visible GPU (NCCL), on a small real
feature cache: 64 shapes scenes, sharded, encoded on cuda:0 by EfficientNet-Lite0 (random
weights: no weights file) into 7x7x1280 features, then two epochs of the default decoder.

Every rank must finish; rank 0 must have written the model, with finite losses in both epochs
and the staging memory pinned. With one GPU torchrun starts one process: the launch and the
loop are checked, but there is no gradient all-reduce (DDP needs two GPUs; NCCL refuses two
ranks on one).

    python -m gpu_check.ddp --gpus N        (prepares the workspace, then runs torchrun)
"""

from __future__ import annotations

import argparse
import dataclasses
import math
import os
import subprocess
import sys
import tempfile
from pathlib import Path

import torch

from captioning.config import FeaturesConfig, ShapesConfig, ShardConfig, TrainConfig, VocabConfig
from captioning.data.shards import split_captions, write_shards
from captioning.data.sources.shapes import generate_shapes
from captioning.data.vocab import build_vocab
from captioning.features.cache import extract_features
from captioning.training.loop import train_decoder
from captioning.training.sources import CachedFeatures

DECODER = "soft_attention"
CONFIG = dataclasses.replace(TrainConfig(), epochs=2, batch_size=16, warmup_steps=2)


def prepare(root: Path, device: torch.device) -> None:
    """Scenes -> shards -> vocabulary -> feature cache, as the stages make them."""
    generate_shapes(root / "raw", ShapesConfig(n_train=64, n_val=8, n_test=8))
    write_shards(root / "raw", root / "shards", ShardConfig())
    vocab, _ = build_vocab(split_captions(root / "shards", "train"), VocabConfig())
    vocab.save(root / "vocab.json")
    summary = extract_features(
        root / "shards",
        root / "features",
        FeaturesConfig(pretrained=False, batch_size=32, num_workers=0),
        device,
        seed=0,
    )
    print(f"feature cache on {device}: {summary}", flush=True)


def rank_main(root: Path) -> int:
    """One rank of the torchrun launch."""
    source = CachedFeatures(root / "features")
    result = train_decoder(
        DECODER,
        source,
        root / "vocab.json",
        root / "models" / DECODER,
        CONFIG,
        seed=0,
        checkpoint_dir=root / "checkpoints",
        # demanded, so that a rank that cannot reach its GPU fails instead of training on the CPU
        device_setting="cuda" if torch.cuda.is_available() else "cpu",
    )
    rank, world = int(os.environ["RANK"]), int(os.environ["WORLD_SIZE"])
    device, pinned = source.ctx.device, source.train_rows.pin
    print(
        f"rank {rank}/{world} on {device}: {len(result.history)} epochs in "
        f"{result.precision}, staging pinned: {pinned}",
        flush=True,
    )
    if rank != 0:
        return 0
    losses = [(r["train_loss"], r["val_loss"]) for r in result.history]
    print(f"rank 0 (train, val) loss per epoch: {losses}", flush=True)
    problems = []
    if len(losses) != CONFIG.epochs or not all(math.isfinite(x) for pair in losses for x in pair):
        problems.append(f"expected {CONFIG.epochs} epochs of finite losses")
    if not (root / "models" / DECODER / "decoder.safetensors").is_file():
        problems.append("no model written")
    if device.type == "cuda" and not pinned:
        problems.append("the staging memory is not pinned on CUDA")
    for problem in problems:
        print(f"FAILED {problem}")
    return 1 if problems else 0


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--gpus", type=int, default=torch.cuda.device_count())
    parser.add_argument("--rank-of", type=Path, help="run as one rank on this workspace")
    parser.add_argument("--device", default="cuda:0", help="for the features: to try it on a CPU")
    args = parser.parse_args()
    if args.rank_of is not None:
        return rank_main(args.rank_of)
    with tempfile.TemporaryDirectory(prefix="gpu-check-ddp-") as tmp:
        root = Path(tmp)
        prepare(root, torch.device(args.device))
        command = [
            sys.executable,
            "-m",
            "torch.distributed.run",
            "--standalone",
            "--nproc_per_node",
            str(args.gpus),
            __file__,
            "--rank-of",
            str(root),
        ]
        print(" ".join(command), flush=True)
        status = subprocess.run(command).returncode
    if status != 0:
        print(f"FAILED torchrun exited {status}")
        return 1
    print(f"torchrun, {args.gpus} rank(s): {CONFIG.epochs} epochs, model written")
    return 0


if __name__ == "__main__":
    sys.exit(main())
