"""DVC stage `vocab`: build the word vocabulary from the training captions in the shards."""

import argparse
import logging

from captioning import runtime

runtime.setup()

from captioning.config import VocabConfig, load_section  # noqa: E402
from captioning.data.shards import split_captions  # noqa: E402
from captioning.data.vocab import build_vocab  # noqa: E402


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--params", default="params.yaml")
    parser.add_argument("--shards", required=True)
    parser.add_argument("--out", required=True, help="vocab.json")
    args = parser.parse_args()
    cfg = load_section(args.params, "vocab", VocabConfig)
    vocab, summary = build_vocab(split_captions(args.shards, "train"), cfg)
    vocab.save(args.out)
    logging.getLogger("vocab").info("vocabulary: %s", summary)


if __name__ == "__main__":
    runtime.run(main)
