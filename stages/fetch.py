"""DVC stage `fetch`: acquire the configured source into the internal layout."""

import argparse

from captioning import runtime

runtime.setup()

from captioning.config import FetchConfig, load_section  # noqa: E402
from captioning.data.sources.registry import fetch  # noqa: E402


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--params", default="params.yaml")
    parser.add_argument(
        "--out", required=True, help="dataset root: images/, captions.json, splits.json"
    )
    parser.add_argument(
        "--downloads",
        required=True,
        help="where downloads and extracted archives are kept between runs (not a DVC output)",
    )
    args = parser.parse_args()
    fetch(load_section(args.params, "fetch", FetchConfig), args.out, args.downloads)


if __name__ == "__main__":
    runtime.run(main)
