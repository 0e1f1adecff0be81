"""DVC stage `scst@<decoder>`: self-critical training of a decoder of scst.decoders, from its
train@<decoder> model, on cached features."""

import argparse
from pathlib import Path

from captioning import runtime

runtime.setup()

from captioning.config import load_params  # noqa: E402
from captioning.training.tracked import scst_tracked  # noqa: E402


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--params", default="params.yaml")
    parser.add_argument("--features", required=True, type=Path, help="feature cache")
    parser.add_argument("--decoder", required=True, help="a decoder of scst.decoders")
    parser.add_argument("--start", required=True, type=Path, help="its cross-entropy model")
    parser.add_argument("--model", required=True, type=Path, help="output model directory")
    parser.add_argument("--log", required=True, type=Path, help="per-epoch CSV (DVC plot)")
    parser.add_argument(
        "--checkpoints", required=True, type=Path, help="resume state (not a DVC out)"
    )
    parser.add_argument("--summary", type=Path, help="JSON: parameters, time, best epoch")
    args = parser.parse_args()
    scst_tracked(
        load_params(args.params),
        args.decoder,
        features_dir=args.features,
        start_dir=args.start,
        model_dir=args.model,
        log_path=args.log,
        checkpoint_dir=args.checkpoints,
        summary_path=args.summary,
    )


if __name__ == "__main__":
    runtime.run(main)
