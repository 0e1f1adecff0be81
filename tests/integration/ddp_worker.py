"""One rank of the DDP test: train on the workspace given on the command line (run by torchrun)."""

import json
import sys
from pathlib import Path

from tests.integration.ddp_decoder import registered

from captioning.config import TrainConfig, from_dict
from captioning.training.loop import train_decoder
from captioning.training.sources import CachedFeatures

root, name, cfg_json = Path(sys.argv[1]), sys.argv[2], sys.argv[3]
with registered() as decoder:
    cfg = from_dict(TrainConfig, json.loads(cfg_json), path=Path("<test>"), prefix="train.")
    train_decoder(
        decoder,
        CachedFeatures(root / "features"),
        root / "vocab.json",
        root / "models" / name,
        cfg,
        seed=7,
        checkpoint_dir=root / "checkpoints" / name,
    )
