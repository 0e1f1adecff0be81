"""DVC stages `train@<decoder>`: train one decoder of train.decoders on cached features; and
`scst@<decoder>` (``--start``): its self-critical phase from that model (scst.decoders)."""

import argparse
import os
import sys
from pathlib import Path

from captioning import runtime

runtime.setup()

from captioning.config import load_params  # noqa: E402
from captioning.training.distributed import check_device_setting  # noqa: E402
from captioning.training.tracked import scst_tracked, train_tracked  # noqa: E402


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
    parser.add_argument(
        "--decoder", required=True, help="registered decoder name (one of train.decoders)"
    )
    parser.add_argument("--model", required=True, type=Path, help="output model directory")
    parser.add_argument("--log", required=True, type=Path, help="per-epoch CSV (DVC plot)")
    parser.add_argument(
        "--checkpoints", required=True, type=Path, help="resume state (not a DVC out)"
    )
    parser.add_argument("--summary", type=Path, help="JSON: parameters, time, best epoch")
    parser.add_argument(
        "--start", type=Path, help="self-critical training from this cross-entropy model"
    )
    args = parser.parse_args()
    params = load_params(args.params)
    paths = {
        "features_dir": args.features,
        "vocab_path": args.vocab,
        "model_dir": args.model,
        "log_path": args.log,
        "checkpoint_dir": args.checkpoints,
        "summary_path": args.summary,
    }
    if args.start is not None:  # one process, cached features (the phase refuses the rest)
        scst_tracked(params, args.decoder, start_dir=args.start, **paths)
        return
    # A device that is not there fails here, in one line, before MLflow or torchrun start.
    check_device_setting(params.common.device, params.train.devices)
    if params.train.devices > 1 and "LOCAL_RANK" not in os.environ:
        # One process per device: this same command, once per rank, under torchrun.
        launch = [sys.executable, "-m", "torch.distributed.run", "--standalone"]
        launch += ["--nproc_per_node", str(params.train.devices), "--", *sys.argv]
        os.execv(sys.executable, launch)
    train_tracked(params, args.decoder, shards_dir=args.shards, **paths)


if __name__ == "__main__":
    runtime.run(main)
