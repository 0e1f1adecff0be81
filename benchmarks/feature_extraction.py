"""Feature extraction end to end vs the pure forward pass vs one image at a time.

Three ways to get the features of the same N images with the same encoder and batch size:

- pure forward: images decoded and preprocessed beforehand (not timed); only the encoder's
  forward pass (and the float16 conversion) is timed: the ceiling;
- end to end: ``extract_features`` on WebDataset shards holding those images: tar reading,
  JPEG decoding and resizing in DataLoader workers, forward, memmap + Parquet writes, the
  shard-by-shard bookkeeping, the final index: the features stage;
- per image: a loop that decodes one image, runs the encoder on it alone and writes one .npy
  per image (the seed tutorial's way of caching).

Prints images/s for each and the ratios. The pure forward pass runs before and after the
others and the faster run is kept, so a busy machine does not flatter the ratio.

    python benchmarks/feature_extraction.py [--shards data/shards] [--images 512]
        [--encoder efficientnet_lite0] [--batch 32] [--workers 1] [--device cuda]

Without shards (or with a missing directory) it generates shapes scenes first.
"""

from __future__ import annotations

import argparse
import json
import tarfile
import tempfile
import time
from pathlib import Path

from captioning import runtime

runtime.setup()

import numpy as np  # noqa: E402
import torch  # noqa: E402
import webdataset as wds  # noqa: E402

from captioning.config import FeaturesConfig, ShapesConfig, ShardConfig  # noqa: E402
from captioning.data.images import load_rgb  # noqa: E402
from captioning.data.shards import iter_samples, write_shards  # noqa: E402
from captioning.data.sources.shapes import generate_shapes  # noqa: E402
from captioning.features.cache import extract_features  # noqa: E402
from captioning.features.encoders import get_encoder_spec  # noqa: E402
from captioning.features.encoding import encode_batch, load_encoder  # noqa: E402
from machine import device_line, machine_line  # noqa: E402

# Both ways in fp32, compared like for like (fp32 vs bf16: benchmarks/precision.py).
FP32 = "fp32"


def bench_shards(source: Path | None, images: int, out: Path) -> Path:
    """A one-split shard directory with the first ``images`` samples of ``source``'s train
    split (1000 per shard, as the shard stage writes), or of freshly generated shapes."""
    if source is None or not (source / "manifest.json").is_file():
        shapes = ShapesConfig(n_train=images, n_val=1, n_test=1)
        generate_shapes(out / "raw", shapes)
        write_shards(out / "raw", out / "generated", ShardConfig())
        source = out / "generated"
    shard_dir = out / "shards"
    shard_dir.mkdir()
    names, writer, count = [], None, 0
    for meta, jpg in iter_samples(source, "train"):
        if count == images:
            break
        if count % 1000 == 0:
            if writer is not None:
                writer.close()
            names.append(f"bench-{len(names):06d}.tar")
            writer = wds.TarWriter(str(shard_dir / names[-1]))
        key = f"{meta['image_id']:012d}"
        writer.write({"__key__": key, "jpg": jpg, "json": json.dumps(meta).encode()})
        count += 1
    if writer is not None:
        writer.close()
    manifest = {"splits": {"bench": {"shards": names, "count": count}}}
    (shard_dir / "manifest.json").write_text(json.dumps(manifest))
    return shard_dir


def pure_forward(model, spec, batches: list[torch.Tensor], device) -> float:
    encode_batch(model, batches[0], spec, device, precision=FP32)  # warm-up
    start = time.perf_counter()
    for batch in batches:
        encode_batch(model, batch, spec, device, precision=FP32)
    return sum(len(b) for b in batches) / (time.perf_counter() - start)


