"""What an epoch of self-critical training costs against one of cross-entropy, per image.

The two ways of training on the same images, one step each at the given sizes (default: the
COCO recipe's Transformer, recipes/coco2017-transformer-scst.yaml: 6 layers of 512, 3 grid
layers over the 14x14x2048 ResNet-101 grid, 10,000 words): teacher forcing of 5 captions per
image (``train.seq_per_image`` 5) against 5 captions sampled per image, word by word with the
key/value cache, and the backward pass through them (the self-critical step, without its
CPU-side reward). Printed for each: the FLOPs (torch's FlopCounterMode), the ATen operations
run (each one a kernel launch or less on a GPU: what bounds a step whose matrices are small)
and the wall time here; then the SCST/XE ratios. docs/gpu-coco.md turns them into time per
epoch on one GPU.

    python benchmarks/scst_cost.py [--images 4] [--words 12] [--layers 6 --d-model 512 ...]
"""

from __future__ import annotations

import argparse
import time

from captioning import runtime

runtime.setup()

import torch  # noqa: E402
from torch.profiler import ProfilerActivity, profile  # noqa: E402
from torch.utils.flop_counter import FlopCounterMode  # noqa: E402

from captioning.config import DecoderConfig, TransformerConfig  # noqa: E402
from captioning.decoding.search import sampled_captions  # noqa: E402
from captioning.models import build_decoder  # noqa: E402
from machine import machine_line  # noqa: E402

CAPTIONS_PER_IMAGE = 5


def aten_ops(fn) -> int:
    """Leaf ATen operations one call of ``fn`` runs (an upper bound on its kernel launches)."""
    with profile(activities=[ProfilerActivity.CPU]) as prof:
        fn()
    ops = [e for e in prof.events() if e.name.startswith("aten::")]
    return sum(not any(c.name.startswith("aten::") for c in e.cpu_children) for e in ops)


def flops(fn) -> int:
    with FlopCounterMode(display=False) as counter:
        fn()
    return counter.get_total_flops()


def seconds(fn, repeats: int) -> float:
    fn()
    start = time.perf_counter()
    for _ in range(repeats):
        fn()
    return (time.perf_counter() - start) / repeats


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--images", type=int, default=4, help="images per step")
    parser.add_argument("--words", type=int, default=12, help="words per caption (+ <end>)")
    parser.add_argument("--layers", type=int, default=6)
    parser.add_argument("--heads", type=int, default=8)
    parser.add_argument("--d-model", type=int, default=512)
    parser.add_argument("--ffn-dim", type=int, default=2048)
    parser.add_argument("--grid-layers", type=int, default=3)
    parser.add_argument("--locations", type=int, default=196)
    parser.add_argument("--channels", type=int, default=2048)
    parser.add_argument("--vocab", type=int, default=10000)
    parser.add_argument("--repeats", type=int, default=2)
    args = parser.parse_args()

    torch.manual_seed(0)
    sizes = TransformerConfig(
        layers=args.layers,
        heads=args.heads,
        d_model=args.d_model,
        ffn_dim=args.ffn_dim,
        dropout=0.1,
        grid_layers=args.grid_layers,
    )
    decoder = build_decoder(
        "transformer",
        DecoderConfig(transformer=sizes),
        vocab_size=args.vocab,
        feature_dim=args.channels,
        num_locations=args.locations,
    )
    features = torch.randn(args.images, args.locations, args.channels)
    rows = torch.arange(args.images).repeat_interleave(CAPTIONS_PER_IMAGE)
    captions = torch.randint(4, args.vocab, (rows.numel(), args.words + 2))
    captions[:, 0] = 1  # <start>

    def teacher_forcing() -> None:
        out = decoder(features, captions, rows)
        loss = torch.nn.functional.cross_entropy(
            out.logits.flatten(0, 1), captions[:, 1:].flatten()
        )
        loss.backward()

    def self_critical() -> None:
        # End never drawn early: every sample runs the full length, the worst case.
        _, log_probs = sampled_captions(
            decoder, features, rows, start_id=1, end_id=-1, max_length=args.words + 1
        )
        (-log_probs.mean()).backward()

    params = sum(p.numel() for p in decoder.parameters())
    print(
        f"transformer {sizes}: {params / 1e6:.1f} M parameters; {args.images} images x "
        f"{CAPTIONS_PER_IMAGE} captions of {args.words} words + <end>"
    )
    costs = {}
    for name, fn in (("cross-entropy", teacher_forcing), ("self-critical", self_critical)):
        costs[name] = (flops(fn), aten_ops(fn), seconds(fn, args.repeats))
        f, ops, s = costs[name]
        per_image = f / args.images / 1e9
        print(
            f"{name:>14}: {f / 1e9:8.1f} GFLOP ({per_image:.2f} per image), {ops} ATen ops, "
            f"{s:.2f} s here ({f / s / 1e9:.0f} GFLOP/s)"
        )
    (fx, ox, sx), (fs, os_, ss) = costs["cross-entropy"], costs["self-critical"]
    print(
        f"self-critical / cross-entropy: FLOPs {fs / fx:.2f}x, ATen ops {os_ / ox:.1f}x, "
        f"time here {ss / sx:.2f}x"
    )
    print(machine_line())


if __name__ == "__main__":
    main()
