"""DVC stage `train`: train the configured decoder on cached features."""

import argparse
from pathlib import Path

from captioning import runtime

runtime.setup()

from captioning.config import load_params  # noqa: E402
from captioning.training.tracked import train_tracked  # noqa: E402


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--params", default="params.yaml")
    parser.add_argument(
        "--features", type=Path, help="feature cache (not read with train.fine_tune.enabled)"
    )
    parser.add_argument(
        "--shards", type=Path, help="image shards (read when train.fine_tune.enabled)"
    )
    parser.add_argument("--vocab", required=True, type=Path)
    parser.add_argument("--model", required=True, type=Path, help="output model directory")
    parser.add_argument("--log", required=True, type=Path, help="per-epoch CSV (DVC plot)")
    parser.add_argument(
        "--checkpoints", required=True, type=Path, help="resume state (not a DVC out)"
    )
    args = parser.parse_args()
    train_tracked(
        load_params(args.params),
        features_dir=args.features,
        vocab_path=args.vocab,
        model_dir=args.model,
        log_path=args.log,
        checkpoint_dir=args.checkpoints,
        shards_dir=args.shards,
    )


if __name__ == "__main__":
    runtime.run(main)
