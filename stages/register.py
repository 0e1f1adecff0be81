"""DVC stage `register`: log the model to MLflow, register it as challenger, run the promotion gate.

--per-image, --figures and --train-log default to per_image.json, attention/ and train_log.csv
next to --metrics (the evaluate stage's layout); --shards gives the input example a real test
image (else a generated one).
"""

import argparse
import io
from pathlib import Path

from captioning import runtime

runtime.setup()

from captioning.config import load_params  # noqa: E402
from captioning.registry.register import register_model  # noqa: E402


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--params", default="params.yaml")
    parser.add_argument("--model", required=True, type=Path)
    parser.add_argument("--metrics", required=True, type=Path)
    parser.add_argument("--out", required=True, type=Path, help="registration summary JSON")
    parser.add_argument("--per-image", type=Path, help="per-image test scores (per_image.json)")
    parser.add_argument("--figures", type=Path, help="directory of attention figures (*.png)")
    parser.add_argument("--train-log", type=Path, help="train_log.csv (validation loss)")
    parser.add_argument("--shards", type=Path, help="shards directory: input example image")
    args = parser.parse_args()
    params = load_params(args.params)
    reports = args.metrics.parent
    per_image = args.per_image or reports / "per_image.json"
    register_model(
        args.model,
        args.metrics,
        params.register,
        out_path=args.out,
        example_image=example_image(args.shards),
        per_image_path=per_image if per_image.is_file() or args.per_image else None,
        figures_dir=args.figures or reports / "attention",
        train_log=args.train_log or reports / "train_log.csv",
        data_source=params.fetch.source,
    )


def example_image(shards: Path | None) -> bytes:
    """The first test image of the shards, or a small generated JPEG showing the input format."""
    if shards is not None:
        from captioning.data.shards import iter_samples

        for _, jpg in iter_samples(shards, "test"):
            if jpg:
                return jpg
    from PIL import Image

    buffer = io.BytesIO()
    Image.new("RGB", (64, 64), (200, 60, 40)).save(buffer, format="JPEG")
    return buffer.getvalue()


if __name__ == "__main__":
    runtime.run(main)
