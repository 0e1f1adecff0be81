"""DVC stage `shard`: write WebDataset tars and manifest.json from the internal layout."""

import argparse

from captioning import runtime

runtime.setup()

from captioning.config import ShardConfig, load_section  # noqa: E402
from captioning.data.shards import write_shards  # noqa: E402


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--params", default="params.yaml")
    parser.add_argument("--raw", required=True, help="dataset root written by fetch")
    parser.add_argument("--out", required=True, help="shard directory")
    args = parser.parse_args()
    write_shards(args.raw, args.out, load_section(args.params, "shard", ShardConfig))


if __name__ == "__main__":
    runtime.run(main)
