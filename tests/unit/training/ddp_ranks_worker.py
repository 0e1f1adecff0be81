"""One rank of tests/unit/training/test_ddp_ranks.py (gloo, on the CPU): its random stream,
then an uninterrupted run, a run killed after step 7 and its resumption. Each rank has its own
checkpoint directory, so rank 1 never sees the file rank 0 writes.

argv: workspace, the train config as JSON, three free ports (one per process group)."""

import contextlib
import json
import os
import shutil
import sys
from pathlib import Path

import torch

from captioning.config import TrainConfig, from_dict
from captioning.training.distributed import init_distributed, seed_rank_stream
from captioning.training.loop import train_decoder
from captioning.training.sources import CachedFeatures

SEED = 7


class Killed(Exception):
    pass


def train(root: Path, name: str, cfg: TrainConfig, rank: int, **kwargs) -> list[dict]:
    """The run's history: its last val_loss is the last weights' (the model holds the best)."""
    return train_decoder(
        "soft_attention",
        CachedFeatures(root / "features"),
        root / "vocab.json",
        root / "models" / name,
        cfg,
        seed=SEED,
        checkpoint_dir=root / "checkpoints" / name / f"rank{rank}",
        **kwargs,
    ).history


def kill_after_step_7(step: int, report: dict) -> None:
    if step == 7:  # on every rank: none is left waiting in a collective
        raise Killed


def main() -> None:
    root, cfg_json, *ports = sys.argv[1:]
    root = Path(root)
    cfg = from_dict(TrainConfig, json.loads(cfg_json), path=Path("<test>"), prefix="train.")
    rank = int(os.environ["RANK"])
    result = {}

    os.environ["MASTER_PORT"] = ports[0]
    ctx = init_distributed()  # the group the reference run goes on in (and ends)
    torch.manual_seed(SEED)
    seed_rank_stream(SEED, ctx)
    mask = torch.nn.functional.dropout(torch.ones(64), p=0.5).bool().tolist()
    result["masks"] = ctx.gather(mask)
    result["reference_history"] = train(root, "reference", cfg, rank)

    os.environ["MASTER_PORT"] = ports[1]
    with contextlib.suppress(Killed):
        train(root, "resumed", cfg, rank, on_step=kill_after_step_7)
    mine = root / "checkpoints" / "resumed" / f"rank{rank}" / "last.pt"
    result[f"rank{rank}_had_checkpoint"] = mine.exists()
    if rank == 0:
        shutil.copy(mine, root / "two_rank_last.pt")

    os.environ["MASTER_PORT"] = ports[2]
    steps: list[int] = []
    result["resumed_history"] = train(
        root, "resumed", cfg, rank, on_step=lambda i, r: steps.append(i)
    )
    result[f"rank{rank}_resumed_steps"] = steps
    (root / f"ddp_result_rank{rank}.json").write_text(json.dumps(result))


if __name__ == "__main__":
    main()
