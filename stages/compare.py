"""DVC stage `compare`: every decoder of train.decoders, and each scst.decoders phase's model,
side by side (table, metrics, plots)."""

import argparse
import logging

from captioning import runtime

runtime.setup()

from captioning.comparison import compare_decoders  # noqa: E402
from captioning.config import load_params  # noqa: E402


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--params", default="params.yaml")
    parser.add_argument("--reports", required=True, help="folder of the per-decoder reports")
    parser.add_argument("--markdown", required=True, help="comparison table (.md)")
    parser.add_argument("--metrics", required=True, help="the same numbers (.json, DVC metrics)")
    parser.add_argument("--table", required=True, help="one row per decoder (.csv, DVC plots)")
    parser.add_argument("--losses", required=True, help="all loss curves (.csv, DVC plot)")
    args = parser.parse_args()
    params = load_params(args.params)
    # Each self-critical phase's model beside the decoders (scst@<d>: <d>_scst).
    decoders = [*params.train.decoders, *params.scst.model_names()]
    compare_decoders(
        decoders,
        args.reports,
        markdown_path=args.markdown,
        json_path=args.metrics,
        table_path=args.table,
        losses_path=args.losses,
    )
    logging.getLogger("compare").info("compared %s", ", ".join(decoders))


if __name__ == "__main__":
    runtime.run(main)
