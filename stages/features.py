"""DVC stage `features`: cache encoder feature maps (float16) per split."""

import argparse

from captioning import runtime

runtime.setup()

from captioning.config import FeaturesConfig, load_section  # noqa: E402
from captioning.features.cache import extract_features  # noqa: E402


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--params", default="params.yaml")
    parser.add_argument("--shards", required=True)
    parser.add_argument("--out", required=True, help="feature cache directory")
    args = parser.parse_args()
    extract_features(args.shards, args.out, load_section(args.params, "features", FeaturesConfig))


if __name__ == "__main__":
    runtime.run(main)
