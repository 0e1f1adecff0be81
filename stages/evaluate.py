"""DVC stage `evaluate`: greedy + beam decoding of the test split, metrics, gallery, heat-maps."""

import argparse

from captioning import runtime

runtime.setup()

from captioning.config import load_params  # noqa: E402
from captioning.evaluation import evaluate_model  # noqa: E402


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--params", default="params.yaml")
    parser.add_argument("--model", required=True)
    parser.add_argument(
        "--features", help="feature cache (not read if the model trained its encoder)"
    )
    parser.add_argument("--shards", required=True)
    parser.add_argument("--out", required=True, help="report directory")
    args = parser.parse_args()
    params = load_params(args.params)
    evaluate_model(
        args.model,
        args.features,
        args.shards,
        args.out,
        params.evaluate,
        precision=params.common.precision,
        device=params.common.device,
    )


if __name__ == "__main__":
    runtime.run(main)
