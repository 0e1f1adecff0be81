"""DVC stage `register`: log the model to MLflow, register it, and apply the promotion rule."""

import argparse
from pathlib import Path

from captioning import runtime

runtime.setup()

from captioning.config import RegisterConfig, load_section  # noqa: E402
from captioning.registry.register import register_model  # noqa: E402


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--params", default="params.yaml")
    parser.add_argument("--model", required=True, type=Path)
    parser.add_argument("--metrics", required=True, type=Path)
    parser.add_argument("--out", required=True, type=Path, help="registration summary JSON")
    args = parser.parse_args()
    cfg = load_section(args.params, "register", RegisterConfig)
    register_model(args.model, args.metrics, cfg, out_path=args.out)


if __name__ == "__main__":
    runtime.run(main)