def per_image(model, spec, shard_dir: Path, out: Path, device) -> float:
    out.mkdir()
    start, count = time.perf_counter(), 0
    for name in json.loads((shard_dir / "manifest.json").read_text())["splits"]["bench"]["shards"]:
        with tarfile.open(shard_dir / name) as tar:
            for member in tar:
                if not member.name.endswith(".jpg"):
                    continue
                data = tar.extractfile(member).read()  # type: ignore[union-attr]
                x = spec.preprocess(load_rgb(data))[None]  # (1, 3, S, S)
                np.save(
                    out / member.name.replace(".jpg", ".npy"),
                    encode_batch(model, x, spec, device, precision=FP32)[0],
                )
                count += 1
    return count / (time.perf_counter() - start)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--shards", type=Path, default=Path("data/shards"))
    parser.add_argument("--images", type=int, default=512)
    parser.add_argument("--encoder", default="efficientnet_lite0")
    parser.add_argument("--pretrained", action=argparse.BooleanOptionalAction, default=True)
    parser.add_argument("--batch", type=int, default=32)
    parser.add_argument("--workers", type=int, default=1)
    parser.add_argument("--device", default="cpu", help="cpu, cuda or cuda:N")
    args = parser.parse_args()
    if args.workers > 0:
        # As stages/features.py does: the workers' forkserver imports torch & co. while this
        # process works (first batch after ~1 s instead of 5-6 s on a busy 2-core machine).
        runtime.start_forkserver(["captioning.features.loader"])
    device = torch.device(args.device)
    spec = get_encoder_spec(args.encoder)
    cfg = FeaturesConfig(
        encoder=args.encoder,
        pretrained=args.pretrained,
        batch_size=args.batch,
        num_workers=args.workers,
    )
    with tempfile.TemporaryDirectory(prefix="bench-features-") as tmp:
        root = Path(tmp)
        shard_dir = bench_shards(args.shards, args.images, root)
        n = json.loads((shard_dir / "manifest.json").read_text())["splits"]["bench"]["count"]
        model = load_encoder(spec, args.pretrained, device, seed=0)
        decoded = [spec.preprocess(load_rgb(jpg)) for _, jpg in iter_samples(shard_dir, "bench")]
        batches = [
            torch.stack(decoded[i : i + args.batch]).contiguous(memory_format=torch.channels_last)
            for i in range(0, n, args.batch)
        ]
        del decoded

        forward_1 = pure_forward(model, spec, batches, device)
        start = time.perf_counter()
        summary = extract_features(shard_dir, root / "cache", cfg, device, seed=0, precision=FP32)
        end_to_end = n / (time.perf_counter() - start)
        loop_only = summary["images_per_s"]
        steady = summary["steady_images_per_s"]
        one_by_one = per_image(model, spec, shard_dir, root / "per_image", device)
        forward_2 = pure_forward(model, spec, batches, device)
    forward = max(forward_1, forward_2)
    print(
        f"{args.encoder} ({'pretrained' if args.pretrained else 'random'}), {n} images, "
        f"batch {args.batch}, {args.workers} workers, {torch.get_num_threads()} torch threads"
    )
    print(
        f"pure forward (pre-decoded tensors):   {forward:7.1f} img/s (runs: {forward_1:.1f}, {forward_2:.1f})"
    )
    print(f"end to end (extract_features call):   {end_to_end:7.1f} img/s")
    print(f"  of which the encode loop:           {loop_only:7.1f} img/s")
    print(f"  after the first batch:             {steady:7.1f} img/s")
    print(f"one image at a time, one .npy each:   {one_by_one:7.1f} img/s")
    print(f"end to end / pure forward:            {end_to_end / forward:7.2f}")
    print(f"encode loop / pure forward:           {loop_only / forward:7.2f}")
    print(f"after the first batch / pure forward: {steady / forward:7.2f}")
    print(machine_line(torch.get_num_threads()))
    print(device_line(device))
    print(f"end to end / one image at a time:     {end_to_end / one_by_one:7.2f}x")


if __name__ == "__main__":
    main()
